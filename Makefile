# The two set-up commands: `make demo` (main job) and `make test` (whole suite).
# Each creates the virtual environment if missing and installs the project into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.keras-sam-installed

.PHONY: demo test lint format bench

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[study,test]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m keras_sam sweep synthetic --preset quick --out results/synthetic-quick

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	$(PY) benchmarks/sam_step_time.py
	$(PY) benchmarks/distributed.py
	$(PY) benchmarks/hessian.py
	$(PY) benchmarks/sparsity_overhead.py
	$(PY) benchmarks/import_weight.py

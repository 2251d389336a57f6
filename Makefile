# The two set-up commands: `make demo` (main job) and `make test` (whole suite).
# Each creates the virtual environment if missing and installs the project into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.keras-sam-installed
BACKENDS_STAMP := $(VENV)/.keras-sam-backends-installed
RELEASE_STAMP := $(VENV)/.keras-sam-release-installed
# The CPU builds of the frameworks for this project's environments (the extras
# are ranges; PyPI's Linux torch is the CUDA build). Where the CPU torch is not
# found locally: make test CPU_INDEX=https://download.pytorch.org/whl/cpu
# (PIP_INSTALL: the nightly lane, which swaps Keras with pip)
CONSTRAINTS := constraints-cpu.txt
CPU_INDEX ?=
PIP_INSTALL = -m pip install --quiet -c $(CONSTRAINTS) \
	$(if $(CPU_INDEX),--extra-index-url $(CPU_INDEX))
# The make environments are installed by uv, which pip puts into the venv first:
# parallel downloads and unpacking take about 40% off pip's time for a fresh
# clone's environment (benchmarks: docs/benchmarks.md, "Installing the test
# environment"). uv reads no pip configuration, so it is handed pip's
# find-links (where a machine keeps its CPU torch wheel) and, like pip, it
# takes the best version across every index.
PIP_FIND_LINKS ?= $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null)
UV := $(VENV)/bin/uv
UV_INSTALL = $(UV) pip install --quiet --python $(PY) --compile-bytecode \
	-c $(CONSTRAINTS) --index-strategy unsafe-best-match \
	$(addprefix --find-links ,$(PIP_FIND_LINKS)) \
	$(if $(CPU_INDEX),--extra-index-url $(CPU_INDEX))
# Every test runs on TensorFlow, JAX and PyTorch unless a marker says otherwise
# (pyproject.toml, tests/conftest.py): `backends(...)` runs only on those
# backends, `backend_independent` (docs, packaging, layout, the study,
# notebooks, examples) once, in TensorFlow processes of their own. Each backend is
# its own process: Keras picks its backend at import. Every test of tests/study
# is backend-independent (tests/study/conftest.py): the backend lanes do not
# collect it.
NEUTRAL := -m "not backend_independent" --ignore=tests/study
INDEPENDENT := -m backend_independent
# The longer lanes run in two processes each, a set of paths and its complement
# (nothing falls between them), so that `make test` can pack two slots evenly.
HEAVY := tests/hub tests/hessian
NOT_HEAVY := $(addprefix --ignore=,$(HEAVY))
STUDY := tests/study
# More pytest options for every test process, e.g. PYTEST_ARGS=--durations=30.
PYTEST_ARGS ?=
SPLIT_TARGETS := test-tensorflow-heavy test-tensorflow-rest test-jax-heavy \
	test-jax-rest test-independent-study test-independent-rest
.PHONY: demo test test-tensorflow test-jax test-torch test-independent \
	$(SPLIT_TARGETS) test-nightly lint format bench docs package-check

$(UV):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet uv

$(STAMP): pyproject.toml $(CONSTRAINTS) | $(UV)
	$(UV_INSTALL) -e ".[tensorflow,study,test,docs]"
	touch $(STAMP)

# Everything above plus JAX (CPU) and the CPU build of PyTorch ($(CONSTRAINTS)),
# in one uv run (one resolution, one editable build): a fresh clone's
# `make test` does not install the smaller set first. It stands for $(STAMP) too.
$(BACKENDS_STAMP): pyproject.toml $(CONSTRAINTS) | $(UV)
	$(UV_INSTALL) -e ".[tensorflow,study,test,docs,jax,torch]"
	touch $(STAMP) $(BACKENDS_STAMP)

$(RELEASE_STAMP): $(STAMP) | $(UV)
	$(UV_INSTALL) -e ".[release]"
	touch $(RELEASE_STAMP)

demo: $(STAMP)
	$(PY) -m keras_sam sweep synthetic --preset quick --out results/synthetic-quick

# Seven processes, two at a time (each uses little more than one core): make
# starts the next as soon as one ends, in this order (the best packing of the
# parts' times in a fresh-clone run, 2026-12-08 04:05 UTC: tf-rest 238 s,
# jax-rest 200, tf-heavy 218, study 123, independent-rest 104, jax-heavy 201,
# torch 137). Each
# one's output is printed whole when it ends. `make test-jax` etc. run a whole
# lane (its parts one after the other).
TEST_PARTS := test-tensorflow-rest test-jax-rest test-tensorflow-heavy \
	test-independent-study test-independent-rest test-jax-heavy test-torch
test: $(BACKENDS_STAMP)
	$(MAKE) --no-print-directory -j2 --output-sync=target $(TEST_PARTS)

test-tensorflow: test-tensorflow-heavy test-tensorflow-rest
test-jax: test-jax-heavy test-jax-rest
test-independent: test-independent-study test-independent-rest

test-tensorflow-heavy test-jax-heavy: test-%-heavy: $(BACKENDS_STAMP)
	KERAS_BACKEND=$* $(PY) -m pytest -q $(NEUTRAL) $(HEAVY) $(PYTEST_ARGS)

test-tensorflow-rest test-jax-rest: test-%-rest: $(BACKENDS_STAMP)
	KERAS_BACKEND=$* $(PY) -m pytest -q $(NEUTRAL) $(NOT_HEAVY) $(PYTEST_ARGS)

test-torch: $(BACKENDS_STAMP)
	KERAS_BACKEND=torch $(PY) -m pytest -q $(NEUTRAL) $(PYTEST_ARGS)

test-independent-study: $(BACKENDS_STAMP)
	KERAS_BACKEND=tensorflow $(PY) -m pytest -q $(INDEPENDENT) $(STUDY) $(PYTEST_ARGS)

test-independent-rest: $(BACKENDS_STAMP)
	KERAS_BACKEND=tensorflow $(PY) -m pytest -q $(INDEPENDENT) --ignore=$(STUDY) $(PYTEST_ARGS)

# Optional lane, not part of `make test` (a Keras master break must not block a
# landing): every backend's suite (not the backend-independent tests) on
# keras-nightly, in a venv of its own with the project's extras installed (the
# study and docs extras too: every test module is collected), then Keras 3.15
# swapped for keras-nightly (same `keras` module; pip can't override the pin).
# Each backend runs even if one before it failed; the exit status is 1 if any
# failed.
NIGHTLY_VENV ?= .venv-nightly
NIGHTLY_BACKENDS ?= jax torch tensorflow
NIGHTLY_PY := $(NIGHTLY_VENV)/bin/python
NIGHTLY_STAMP := $(NIGHTLY_VENV)/.keras-sam-nightly-installed

$(NIGHTLY_STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(NIGHTLY_PY) || $(PYTHON) -m venv $(NIGHTLY_VENV)
	$(NIGHTLY_PY) -m pip install --quiet --upgrade pip
	$(NIGHTLY_PY) -m pip uninstall --quiet -y keras keras-nightly
	$(NIGHTLY_PY) $(PIP_INSTALL) -e ".[tensorflow,study,jax,torch,test,docs]"
	$(NIGHTLY_PY) -m pip uninstall --quiet -y keras
	$(NIGHTLY_PY) -m pip install --quiet --upgrade --pre keras-nightly
	touch $(NIGHTLY_STAMP)

test-nightly: $(NIGHTLY_STAMP)
	@$(NIGHTLY_PY) -c "import keras; print('keras', keras.__version__)"
	@status=0; for backend in $(NIGHTLY_BACKENDS); do \
	  echo "== keras-nightly on $$backend"; \
	  KERAS_BACKEND=$$backend $(NIGHTLY_PY) -m pytest -q $(NEUTRAL) \
	    || status=1; \
	done; exit $$status

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

# The documentation site (mkdocs.yml): the guides in docs/ and the API reference
# generated from the docstrings; any warning (a broken link, a public name
# without a docstring) fails it.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 TF_CPP_MIN_LOG_LEVEL=3 $(VENV)/bin/mkdocs build --strict

# The release lane: the sdist and the wheel built from it, `twine check
# --strict`, their contents, then the wheel installed with the `jax` extra
# alone into a fresh venv (no TensorFlow: checked) where the README's Usage
# snippet must train. Needs PyPI (pip's cache is reused).
PACKAGE_DIR ?= build/package-check
package-check: $(RELEASE_STAMP)
	rm -rf $(PACKAGE_DIR)
	$(PY) -m build --quiet --outdir $(PACKAGE_DIR)/dist .
	$(PY) -m twine check --strict $(PACKAGE_DIR)/dist/*
	$(PY) tests/release_check.py archives $(PACKAGE_DIR)/dist
	$(PYTHON) -m venv $(PACKAGE_DIR)/venv
	$(PACKAGE_DIR)/venv/bin/python -m pip install --quiet --no-compile \
	  "$$(ls $(PACKAGE_DIR)/dist/*.whl)[jax]"
	cd $(PACKAGE_DIR) && KERAS_BACKEND=jax venv/bin/python \
	  $(CURDIR)/tests/release_check.py usage $(CURDIR)/README.md --installed

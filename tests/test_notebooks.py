"""Notebooks are stored without outputs, are Colab-ready, and their code runs
(IPython magics and display cells skipped, the sweep in a tiny configuration)."""

import json
import os

import pytest
import tensorflow_datasets as tfds

NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "notebooks")


def load(name):
    with open(os.path.join(NOTEBOOKS, name)) as f:
        return json.load(f)


def code(nb):
    cells = [
        c
        for c in nb["cells"]
        if c["cell_type"] == "code" and "IPython" not in "".join(c["source"])
    ]  # the display cell needs a notebook front end
    lines = [line for c in cells for line in c["source"] if not line.startswith("%")]
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


@pytest.mark.parametrize("name", ["quickstart.ipynb", "sweep.ipynb"])
def test_colab_ready_without_outputs(name):
    nb = load(name)
    assert "colab.research.google.com" in "".join(nb["cells"][0]["source"])
    assert any("%pip install" in "".join(c["source"]) for c in nb["cells"])
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None


def test_quickstart_runs(monkeypatch):
    monkeypatch.setenv("KERAS_SAM_NB_EPOCHS", "1")
    monkeypatch.setenv("KERAS_SAM_NB_NUM_TRAIN", "32")
    scope = {}
    with tfds.testing.mock_data(num_examples=32):
        exec(code(load("quickstart.ipynb")), scope)
    assert set(scope["scores"]) == {"SGD", "SAM"}


def test_sweep_notebook_runs(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_SAM_NB_TINY", "1")
    monkeypatch.setenv("KERAS_SAM_NB_OUT", str(tmp_path))
    scope = {}
    exec(code(load("sweep.ipynb")), scope)
    assert (tmp_path / "summary.md").exists() and len(scope["summaries"]) == 2

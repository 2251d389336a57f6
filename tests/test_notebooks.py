"""Notebooks are stored without outputs, are Colab-ready, and run top to bottom
in a real Jupyter kernel (nbclient + ipykernel) in a tiny configuration: magics,
plots and display cells are executed too; the install cell is a no-op because
the kernel imports this checkout's keras_sam. The notebooks share one kernel,
reset before each (`reset`): one TensorFlow import instead of six."""

import os
import re
import tomllib

import nbclient
import nbclient.util
import nbformat
import pytest

pytestmark = pytest.mark.backend_independent

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(ROOT, "notebooks")
ALL = [
    "quickstart.ipynb",
    "sweep.ipynb",
    "curvature.ipynb",
    "sparsity.ipynb",
    "mnist1d.ipynb",
    "keras_hub.ipynb",
]


def repository():
    """The repository's address: pyproject.toml's [project.urls] Repository."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]["urls"]["Repository"]


def load(name):
    return nbformat.read(os.path.join(NOTEBOOKS, name), as_version=nbformat.NO_CONVERT)


def test_every_notebook_is_tested():
    found = sorted(n for n in os.listdir(NOTEBOOKS) if n.endswith(".ipynb"))
    assert found == sorted(ALL)


@pytest.mark.parametrize("name", ALL)
def test_colab_ready_without_outputs(name):
    nb = load(name)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    badge = nb.cells[0]
    assert badge.cell_type == "markdown"
    assert "colab.research.google.com/assets/colab-badge.svg" in badge.source
    github = re.fullmatch(r"https://github\.com/([\w.-]+/[\w.-]+)", repository())
    assert github, f"[project.urls] Repository is not on GitHub: {repository()}"
    colab = f"https://colab.research.google.com/github/{github[1]}/blob/main/notebooks"
    assert re.findall(r"\((https://colab[^)]*/github/[^)]*)\)", badge.source) == [
        f"{colab}/{name}"
    ]
    install = [c for c in nb.cells if "%pip install" in c.source]
    assert len(install) == 1 and install[0].cell_type == "code"
    # The same repository, the study extra (the notebooks need it).
    # The keras-hub notebook also installs keras-hub (the test extra's range).
    extra = ' "keras-hub>=0.32"' if name == "keras_hub.ipynb" else ""
    assert re.findall(r"%pip install -q (.*)", install[0].source) == [
        f'"keras-sam[study] @ git+{repository()}"{extra}'
    ]
    # Colab installs; where keras_sam is importable (CI, a dev checkout) it is a no-op.
    assert 'importlib.util.find_spec("keras_sam") is None' in install[0].source
    assert nb.metadata.kernelspec.name == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
            assert "execution" not in cell.metadata


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """One Jupyter kernel for this module's notebooks (each kernel start
    imports TensorFlow and keras_sam again, ~5 CPU s): `execute` resets it
    between notebooks, and a notebook that fails gets a fresh one after it."""
    # The kernel must import this checkout's keras_sam, not an installed one.
    path = os.environ.get("PYTHONPATH")
    env = dict(os.environ, PYTHONPATH=ROOT + (os.pathsep + path if path else ""))
    client = nbclient.NotebookClient(nbformat.v4.new_notebook(), kernel_name="python3")
    manager = client.create_kernel_manager()
    cwd = str(tmp_path_factory.mktemp("kernel"))
    nbclient.util.run_sync(manager.start_kernel)(env=env, cwd=cwd)
    yield manager
    nbclient.util.run_sync(manager.shutdown_kernel)(now=True)


def reset(env, tmp_path):
    """Code that puts the kernel where a fresh one for this notebook would
    start: an empty namespace (a name the notebook uses but does not define
    fails), `env` as the only KERAS_SAM_NB_* settings, `tmp_path` as the
    working and temporary directory, Keras' global state cleared, pyplot's
    backend the kernel's (inline) again. What a fresh kernel has and this
    does not: modules another notebook imported stay imported, with any
    global state of theirs besides Keras' and pyplot's backend."""
    return (
        "%reset -f\n"
        "import os as _os, sys, tempfile as _tempfile\n"
        "for _key in [k for k in _os.environ if k.startswith('KERAS_SAM_NB_')]:\n"
        "    del _os.environ[_key]\n"
        f"_os.environ.update({ {**env, 'TMPDIR': str(tmp_path)}!r})\n"
        "_tempfile.tempdir = None\n"
        f"_os.chdir({str(tmp_path)!r})\n"
        "import keras as _keras\n\n"
        "_keras.backend.clear_session()\n"
        # The sweep's plots switch matplotlib to Agg: a fresh kernel's inline.
        "if 'matplotlib' in sys.modules:\n"
        "    %matplotlib inline\n"
        "%reset -f\n"
    )


def execute(name, kernel, tmp_path, env, setup="", check=""):
    """Runs notebook `name` in the module's kernel, reset first (`reset`),
    with `env` set, `setup` run first and `check` run last (both in the
    kernel); returns the executed notebook."""
    nb = load(name)
    package = os.path.join(ROOT, "keras_sam")
    guard = (
        "import os\n\nimport keras_sam\n\n"
        f"assert os.path.samefile(os.path.dirname(keras_sam.__file__), {package!r})\n"
        "del os, keras_sam\n"
    )
    nb.cells[:0] = [
        nbformat.v4.new_code_cell(reset(env, tmp_path)),
        nbformat.v4.new_code_cell(guard + setup),
    ]
    if check:
        nb.cells.append(nbformat.v4.new_code_cell(check))
    client = nbclient.NotebookClient(nb, km=kernel, timeout=600)
    try:
        client.execute()  # raises CellExecutionError with the kernel's traceback
    except BaseException:
        # Whatever the failed notebook left (a patch, a dead kernel) must not
        # fail the next one.
        nbclient.util.run_sync(kernel.restart_kernel)(now=True)
        raise
    finally:
        if client.kc is not None:
            client.kc.stop_channels()
    return nb


def images(nb):
    return sum(
        "image/png" in output.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )


def test_quickstart_runs(kernel, tmp_path):
    # tfds's generated stand-in for MNIST; the reference keeps it active.
    setup = (
        "import tensorflow_datasets as tfds\n\n"
        "_mock_data = tfds.testing.mock_data(num_examples=32)\n"
        "_mock_data.__enter__()\n"
    )
    env = {"KERAS_SAM_NB_EPOCHS": "1", "KERAS_SAM_NB_NUM_TRAIN": "32"}
    check = (
        'assert set(scores) == {"SGD", "SAM"}, scores\n'
        "_mock_data.__exit__(None, None, None)  # the kernel runs other notebooks\n"
    )
    execute("quickstart.ipynb", kernel, tmp_path, env, setup, check)


def test_sweep_notebook_runs(kernel, tmp_path):
    out = tmp_path / "sweep"
    env = {"KERAS_SAM_NB_TINY": "1", "KERAS_SAM_NB_OUT": str(out)}
    check = "assert len(summaries) == 2, summaries"
    nb = execute("sweep.ipynb", kernel, tmp_path, env, check=check)
    assert (out / "summary.md").exists()
    assert images(nb) == 4


def test_curvature_notebook_runs(kernel, tmp_path):
    env = {
        "KERAS_SAM_NB_EPOCHS": "2",
        "KERAS_SAM_NB_NUM_TRAIN": "64",
        "KERAS_SAM_NB_HIDDEN": "16",
    }
    check = """
import math

assert set(table) == set(records) == set(METHODS)
assert all(math.isfinite(v) for row in table.values() for v in row.values())
assert all(row["sharpness"] > 0 and row["trace"] > 0 for row in table.values())
assert all(len(r) == EPOCHS // EVERY for r in records.values())
"""
    nb = execute("curvature.ipynb", kernel, tmp_path, env, check=check)
    assert images(nb) == 2
    text = "".join(
        output.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    assert "batch-1 conditions met" in text and "Wu et al." in text


def test_sparsity_notebook_runs(kernel, tmp_path):
    env = {
        "KERAS_SAM_NB_EPOCHS": "2",
        "KERAS_SAM_NB_NUM_TRAIN": "256",
        "KERAS_SAM_NB_WIDTHS": "400",
        "KERAS_SAM_NB_RHOS": "0.1",
    }
    check = """
budget = sparsity.sparsity_report(small).size
for key, trained in models.items():
    report = sparsity.sparsity_report(trained)
    assert abs(report.nonzero - budget) <= len(report.layers), (key, report.nonzero)
assert set(results) == {("dense", 100), ("random", 400), ("snip", 400)}
assert same
assert all(not layer.masked for layer in sparsity.sparsity_report(loaded).layers)
"""
    nb = execute("sparsity.ipynb", kernel, tmp_path, env, check=check)
    assert images(nb) == 1


def test_mnist1d_notebook_runs(kernel, tmp_path):
    out = tmp_path / "mnist1d"
    env = {"KERAS_SAM_NB_TINY": "1", "KERAS_SAM_NB_OUT": str(out)}
    check = """
assert len(summaries) == 2 and x.shape == (4000, 40), summaries
assert set(train) == set(params) and len(best) == 2
"""
    nb = execute("mnist1d.ipynb", kernel, tmp_path, env, check=check)
    assert (out / "summary.md").exists()
    assert images(nb) == 2


def test_keras_hub_notebook_runs(kernel, tmp_path):
    env = {"KERAS_SAM_NB_TINY": "1"}
    check = """
import math

assert not classifier.backbone.get_layer("token_embedding").trainable
assert len(loaded.trainable_weights) == len(model.trainable_weights) == 8
assert int(loaded.optimizer.iterations) == 4
assert {"loss", "perturbed_loss"} <= set(history.history)
assert math.isfinite(sharpness) and sharpness > 0
"""
    execute("keras_hub.ipynb", kernel, tmp_path, env, check=check)

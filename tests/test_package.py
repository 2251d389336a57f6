"""What `import keras_sam` costs: the core install's dependencies only."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: In the `study`, `tfmot` and `test` extras, never needed by the library
#: (keras-hub is imported only for a keras-hub model).
EXTRAS = (
    "tensorflow_datasets",
    "matplotlib",
    "tensorflow_model_optimization",
    "keras_hub",
)

# Imports keras_sam with the extras made unimportable, as in a core install,
# and lists what the library brought in beyond Keras itself.
CHECK = f"""
import importlib.abc, sys
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {EXTRAS!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Missing())
import keras
before = set(sys.modules)
import keras_sam
from keras_sam import callbacks, hessian, perturbations, sparsity
keras_sam.sam(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))
study = ("keras_sam.study.workloads", "keras_sam.study.sweep", "keras_sam.study.cli")
print(sorted(m for m in set(sys.modules) - before if m.startswith(study)))
print(sorted(m for m in sys.modules if m.split(".")[0] in {EXTRAS!r}))
"""


def test_import_needs_only_the_core_dependencies():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-c", CHECK],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    study, extras = result.stdout.splitlines()[-2:]
    assert study == "[]", f"import keras_sam loaded the study: {study}"
    assert extras == "[]", f"import keras_sam loaded optional packages: {extras}"


def test_core_dependencies_are_what_the_sam_step_needs():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(requirements):
        return {re.split(r"[<>=\[ ]", r, maxsplit=1)[0] for r in requirements}

    # No backend in the core: a JAX or PyTorch user does not install TensorFlow.
    assert names(project["dependencies"]) == {"keras", "numpy"}
    extras = project["optional-dependencies"]
    assert names(extras["tensorflow"]) == {"tensorflow"}
    assert names(extras["jax"]) == {"jax"}
    assert names(extras["torch"]) == {"torch"}
    assert names(extras["study"]) >= {
        "tensorflow-datasets",
        "matplotlib",
        "tensorflow-model-optimization",
    }
    assert names(extras["tfmot"]) == {"tensorflow", "tensorflow-model-optimization"}

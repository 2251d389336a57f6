"""One fresh interpreter on this tree for the import checks of test_package
(`import keras_sam` needs only the core dependencies) and test_layout (no
library module loads the study): each interpreter start imports TensorFlow
(~5 CPU s), so they share one run."""

import functools
import json
import os
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

# The extras made unimportable, as in a core install; then what
# `import keras_sam` (its public subpackages, one SAM wrap) brought in beyond
# Keras itself, then everything loaded once each of NAMES is imported too.
SCRIPT = """
import importlib, importlib.abc, json, sys
EXTRAS, NAMES = json.loads(sys.argv[1]), json.loads(sys.argv[2])
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in EXTRAS:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Missing())
import keras
before = set(sys.modules)
import keras_sam
from keras_sam import callbacks, hessian, perturbations, sparsity
keras_sam.sam(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))
report = {"keras_sam": sorted(set(sys.modules) - before)}
for name in NAMES:
    importlib.import_module(name)
report["every_module"] = sorted(sys.modules)
print(json.dumps(report))
"""


def library_modules() -> tuple[str, ...]:
    """Every module of keras_sam, by name, but the study side (keras_sam.study,
    ``python -m keras_sam``) and each backend's package (it imports its
    framework); test_layout checks this against its import graph."""
    names = []
    for path in sorted((ROOT / "keras_sam").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        name = ".".join(parts)
        study = name.startswith(("keras_sam.study.", "keras_sam.__main__"))
        backend = len(parts) > 2 and parts[1] == "backend" and parts[2] != "__init__"
        if (
            name != "keras_sam.study"
            and not study
            and not (backend and parts[2] in ("tensorflow", "jax", "torch"))
        ):
            names.append(name)
    return tuple(sorted(names))


@functools.cache
def fresh_imports(names: tuple[str, ...]) -> dict[str, list[str]]:
    """The modules a fresh interpreter loaded, EXTRAS unimportable:
    ``"keras_sam"``, those `import keras_sam` loaded beyond Keras;
    ``"every_module"``, all of them after each of `names` was imported too."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(EXTRAS), json.dumps(names)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])

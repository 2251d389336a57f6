"""MNIST-1D (Greydanus & Kobak, ICML 2024), generated offline from the
templates in the ``mnist1d`` package, with its default arguments: the
standard 4,000 / 1,000 split of length-40 signals, 10 classes.

The package's ``make_dataset`` is called, with three of its traps kept out:

- ``import mnist1d`` imports matplotlib (``mnist1d.utils``) and requests
  (``mnist1d.data``). Here ``data.py`` and ``utils.py`` are executed from
  the package's files with those two names bound to stand-ins that raise if
  used, and ``transform.py`` as it is (NumPy and SciPy only). The files are
  compiled from source (no ``.pyc`` written) and nothing is added to
  ``sys.modules``; requests is never reachable, so the generation never
  touches the network.
- ``make_dataset`` reseeds Python's ``random`` and ``np.random``: both global
  states are saved and restored around it.
- ``get_dataset`` downloads by default and pickles into the working
  directory: it is never called, and nothing is written anywhere.

```python
(x, y), (x_test, y_test) = mnist1d_arrays(label_noise=0.15)   # (4000, 40) ...
```
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import importlib.util
import os
import random
import types

import numpy as np

from keras_sam.study.workloads import label_noise as noise_lib

EXTRA_HINT = "pip install 'keras-sam[study]' (or pip install mnist1d)"
NUM_TRAIN, NUM_TEST, LENGTH, CLASSES = 4_000, 1_000, 40, 10


class _Unavailable(types.ModuleType):
    """A module stand-in whose every attribute access raises."""

    def __getattr__(self, name):
        raise RuntimeError(
            f"keras-sam generates MNIST-1D without {self.__name__} "
            f"(`{self.__name__}.{name}` was used)."
        )


def _package_dir() -> str:
    spec = importlib.util.find_spec("mnist1d")  # finds it, runs nothing
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"MNIST-1D needs the `mnist1d` package: {EXTRA_HINT}. It builds the "
            "data set from its templates, with no download."
        )
    return list(spec.submodule_search_locations)[0]


def _load_file(path: str, name: str, imports: dict[str, object]):
    """Executes the module file ``path`` with the modules in ``imports``
    bound in place of the real ones (others are imported as usual)."""
    module = types.ModuleType(name)
    module.__file__ = path

    def resolve(target, globals=None, locals=None, fromlist=(), level=0):
        if level == 0 and target in imports:
            return imports[target]
        return builtins.__import__(target, globals, locals, fromlist, level)

    module.__builtins__ = dict(vars(builtins), __import__=resolve)
    with open(path, encoding="utf-8") as f:
        code = compile(f.read(), path, "exec")
    exec(code, module.__dict__)  # noqa: S102 (the installed package's own file)
    return module


@functools.lru_cache(maxsize=1)
def _mnist1d_data_module():
    root = _package_dir()
    package = types.ModuleType("mnist1d")
    package.__path__ = [root]
    # numpy and scipy only; compiled from source here, so no .pyc is written
    transform = _load_file(os.path.join(root, "transform.py"), "mnist1d.transform", {})
    matplotlib = _Unavailable("matplotlib")
    matplotlib.__dict__["pyplot"] = _Unavailable("matplotlib.pyplot")
    utils = _load_file(
        os.path.join(root, "utils.py"),
        "mnist1d.utils",
        {"matplotlib.pyplot": matplotlib, "mnist1d.transform": transform},
    )
    package.transform, package.utils = transform, utils
    return _load_file(
        os.path.join(root, "data.py"),
        "mnist1d.data",
        {
            "requests": _Unavailable("requests"),
            "mnist1d": package,
            "mnist1d.transform": transform,
            "mnist1d.utils": utils,
        },
    )


@contextlib.contextmanager
def preserved_global_random_state():
    """Restores Python's ``random`` and NumPy's global state on exit."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


@functools.lru_cache(maxsize=1)
def _standard_arrays() -> tuple[np.ndarray, ...]:
    data = _mnist1d_data_module()
    with preserved_global_random_state():
        dataset = data.make_dataset(data.get_dataset_args())
    arrays = (dataset["x"], dataset["y"], dataset["x_test"], dataset["y_test"])
    arrays = tuple(
        np.asarray(a, dtype="float32" if i % 2 == 0 else "int32")
        for i, a in enumerate(arrays)
    )
    for a in arrays:
        a.setflags(write=False)  # cached: callers get copies
    return arrays


def mnist1d_arrays(
    num_train: int | None = None,
    num_test: int | None = None,
    label_noise: float = 0.0,
    seed: int = 0,
):
    """((x_train, y_train), (x_test, y_test)) of the standard MNIST-1D:
    float32 signals of length 40 (standardized by the generator), int32
    labels; the first ``num_train`` / ``num_test`` examples if given.

    The split is the package's (seed 42, its default): ``seed`` only seeds
    the ``label_noise`` relabelling of the training labels
    (`label_noise.corrupt`); the test labels stay clean.
    """
    noise_lib.check_rate(label_noise)
    x, y, x_test, y_test = _standard_arrays()
    x, y = x[:num_train].copy(), y[:num_train].copy()
    x_test, y_test = x_test[:num_test].copy(), y_test[:num_test].copy()
    return (x, noise_lib.corrupt(y, label_noise, CLASSES, seed)), (x_test, y_test)

"""Backend-specific code of keras-sam: one package per Keras backend
(`keras_sam.backend.tensorflow`, `.jax`, `.torch`), picked by `module`.

Each backend package exports the same names, the backend's side of the
library: `train_step` (the shell around `keras_sam.sam_step`),
`prepare_train_function` and `symbolic_build` (its part of `SAMModel`'s
fit), and `stateless_gradients`; its `curvature` module holds the
curvature products of `keras_sam.hessian`.

```python
from keras_sam import backend

logs = backend.module().train_step(model, data)  # TensorFlow, PyTorch
Functions = backend.module("curvature").Functions
```
"""

from __future__ import annotations

import importlib
import types

import keras

__all__ = ["BACKENDS", "PER_REPLICA", "REPLICA_EPS_MODES", "SYNCHRONIZED", "module"]

#: How eps is formed across replicas of a `tf.distribute` strategy.
SYNCHRONIZED = "synchronized"
PER_REPLICA = "per_replica"
REPLICA_EPS_MODES = (SYNCHRONIZED, PER_REPLICA)

#: The Keras backends keras-sam supports.
BACKENDS = ("tensorflow", "jax", "torch")


def module(name: str | None = None) -> types.ModuleType:
    """The active Keras backend's package `keras_sam.backend.<backend>`, or
    its module `name` in it; imported on first use, so that importing
    keras-sam imports no other backend.

    Returns:
        The module.

    Raises:
        NotImplementedError: where the active Keras backend is not one of
            `BACKENDS`.
    """
    backend = keras.backend.backend()
    if backend not in BACKENDS:
        raise NotImplementedError(
            f"keras-sam supports the Keras backends {list(BACKENDS)}; the active "
            f"one is {backend!r}. Set KERAS_BACKEND to one of them."
        )
    path = f"{__name__}.{backend}" + ("" if name is None else f".{name}")
    return importlib.import_module(path)

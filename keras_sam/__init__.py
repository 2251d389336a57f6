"""keras-sam: Sharpness-Aware Minimization for Keras 3.

```python
import keras_sam
model = keras_sam.sam(model, rho=0.05)   # any built Keras model
```
"""

import importlib

from keras_sam import _quiet

__version__ = "0.1.0"

__all__ = [
    "FunctionalSAMModel",
    "SAMModel",
    "SAMWrapper",
    "__version__",
    "callbacks",
    "hessian",
    "optimizers",
    "perturbations",
    "sam",
    "sparsity",
    "variants",
]

# In the `keras-sam` command the library is imported after the options are
# parsed (`keras_sam.study.cli`, with TensorFlow's start-up notices hidden), so
# that `--help` imports no framework; the names below then come on first use.
if not _quiet.is_command_line():
    from keras_sam import (
        callbacks,
        hessian,
        optimizers,
        perturbations,
        sparsity,
        variants,
    )
    from keras_sam.sam_model import FunctionalSAMModel, SAMModel, SAMWrapper, sam

_MODEL_NAMES = ("FunctionalSAMModel", "SAMModel", "SAMWrapper", "sam")


def __getattr__(name: str):
    if name in _MODEL_NAMES:
        value = getattr(importlib.import_module("keras_sam.sam_model"), name)
    elif name in __all__:
        value = importlib.import_module(f"keras_sam.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value

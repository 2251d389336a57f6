"""keras-sam: Sharpness-Aware Minimization for Keras 3.

```python
import keras_sam
model = keras_sam.sam(model, rho=0.05)   # any built Keras model
```
"""

from keras_sam import _quiet

# In the `keras-sam` command only: TensorFlow's start-up notices hidden.
with _quiet.command_line_start():
    from keras_sam import (
        callbacks,
        hessian,
        optimizers,
        perturbations,
        sparsity,
        variants,
    )
    from keras_sam.sam_model import FunctionalSAMModel, SAMModel, SAMWrapper, sam

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

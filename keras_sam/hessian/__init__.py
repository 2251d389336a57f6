"""Curvature instruments: Hessian sharpness, trace, per-example
non-uniformity, spectral density and SAM/SGD stability margins.

Curvature = operator + solver: `CurvatureOperator` turns a Keras model and a
fixed data set into products ``v -> H v`` (and per-example moments
``v -> mean_i H_i^k v``) on flat float64 vectors; `solvers` (NumPy) take
any such product.

```python
import keras_sam.hessian as hessian

a = hessian.sharpness(model, (x, y))                   # lambda_max(H), 1e-3
t = hessian.trace(model, (x, y))                        # Hutchinson, 1% s.e.
s2 = hessian.non_uniformity(model, (x, y), order=2)     # per-example spread
m = hessian.stability_margins(model, (x, y), lr=0.1, rho=0.05)
```

Each measure has a float form named after the quantity and a result form
with ``_estimate`` appended, with the same arguments: the estimate with its
error bound or standard error and its cost in products
(`sharpness_estimate`, `trace_estimate`, `non_uniformity_estimate`; the
former names `top_eigenvalues` and `non_uniformity_eigen` still work and
warn).

All functions take ``loss`` (default: the compiled loss, as `fit` computes
it), ``regularization`` (default False: without ``model.losses``),
``training`` (default False: batch norm in inference mode) and
``batch_size``; a built `CurvatureOperator` can be passed instead of
``model, data`` to share it. See docs/curvature.md for the loss, the modes,
the stopping rules and how to read the numbers.
"""

from keras_sam.hessian import solvers
from keras_sam.hessian._operators import CurvatureOperator
from keras_sam.hessian.measures import (
    StabilityMargins,
    hessian_start,
    non_uniformity,
    non_uniformity_eigen,
    non_uniformity_estimate,
    sharpness,
    sharpness_estimate,
    spectral_density,
    stability_margins,
    stability_ratios,
    top_eigenvalues,
    trace,
    trace_estimate,
)

__all__ = [
    "CurvatureOperator",
    "StabilityMargins",
    "hessian_start",
    "non_uniformity",
    "non_uniformity_eigen",
    "non_uniformity_estimate",
    "sharpness",
    "sharpness_estimate",
    "solvers",
    "spectral_density",
    "stability_margins",
    "stability_ratios",
    "top_eigenvalues",
    "trace",
    "trace_estimate",
]

"""Keras callbacks that write curvature measures into ``logs`` (so History,
CSVLogger and TensorBoard record them).

```python
from keras_sam.callbacks import HessianMetrics, SmoothnessEstimates

model.fit(x, y, callbacks=[HessianMetrics((x, y), every=5)])
model.history.history["sharpness"]
```
"""

from keras_sam.callbacks.hessian_metrics import HessianMetrics
from keras_sam.callbacks.smoothness import SmoothnessEstimates

__all__ = ["HessianMetrics", "SmoothnessEstimates"]

"""Squared loss for classifiers: mean squared error between the logits and
the one-hot labels (the loss of the paper's MNIST stability measurement).

```python
model.compile("sgd", loss=keras_sam.study.workloads.OneHotMeanSquaredError())
```
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="keras_sam")
class OneHotMeanSquaredError(keras.losses.Loss):
    """``mean_c (logits_c - onehot(label)_c)^2`` per example.

    The mean is over the classes (like Keras' ``"mse"`` or PyTorch's
    ``MSELoss`` on one-hot targets), not the sum, so it is the sum divided by
    the number of classes; Keras then averages over the batch. ``y_true``
    holds integer class labels of shape ``(n,)`` or ``(n, 1)``; ``y_pred``
    the raw logits ``(n, classes)`` (no softmax). The number of classes is
    ``y_pred``'s last axis.
    """

    def __init__(self, name: str = "one_hot_mean_squared_error", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        y_pred = keras.ops.convert_to_tensor(y_pred)
        labels = keras.ops.convert_to_tensor(y_true)
        if len(labels.shape) == len(y_pred.shape):
            labels = keras.ops.squeeze(labels, axis=-1)
        one_hot = keras.ops.one_hot(
            keras.ops.cast(labels, "int32"), y_pred.shape[-1], dtype=y_pred.dtype
        )
        return keras.ops.mean(keras.ops.square(y_pred - one_hot), axis=-1)

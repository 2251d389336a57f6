"""SGD with coupled L2 weight decay, the form of the training code of Shin,
Lee, Andriushchenko, Lee (2023, arXiv 2311.17539).

```python
import keras_sam

model = keras_sam.sam(model, rho=0.05)
model.compile(keras_sam.optimizers.L2SGD(0.1, momentum=0.9, l2=5e-4), loss=...)
```

Three ways to decay weights under SAM, and what each does:

- ``L2SGD(l2=...)`` (this module): the optimizer adds ``l2 * w`` to the
  gradient it is given (for SAM, the gradient at ``w + eps``) before the
  momentum buffer, at the unperturbed weights ``w``. The decay is outside
  the loss and outside the ascent step (eps is unchanged) and is carried by
  momentum. This is the authors' code (``grads = sam_grads + wd * w``, then
  SGD with momentum) and PyTorch's ``SGD(weight_decay=...)``.
- ``keras.optimizers.SGD(weight_decay=...)``: decoupled; Keras shrinks the
  weights by ``lr * weight_decay * w`` beside the update, not through
  momentum.
- a kernel regularizer (``keras.regularizers.L2``): part of the loss, so it
  enters the gradient that sets eps and is evaluated at ``w + eps``.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_sam import _compat, _validation

__all__ = ["L2SGD"]


@keras.saving.register_keras_serializable(package="keras_sam")
class L2SGD(keras.optimizers.Optimizer):
    """SGD with momentum and coupled L2 weight decay (PyTorch / optax form).

    For each variable ``w`` with gradient ``g``::

        d = g + l2 * w
        buffer = momentum * buffer + d      # (no buffer when momentum == 0)
        w = w - learning_rate * buffer

    The buffer holds gradients, not steps: after a learning-rate drop the
    next step is already ``new_lr * buffer`` (Keras' ``SGD`` keeps
    ``-lr * g`` in its velocity, so the old rate fades out over
    ``1 / (1 - momentum)`` steps). With ``l2=0`` and a constant learning
    rate both give the same trajectory.

    ```python
    opt = keras_sam.optimizers.L2SGD(0.1, momentum=0.9, l2=1e-4)
    ```

    Args:
        learning_rate: float or `keras.optimizers.schedules` schedule.
        momentum: float in [0, 1).
        l2: coupled weight-decay coefficient >= 0 (the gradient of
            ``l2 / 2 * ||w||^2``), applied to every trained variable.
        **kwargs: the other `keras.optimizers.Optimizer` arguments
            (``clipnorm``, ``name``, ...); Keras' decoupled ``weight_decay``
            can be combined but is not the coupled form.
    """

    def __init__(
        self,
        learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = 0.01,
        momentum: float = 0.0,
        l2: float = 0.0,
        name: str = "l2sgd",
        **kwargs: Any,
    ):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        momentum = _validation.fraction(momentum, "momentum")
        l2 = _validation.non_negative_float(l2, "l2")
        self.momentum = float(momentum)
        self.l2 = float(l2)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.buffers = []
        if self.momentum != 0:
            self.buffers = self.add_optimizer_variables(variables, "momentum")

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = ops.cast(learning_rate, variable.dtype)
        step = ops.cast(gradient, variable.dtype)
        if self.l2 != 0:
            step = ops.add(
                step, ops.multiply(ops.cast(self.l2, variable.dtype), variable)
            )
        if self.momentum != 0:
            buffer = self.buffers[_compat.optimizer_variable_index(self, variable)]
            momentum = ops.cast(self.momentum, variable.dtype)
            step = ops.add(ops.multiply(buffer, momentum), step)
            self.assign(buffer, step)
        self.assign_sub(variable, ops.multiply(step, learning_rate))

    def get_config(self):
        config = super().get_config()
        config.update({"momentum": self.momentum, "l2": self.l2})
        return config

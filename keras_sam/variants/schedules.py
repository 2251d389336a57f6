"""rho schedules: rho as a function of the step."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_sam import _validation

__all__ = ["ProportionalRho", "rho_at", "serialize_rho", "validate_rho"]


@keras.saving.register_keras_serializable(package="keras_sam")
class ProportionalRho(keras.optimizers.schedules.LearningRateSchedule):
    """GSAM's rho schedule: rho follows the learning rate linearly,

    rho(i) = rho_min + (rho_max - rho_min) (lr(i) - lr_min) / (lr(0) - lr_min).

    ```python
    lr = keras.optimizers.schedules.CosineDecay(0.1, decay_steps=10_000)
    model = keras_sam.sam(
        model, rho=ProportionalRho(lr, rho_max=0.1, rho_min=0.01), variant="gsam"
    )
    model.compile(keras.optimizers.SGD(lr), ...)
    ```

    Args:
        learning_rate: the optimizer's schedule (or a constant: rho = rho_max).
        rho_max: rho where the learning rate is at its initial value.
        rho_min: rho where the learning rate reaches `lr_min`.
        lr_min: the learning rate at which rho = rho_min.
    """

    def __init__(
        self,
        learning_rate: Any,
        rho_max: float = 0.05,
        rho_min: float = 0.0,
        lr_min: float = 0.0,
    ):
        if isinstance(learning_rate, dict):
            learning_rate = keras.optimizers.schedules.deserialize(learning_rate)
        self.learning_rate = learning_rate
        self.rho_max = _validation.non_negative_float(rho_max, "rho_max")
        self.rho_min = _validation.non_negative_float(rho_min, "rho_min")
        self.lr_min = _validation.non_negative_float(lr_min, "lr_min")

    def _lr(self, step):
        if callable(self.learning_rate):
            return ops.cast(self.learning_rate(step), "float32")
        return ops.cast(self.learning_rate, "float32")

    def __call__(self, step):
        fraction = (self._lr(step) - self.lr_min) / (self._lr(0) - self.lr_min)
        fraction = ops.where(ops.isfinite(fraction), fraction, 1.0)
        return self.rho_min + (self.rho_max - self.rho_min) * fraction

    def get_config(self):
        lr = self.learning_rate
        if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
            lr = keras.optimizers.schedules.serialize(lr)
        return {
            "learning_rate": lr,
            "rho_max": self.rho_max,
            "rho_min": self.rho_min,
            "lr_min": self.lr_min,
        }


def validate_rho(rho: Any) -> Any:
    """A constant rho as a float, or a schedule / callable of the step as is."""
    if isinstance(rho, dict):
        rho = keras.saving.deserialize_keras_object(rho)
    if callable(rho):
        return rho
    return _validation.non_negative_float(rho, "rho")


def rho_at(rho: Any, step: Any) -> Any:
    """rho at optimizer step `step` (a float32 scalar tensor for schedules)."""
    if callable(rho):
        return ops.cast(rho(step), "float32")
    return rho


def serialize_rho(rho: Any) -> Any:
    if callable(rho):
        return keras.saving.serialize_keras_object(rho)
    return rho

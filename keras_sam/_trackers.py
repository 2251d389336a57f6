"""Per-step facts of a SAM step kept outside the logs: small metrics, so that
they live with the other metric state (not in `model.weights`, not saved)
and update inside compiled steps on every backend."""

from __future__ import annotations

import keras
from keras import ops


class StepCounter(keras.metrics.Metric):
    """Counts the steps on which a flag is True.

    Every replica sees the same flag, so only the first replica's count is
    read (a `keras.metrics.Sum` would add the replicas' counts).
    """

    def __init__(self, name: str = "step_counter", **kwargs):
        super().__init__(name=name, **kwargs)
        self.count = self.add_variable(
            (), "zeros", dtype="float32", aggregation="only_first_replica"
        )

    def update_state(self, flag):
        self.count.assign_add(ops.cast(flag, "float32"))

    def result(self):
        return ops.cast(self.count, "float32")


class RunningMax(keras.metrics.Metric):
    """The largest value seen since the last reset (replicas agree)."""

    def __init__(self, name: str = "running_max", **kwargs):
        super().__init__(name=name, **kwargs)
        self.value = self.add_variable(
            (), "zeros", dtype="float32", aggregation="only_first_replica"
        )

    def update_state(self, value):
        self.value.assign(ops.maximum(self.value, ops.cast(value, "float32")))

    def result(self):
        return ops.cast(self.value, "float32")

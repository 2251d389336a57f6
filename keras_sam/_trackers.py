"""Per-step facts of a SAM step kept outside the logs: small metrics, so that
they live with the other metric state (not in `model.weights`, not saved)
and update inside compiled steps on every backend."""

from __future__ import annotations

import keras
from keras import ops

from keras_sam import _compat


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


def record_step(model, terms, batch_size, eps_examples, applied) -> None:
    """Updates a SAM step's trackers from its `sam_step.Terms`: the `loss`
    and `perturbed_loss` means, the skipped-step and gradient-pass counters
    and the eps batch size.

    A step skipped by loss scaling (`applied` False) is counted and leaves the
    means alone: its clean loss enters only where finite, its perturbed loss
    never.
    """
    ran = ops.cast(terms.ran, "float32")
    # The perturbed loss averages over the micro-batches that ran the pass.
    perturbed_loss = terms.perturbed_loss / ops.maximum(ran, 1e-12)
    loss_tracker = _compat.loss_tracker(model)
    if applied is True:
        # Without loss scaling (a Python True): the same updates, fewer ops
        # (an eager step dispatches each one).
        include_loss, include_perturbed = True, ran > 0
    else:
        finite_loss = ops.all(ops.isfinite(terms.loss))
        include_loss = ops.logical_or(applied, finite_loss)
        include_perturbed = ops.logical_and(applied, ran > 0)
        model.skipped_steps_tracker.update_state(ops.logical_not(applied))
    _update_mean(loss_tracker, terms.loss, batch_size, include_loss)
    _update_mean(
        model.perturbed_loss_tracker, perturbed_loss, batch_size, include_perturbed
    )
    model.eps_batch_size_tracker.update_state(eps_examples)
    model.gradient_pass_counter.update_state(1.0 + ran)


def _update_mean(tracker, value, batch_size, include):
    if include is True:
        tracker.update_state(value, ops.cast(batch_size, "float32"))
        return
    # Not even a NaN times 0 where `include` is False.
    weight = ops.where(include, ops.cast(batch_size, "float32"), 0.0)
    tracker.update_state(ops.where(include, value, ops.zeros_like(value)), weight)

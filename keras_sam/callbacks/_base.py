"""`CurvatureCallback`: what the curvature callbacks share.

A fixed subset of the data, a schedule (every ``every`` epochs or steps),
one `CurvatureOperator` per `fit` (rebuilt in ``on_train_begin``, so a
callback reused on another model measures that model; the data checked
against the model there), epoch logs only where measured, and
``get_config``.
"""

from __future__ import annotations

from typing import Any

import keras

from keras_sam._validation import boolean, string
from keras_sam.callbacks._common import check_schedule, subset, subset_head
from keras_sam.hessian._operators import CurvatureOperator

# The options every curvature callback takes (and reports in get_config,
# with those in a subclass's ``config_names``).
COMMON_OPTIONS = (
    "every",
    "unit",
    "num_examples",
    "seed",
    "loss",
    "training",
    "batch_size",
    "prefix",
)


def common_options(arguments: dict[str, Any]) -> dict[str, Any]:
    """The base-class options among a subclass's ``__init__`` arguments."""
    return {name: arguments[name] for name in COMMON_OPTIONS}


class CurvatureCallback(keras.callbacks.Callback):
    """Base class of `HessianMetrics` and `SmoothnessEstimates`.

    Subclasses define ``_names()`` (logged names without prefix) and
    ``_epoch_values(epoch)`` (the values for an epoch the schedule selects,
    with ``unit="epoch"``), list their own options in ``config_names``, and
    may extend ``_reset()`` and ``_operator_options()``.
    """

    config_names: tuple[str, ...] = ()

    def __init__(
        self,
        data: Any,
        *,
        every: int,
        unit: str,
        num_examples: int | None,
        seed: int | None,
        loss: Any,
        training: bool,
        batch_size: int | None,
        prefix: str,
    ):
        super().__init__()
        self.every, self.unit = check_schedule(every, unit)
        self.training = boolean(training, "training")
        prefix = string(prefix, "prefix")
        self.data = subset(data, num_examples, seed)
        self.num_examples = num_examples
        self.seed = seed
        self.loss = loss
        self.batch_size = batch_size
        self.prefix = prefix
        self.records: list[dict[str, Any]] = []
        self._reset()

    # -- per-fit state ------------------------------------------------------

    def _reset(self) -> None:
        """Forgets everything tied to a model or a run (operator, counters,
        latest values, warm starts)."""
        self._operator: CurvatureOperator | None = None
        self._latest: dict[str, float] = {}
        self._step = 0
        self._epoch = 0

    def on_train_begin(self, logs=None):
        # As Keras' own callbacks: a new fit (perhaps of another model)
        # starts from scratch; `records` then holds this fit's measurements.
        self._reset()
        self.records = []
        self._check_data()

    def _check_data(self) -> None:
        """Calls the model on the first example of ``data`` so that data
        that does not fit the model fails when `fit` starts, not after
        ``every`` epochs."""
        self._sync_weights()
        first = subset_head(self.data)
        try:
            self.model(first[0], training=False)
        except Exception as error:
            raise ValueError(
                f"{type(self).__name__}: `data` does not fit the model ("
                f"{type(error).__name__}: {str(error)[:400]})."
            ) from error

    def _operator_options(self) -> dict[str, Any]:
        return {
            "loss": self.loss,
            "training": self.training,
            "batch_size": self.batch_size,
        }

    def _sync_weights(self) -> None:
        """Keras's JAX trainer carries the model state between steps and
        writes it back to the variables only at the end of an epoch (it
        even drops the variables' values meanwhile): a step-level hook
        writes it back (`jax_state_sync`) before it reads or sets weights;
        the trainer then picks the state up from the variables. (Keras's
        ``Callback.model`` syncs too, but the operator reads the variables
        without it.) Other backends train the variables in place."""
        sync = getattr(self.model, "jax_state_sync", None)
        if sync is not None:
            sync()

    def _op(self) -> CurvatureOperator:
        if self._operator is None:
            self._operator = CurvatureOperator(
                self.model, self.data, **self._operator_options()
            )
        return self._operator

    # -- logging --------------------------------------------------------------

    def _names(self) -> list[str]:
        raise NotImplementedError

    def names(self) -> list[str]:
        """The names this callback logs, prefix included."""
        return [self.prefix + name for name in self._names()]

    def _publish(self, values: dict[str, float], logs, **where) -> dict[str, float]:
        values = {self.prefix + k: float(v) for k, v in values.items()}
        self._latest = values
        self.records.append({**where, **values})
        if logs is not None:
            logs.update(values)
        return values

    def _epoch_values(self, epoch: int) -> dict[str, float]:
        raise NotImplementedError

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        # Epochs without a measurement log nothing (no NaN placeholders):
        # History's lists hold the measured epochs only; ``records`` has
        # each value with its epoch or step.
        if self.unit == "step":
            logs.update(self._latest)
        elif (epoch + 1) % self.every == 0:
            logs.update(self._epoch_values(epoch))

    def get_config(self) -> dict[str, Any]:
        """The options (not the data, nor ``loss``)."""
        names = [n for n in COMMON_OPTIONS if n != "loss"] + list(self.config_names)
        return {name: getattr(self, name) for name in names}

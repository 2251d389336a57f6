"""The loss the curvature instruments differentiate: a model's compiled loss,
computed as `fit` computes it.

``BatchLoss(model, loss)(y, y_pred, sample_weight)`` is the scalar Keras
gives for a batch: each output's loss with Keras' own shape handling
(``(n,)`` labels against ``(n, 1)`` predictions), ``from_logits``, masks,
sample weights and its ``"sum_over_batch_size"`` reduction, times the
output's ``loss_weights`` entry, summed over outputs; and, with
``regularization=True``, plus ``model.losses`` (weight and activity
regularizers, ``add_loss`` terms) as `fit` adds them. It does not touch the
model's own loss trackers (``model.compute_loss`` would).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
from keras import ops

from keras_sam._compat import LossFunctionWrapper, compile_arguments

_LOSS_HELP = (
    "`loss` must be a keras.losses.Loss, a loss function or its name, or a "
    "list / dict of those (one per output, None for an output without loss)"
)


def _is_nested(value: Any) -> bool:
    return isinstance(value, Mapping) or (
        isinstance(value, Sequence) and not isinstance(value, str)
    )


def _loss_object(identifier: Any, y_true, y_pred) -> keras.losses.Loss:
    """The `keras.losses.Loss` that `compile` makes of ``identifier``."""
    if isinstance(identifier, str) and identifier.lower() in ("crossentropy", "ce"):
        # compile's shortcut: binary, sparse or categorical by the shapes.
        if y_pred.shape[-1] == 1:
            identifier = "binary_crossentropy"
        elif len(y_true.shape) == len(y_pred.shape) - 1 or y_true.shape[-1] == 1:
            identifier = "sparse_categorical_crossentropy"
        else:
            identifier = "categorical_crossentropy"
    name = identifier if isinstance(identifier, str) else None
    if isinstance(identifier, str | dict):
        identifier = keras.losses.get(identifier)
    if isinstance(identifier, keras.losses.Loss):
        return identifier
    if callable(identifier):
        return LossFunctionWrapper(identifier, name=name or identifier.__name__)
    raise ValueError(f"{_LOSS_HELP}, got {identifier!r}.")


def _per_output(value: Any, names: list[str], what: str) -> list[Any]:
    """``value`` (one entry for all outputs, a list or a dict by output
    name) as one entry per output."""
    if not _is_nested(value):
        return [value] * len(names)
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise ValueError(
                f"`{what}` has keys {unknown} that name no output; the model's "
                f"outputs are {names}."
            )
        return [value.get(name) for name in names]
    if len(value) != len(names):
        raise ValueError(
            f"`{what}` must have one entry per output ({len(names)}: {names}), "
            f"got {len(value)}."
        )
    return list(value)


class BatchLoss:
    """Keras' compiled loss of a batch (see the module docstring)."""

    def __init__(
        self,
        model: keras.Model,
        loss: Any = None,
        loss_weights: Any = None,
        regularization: bool = False,
    ):
        if loss is None:
            loss = getattr(model, "loss", None)
            if loss is None:
                raise ValueError(
                    "`loss` must be given (a keras.losses.Loss, a loss function or "
                    "its name) when the model is not compiled with a loss."
                )
            if loss_weights is None:
                compiled = compile_arguments(model) or {}
                loss_weights = compiled.get("loss_weights")
        if not _is_nested(loss) and not (
            isinstance(loss, str | keras.losses.Loss) or callable(loss)
        ):
            raise ValueError(f"{_LOSS_HELP}, got {loss!r}.")
        self.loss = loss
        self.loss_weights = loss_weights
        self.regularization = regularization
        self.output_names = list(getattr(model, "output_names", None) or [])
        self._model = model
        self._objects: dict[int, keras.losses.Loss] = {}

    def _outputs(self, y_pred) -> tuple[list, list[str]]:
        if isinstance(y_pred, Mapping):
            return list(y_pred.values()), list(y_pred)
        preds = list(y_pred) if isinstance(y_pred, list | tuple) else [y_pred]
        names = self.output_names
        if len(names) != len(preds):
            names = [f"output_{i}" for i in range(len(preds))]
        return preds, names

    def _targets(self, y, names: list[str], losses: list) -> list:
        with_loss = [i for i, loss in enumerate(losses) if loss is not None]
        if isinstance(y, Mapping):
            missing = sorted(names[i] for i in with_loss if names[i] not in y)
            if missing:
                raise ValueError(f"`y` has no targets for the outputs {missing}.")
            return [y.get(name) for name in names]
        flat = list(y) if isinstance(y, list | tuple) else [y]
        if len(flat) == len(names):
            return flat
        if len(flat) == len(with_loss):
            targets = [None] * len(names)
            for i, target in zip(with_loss, flat):
                targets[i] = target
            return targets
        raise ValueError(
            f"`y` must hold one target per output ({names}) or per output with "
            f"a loss, got {len(flat)}."
        )

    def __call__(self, y, y_pred, sample_weight=None) -> Any:
        preds, names = self._outputs(y_pred)
        losses = _per_output(self.loss, names, "loss")
        weights = _per_output(self.loss_weights, names, "loss_weights")
        targets = self._targets(y, names, losses)
        total = ops.zeros([], "float32")
        for i, (pred, loss, weight, target) in enumerate(
            zip(preds, losses, weights, targets)
        ):
            if loss is None:
                continue
            if i not in self._objects:
                self._objects[i] = _loss_object(loss, target, pred)
            value = ops.cast(self._objects[i](target, pred, sample_weight), "float32")
            # Out of place: an in-place add fails under torch.func.vmap.
            total = total + (value if weight is None else value * float(weight))
        if self.regularization:
            for value in self._model.losses:
                total = total + ops.sum(ops.cast(value, "float32"))
        return total

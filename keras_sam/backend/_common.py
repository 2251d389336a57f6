"""Backend-neutral pieces shared by the JAX and PyTorch SAM steps."""

from __future__ import annotations

import keras
from keras import tree

from keras_sam import _compat


def first_tensor(structure):
    return next(t for t in tree.flatten(structure) if t is not None)


def is_loss_scaled(optimizer) -> bool:
    return isinstance(optimizer, keras.optimizers.LossScaleOptimizer)


def micro_batch_count(model, batch_size: int) -> int:
    """How many micro-batches of `model.micro_batch_size` make the batch;
    a clear error when they do not divide it."""
    m = model.micro_batch_size
    if batch_size % m:
        raise ValueError(
            f"micro_batch_size={m} must divide the batch size. Batch the data "
            "with drop_remainder=True, or use a batch size that is a multiple "
            f"of micro_batch_size. Got a batch of {batch_size}."
        )
    return batch_size // m


def output_spec(model, x):
    symbolic = tree.map_structure(
        lambda t: None if t is None else keras.KerasTensor(t.shape, t.dtype), x
    )
    if _compat.call_has_training_arg(model):
        return model.compute_output_spec(symbolic, training=True)
    return model.compute_output_spec(symbolic)


def forward(model, x):
    if _compat.call_has_training_arg(model):
        return model(x, training=True)
    return model(x)


def update_loss_trackers(model, loss, perturbed_loss, batch_size) -> None:
    _compat.loss_tracker(model).update_state(loss, sample_weight=batch_size)
    model.perturbed_loss_tracker.update_state(perturbed_loss, sample_weight=batch_size)

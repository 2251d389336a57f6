"""Backend-neutral pieces shared by the JAX and PyTorch SAM steps."""

from __future__ import annotations

import keras
from keras import ops, tree

from keras_sam import _clipping, _compat


def variant_selection(model) -> list:
    """Per trainable variable: None (eps may move it) or 0.0 (it may not)."""
    selection = model.variant.weight_selection(model)
    if selection is None:
        return [None] * len(model.trainable_variables)
    return [None if chosen else 0.0 for chosen in selection]


def eps_gradients(model, grads) -> list:
    """The gradient that forms eps: the clean one, clipped as the optimizer
    clips where ``model.clip_eps_gradient``."""
    if not model.clip_eps_gradient:
        return list(grads)
    return _clipping.clip_like_optimizer(
        model.optimizer, grads, model.trainable_variables
    )


def first_tensor(structure):
    return next(t for t in tree.flatten(structure) if t is not None)


def is_loss_scaled(optimizer) -> bool:
    return isinstance(optimizer, keras.optimizers.LossScaleOptimizer)


def micro_batch_split(model, batch_size: int) -> tuple[int, int]:
    """(number of full micro-batches of `model.micro_batch_size`, size of
    the partial last one, 0 if none) for a batch of `batch_size`."""
    m = model.micro_batch_size
    return batch_size // m, batch_size % m


def eps_batch_size(model, batch_size: int) -> int:
    """How many examples' gradient forms each eps (the m of m-sharpness);
    on JAX and torch the step sees the global batch (synchronized eps)."""
    if model.micro_batch_size is not None:
        return min(batch_size, model.micro_batch_size)
    return batch_size


def output_spec(model, x):
    symbolic = tree.map_structure(
        lambda t: None if t is None else keras.KerasTensor(t.shape, t.dtype), x
    )
    if _compat.call_has_training_arg(model):
        return model.compute_output_spec(symbolic, training=True)
    return model.compute_output_spec(symbolic)


def build_before_step(model, x) -> None:
    """Creates the model's variables, and the variant's state, before a
    stateful step snapshots the state (Keras's own step builds lazily inside
    its first forward pass; a subclassed model builds its layers on its
    first call)."""
    if not model.built:
        output_spec(model, x)
    if model.variant is not None and model.variant_state is None:
        output_spec(model, x)
        model._build_variant_state()


def forward(model, x):
    if _compat.call_has_training_arg(model):
        return model(x, training=True)
    return model(x)


def all_finite(tensors):
    return ops.all(ops.stack([ops.all(ops.isfinite(t)) for t in tensors]))


def update_trackers(
    model, loss, perturbed_loss, batch_size, applied, second=True, eps_examples=None
) -> None:
    """The logged means and the step's own trackers, as the TF step: a step
    skipped by loss scaling (`applied` False) is counted and leaves the
    means alone (its clean loss enters only where finite); the perturbed
    loss enters only where the second pass ran (`second`). `eps_examples`:
    the examples behind eps where they are not this batch's (all replicas')."""
    loss = ops.cast(loss, "float32")
    perturbed_loss = ops.cast(perturbed_loss, "float32")
    _update_mean(
        _compat.loss_tracker(model),
        loss,
        batch_size,
        ops.logical_or(applied, ops.all(ops.isfinite(loss))),
    )
    _update_mean(
        model.perturbed_loss_tracker,
        perturbed_loss,
        batch_size,
        ops.logical_and(applied, second),
    )
    model.skipped_steps_tracker.update_state(ops.logical_not(applied))
    if eps_examples is None:
        eps_examples = eps_batch_size(model, batch_size)
    model.eps_batch_size_tracker.update_state(eps_examples)


def _update_mean(tracker, value, batch_size, include):
    # Not even a NaN times 0 where `include` is False.
    weight = ops.where(include, float(batch_size), 0.0)
    tracker.update_state(ops.where(include, value, ops.zeros_like(value)), weight)

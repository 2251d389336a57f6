"""The SAM training step on the PyTorch backend.

Stateful like Keras's torch trainer. On a batch (or on each micro-batch, in a
Python loop):

1. snapshot the non-trainable state (batch-norm statistics, dropout seeds);
2. clean pass: forward, loss and `torch.autograd.grad` at w, with the model's
   normal state updates (they happen here, once);
3. unscale g if the optimizer scales the loss, mask it, eps = rule(g, w, rho);
4. perturbed pass, functional: inside a `keras.StatelessScope` that maps the
   trainable weights to new leaf tensors w + eps and the state to the
   snapshot (what `stateless_call` does), so the same dropout masks and batch
   statistics, regularizers at w + eps, no variable written, and nothing to
   restore; the gradient is taken with respect to those leaves;
5. the optimizer applies the perturbed gradient at w.

Masks, loss scaling and logs as on the other backends.
"""

from __future__ import annotations

import keras
import torch
from keras import tree

from keras_sam import _compat
from keras_sam.backend._common import (
    all_finite,
    first_tensor,
    forward,
    is_loss_scaled,
    output_spec,
    refuse_variants,
    update_trackers,
)
from keras_sam.sparsity._masks import kernel_masks
from keras_sam.variants import schedules


def train_step(model, data):
    """`SAMModel.train_step` for PyTorch: returns the logs dict."""
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    refuse_variants(model)
    if not model.built:
        output_spec(model, x)
    if model.micro_batch_size is None:
        grads, y_pred, loss, perturbed_loss = _sam_gradients(model, x, y, sample_weight)
    else:
        grads, y_pred, loss, perturbed_loss = _micro_batch_sam_gradients(
            model, x, y, sample_weight
        )
    # The loss-scale optimizer skips the step where a gradient is
    # non-finite (a non-finite clean gradient poisoned the perturbed one).
    applied = all_finite(grads) if is_loss_scaled(model.optimizer) else True
    update_trackers(model, loss, perturbed_loss, first_tensor(x).shape[0], applied)
    with torch.no_grad():
        model.optimizer.apply(grads, model.trainable_variables)
    logs = model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
    logs["perturbed_loss"] = model.perturbed_loss_tracker.result()
    return logs


def _sam_gradients(model, x, y, sample_weight):
    """(perturbed grads, clean y_pred, clean loss, perturbed loss); applies
    the clean pass's state updates."""
    trainable = model.trainable_variables
    state = [v.value.detach().clone() for v in model.non_trainable_variables]
    weights = [v.value for v in trainable]
    y_pred = forward(model, x)
    loss = _compat.compute_loss(model, x, y, y_pred, sample_weight)
    grads = _gradients(model.optimizer.scale_loss(loss), weights)
    masks = [None if m is None else m.value for m in kernel_masks(trainable)]
    grads = _apply_masks(_unscale(model.optimizer, grads), masks)
    with torch.no_grad():
        detached = [w.detach() for w in weights]
        eps = _apply_masks(model.perturbation(grads, detached, _rho(model)), masks)
        perturbed = [w + e.to(w.dtype) for w, e in zip(detached, eps)]
    perturbed = [p.requires_grad_() for p in perturbed]
    mapping = list(zip(trainable, perturbed))
    mapping += list(zip(model.non_trainable_variables, state))
    with keras.StatelessScope(state_mapping=mapping, collect_losses=True):
        perturbed_pred = forward(model, x)
        perturbed_loss = _compat.compute_loss(
            model, x, y, perturbed_pred, sample_weight
        )
        scaled = model.optimizer.scale_loss(perturbed_loss)
    perturbed_grads = _apply_masks(_gradients(scaled, perturbed), masks)
    if is_loss_scaled(model.optimizer):
        # A non-finite first gradient must skip the step even where the
        # perturbed pass comes out finite: poison the second one.
        finite = torch.stack([torch.isfinite(g).all() for g in grads]).all()
        factor = torch.where(finite, 1.0, float("nan"))
        perturbed_grads = [g * factor.to(g.dtype) for g in perturbed_grads]
    return (
        perturbed_grads,
        _detach(y_pred),
        loss.detach(),
        perturbed_loss.detach(),
    )


def _micro_batch_sam_gradients(model, x, y, sample_weight):
    """m-sharpness: each micro-batch gets its own eps; the perturbed
    gradients are averaged, each weighted by its micro-batch's size (a
    partial last micro-batch of n mod m counts less). Each clean pass
    updates the state in order."""
    m = model.micro_batch_size
    n = first_tensor(x).shape[0]
    grad_sums, preds = None, []
    loss_sum = perturbed_sum = 0.0
    for start in range(0, n, m):
        piece = tree.map_structure(
            lambda t, start=start: None if t is None else t[start : start + m],
            (x, y, sample_weight),
        )
        fraction = (min(start + m, n) - start) / n
        grads, y_pred, loss, perturbed_loss = _sam_gradients(model, *piece)
        grads = [g * fraction for g in grads]
        grad_sums = (
            grads if grad_sums is None else [a + b for a, b in zip(grad_sums, grads)]
        )
        preds.append(y_pred)
        loss_sum = loss_sum + fraction * loss.float()
        perturbed_sum = perturbed_sum + fraction * perturbed_loss.float()
    y_pred = tree.map_structure(lambda *parts: torch.cat(parts), *preds)
    return grad_sums, y_pred, loss_sum, perturbed_sum


def _rho(model):
    # Like a learning-rate schedule, a rho schedule reads the step count.
    return schedules.rho_at(model.rho, model.optimizer.iterations)


def _gradients(loss, tensors):
    grads = torch.autograd.grad(loss, tensors, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, tensors)]


def _apply_masks(tensors, masks):
    return [t if m is None else t * m.to(t.dtype) for t, m in zip(tensors, masks)]


def _unscale(optimizer, grads):
    if not is_loss_scaled(optimizer):
        return grads
    if optimizer.built:
        inverse = 1.0 / optimizer.dynamic_scale.value.float()
    else:
        inverse = torch.tensor(1.0 / optimizer.initial_scale)
    return [g * inverse.to(g.device, g.dtype) for g in grads]


def _detach(structure):
    return tree.map_structure(
        lambda t: t.detach() if torch.is_tensor(t) else t, structure
    )

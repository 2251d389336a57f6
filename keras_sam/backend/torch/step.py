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

Masks, loss scaling and logs as on the other backends. Under the
`DistributedDataParallel` wrapper of Keras 3.16's torch trainer the step
averages g (before eps) and the perturbed gradient over the replicas itself:
`torch.autograd.grad` does not fire DDP's all-reduce hooks (see
`_compat.ddp_process_group`).
"""

from __future__ import annotations

import contextlib
import functools

import keras
import torch
from keras import tree

from keras_sam import _compat
from keras_sam.backend import SYNCHRONIZED
from keras_sam.backend._common import (
    all_finite,
    build_before_step,
    eps_gradients,
    first_tensor,
    forward,
    is_loss_scaled,
    update_trackers,
    variant_selection,
)
from keras_sam.sparsity._masks import kernel_masks
from keras_sam.variants import schedules


def train_step(model, data):
    """`SAMModel.train_step` for PyTorch: returns the logs dict."""
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    build_before_step(model, x)
    group = _compat.ddp_process_group(model)
    # Under DDP, eps from the all-reduced g, as on one device; micro-batches
    # and "per_replica" form it from this replica's examples (as on TF).
    synchronized = (
        group is not None
        and model.micro_batch_size is None
        and model.replica_eps == SYNCHRONIZED
    )
    if model.micro_batch_size is None:
        grads, clean, ran, y_pred, loss, perturbed_loss = _variant_gradients(
            model, x, y, sample_weight, group if synchronized else None
        )
        second = float(ran)
    else:
        grads, clean, second, y_pred, loss, perturbed_loss = _micro_batch_sam_gradients(
            model, x, y, sample_weight
        )
    if group is not None:
        # Skipped second pass, synchronized: `grads` are the reduced g already.
        if not synchronized or second > 0:
            grads = _replica_mean(grads, group)
        if not synchronized and model.variant is not None:
            clean = _replica_mean(clean, group)
    if model.variant is not None:
        grads = _combine(model, clean, grads, second > 0)
    # The loss-scale optimizer skips the step where a gradient is
    # non-finite (a non-finite clean gradient poisoned the perturbed one).
    applied = all_finite(grads) if is_loss_scaled(model.optimizer) else True
    batch_size = first_tensor(x).shape[0]
    update_trackers(
        model,
        loss,
        perturbed_loss,
        batch_size,
        applied,
        second > 0,
        batch_size * _world_size(group) if synchronized else None,
    )
    model.gradient_pass_counter.update_state(1.0 + second)
    if model.variant is not None:
        model.variant_step.assign_add(1)
    with torch.no_grad():
        model.optimizer.apply(grads, model.trainable_variables)
    logs = model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
    logs["perturbed_loss"] = model.perturbed_loss_tracker.result()
    return logs


def _variant_gradients(model, x, y, sample_weight, group=None):
    """(perturbed grads (scaled like the loss), clean grads (unscaled), second
    pass ran, clean y_pred, clean loss, perturbed loss); applies the clean
    pass's state updates. Where the variant skips the second pass, the
    perturbed grads are the clean ones. With a DDP process `group`, g is
    averaged over it before eps (and the variant's decision)."""
    if model.variant is not None and model.variant.single_pass:
        return _single_pass_gradients(model, x, y, sample_weight, group)
    trainable = model.trainable_variables
    state = [v.value.detach().clone() for v in model.non_trainable_variables]
    weights = [v.value for v in trainable]
    randomness = global_randomness()
    y_pred = forward(model, x)
    loss = _compat.compute_loss(model, x, y, y_pred, sample_weight)
    grads = _gradients(model.optimizer.scale_loss(loss), weights)
    masks = [None if m is None else m.value for m in kernel_masks(trainable)]
    grads = _apply_masks(_unscale(model.optimizer, grads), masks)
    if group is not None:
        grads = _replica_mean(grads, group)
    variant = model.variant
    if variant is not None and variant.skips_second_pass:
        with torch.no_grad():
            run = variant.needs_second_pass(
                model.variant_step.value, grads, _variant_state(model)
            )
        if not bool(run):
            scale = _scale(model.optimizer)
            scaled = [g * scale.to(g.device, g.dtype) for g in grads]
            return scaled, grads, False, _detach(y_pred), loss.detach(), loss.detach()
    with torch.no_grad():
        detached = [w.detach() for w in weights]
        eps = _apply_masks(_epsilon(model, grads, detached), masks)
        perturbed = [w + e.to(w.dtype) for w, e in zip(detached, eps)]
    perturbed = [p.requires_grad_() for p in perturbed]
    mapping = list(zip(trainable, perturbed))
    mapping += list(zip(model.non_trainable_variables, state))
    with (
        replayed_randomness(randomness),
        keras.StatelessScope(state_mapping=mapping, collect_losses=True),
    ):
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
        grads,
        True,
        _detach(y_pred),
        loss.detach(),
        perturbed_loss.detach(),
    )


def _single_pass_gradients(model, x, y, sample_weight, group=None):
    """A single-pass variant (Momentum-SAM): eps from the optimizer's state,
    one pass at w + eps that applies the state updates. Returns what
    `_variant_gradients` does, with no second pass. With a DDP process
    `group` the gradient is averaged over it (the momentum buffers, and so
    eps, are the same on every replica)."""
    trainable = model.trainable_variables
    optimizer = model.optimizer
    if not optimizer.built:
        optimizer.build(trainable)
    slots, sign = model.variant.optimizer_direction(optimizer, trainable)
    masks = [None if m is None else m.value for m in kernel_masks(trainable)]
    with torch.no_grad():
        direction = _apply_masks([sign * v.value for v in slots], masks)
        weights = [v.value.detach() for v in trainable]
        eps = _apply_masks(_epsilon(model, direction, weights), masks)
        perturbed = [w + e.to(w.dtype) for w, e in zip(weights, eps)]
    perturbed = [p.requires_grad_() for p in perturbed]
    with keras.StatelessScope(
        state_mapping=list(zip(trainable, perturbed)), collect_losses=True
    ) as scope:
        y_pred = forward(model, x)
        loss = _compat.compute_loss(model, x, y, y_pred, sample_weight)
        scaled = model.optimizer.scale_loss(loss)
    for variable in model.non_trainable_variables:
        value = scope.get_current_value(variable)
        if value is not None:
            variable.assign(value)
    grads = _apply_masks(_gradients(scaled, perturbed), masks)
    if group is not None:
        grads = _replica_mean(grads, group)
    clean = _unscale(model.optimizer, grads)
    loss = loss.detach()
    return grads, clean, False, _detach(y_pred), loss, loss


def global_randomness():
    """torch's global generators' states (CPU, and each CUDA device once CUDA
    is initialized): what an unseeded layer draws from.

    Keras's seeded layers draw from their seed state, which the perturbed
    pass maps to the clean pass's; an unseeded `Dropout` takes Keras's fast
    path on torch's global generator instead. Replaying these states in the
    perturbed pass gives it the clean pass's masks.
    """
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
    return torch.get_rng_state(), cuda


@contextlib.contextmanager
def replayed_randomness(states):
    """Within, torch's global generators draw what they drew from `states`
    (see `global_randomness`); after, they continue where they were, so a
    step consumes the global stream once, as Keras's own step does."""
    cpu, cuda = states
    devices = list(range(len(cuda)))
    with torch.random.fork_rng(devices=devices):
        torch.set_rng_state(cpu)
        for device, state in zip(devices, cuda):
            torch.cuda.set_rng_state(state, device)
        yield


def _variant_state(model):
    return [v.value for v in model.variant_state or []]


def _epsilon(model, grads, weights):
    grads = eps_gradients(model, grads)
    variant = model.variant
    if variant is None:
        return model.perturbation(grads, weights, _rho(model))
    selection = variant_selection(model)
    grads = _select(grads, selection)
    eps = variant.perturbation(
        model.perturbation,
        grads,
        weights,
        _rho(model),
        _variant_state(model),
        model.variant_step.value,
        model.variant_seed,
    )
    return _select(eps, selection)


def _select(tensors, selection):
    return [t if s is None else torch.zeros_like(t) for t, s in zip(tensors, selection)]


def _combine(model, clean, grads, ran):
    """The variant's direction from g and gs (unscaled); writes its state
    when both are finite."""
    variant = model.variant
    if not variant.combines:
        return grads
    scale = _scale(model.optimizer)
    perturbed = [g / scale.to(g.device, g.dtype) for g in grads]
    state = _variant_state(model)
    with torch.no_grad():
        d, new_state = variant.combine(
            clean, perturbed, state, model.variant_step.value, ran
        )
        finite = None
        if is_loss_scaled(model.optimizer):
            finite = all_finite(list(clean) + list(perturbed))
        for variable, before, after in zip(model.variant_state, state, new_state):
            if after is before:
                continue
            if finite is not None:
                after = torch.where(finite, after, before)
            variable.assign(after.to(before.dtype))
    return [(t * scale.to(t.device, t.dtype)).to(g.dtype) for t, g in zip(d, grads)]


def _micro_batch_sam_gradients(model, x, y, sample_weight):
    """m-sharpness: each micro-batch gets its own eps; the perturbed
    gradients are averaged, each weighted by its micro-batch's size (a
    partial last micro-batch of n mod m counts less). Each clean pass
    updates the state in order. A variant decides and perturbs per
    micro-batch; its `combine` runs once, on the batch means of g and gs.

    Returns (mean perturbed grads, mean clean grads, the share of the batch
    that ran the second pass, clean y_pred, mean clean loss, mean perturbed
    loss over the micro-batches that ran the pass)."""
    m = model.micro_batch_size
    n = first_tensor(x).shape[0]
    grad_sums = clean_sums = None
    preds = []
    second = 0.0
    loss_sum = perturbed_sum = 0.0
    for start in range(0, n, m):
        piece = tree.map_structure(
            lambda t, start=start: None if t is None else t[start : start + m],
            (x, y, sample_weight),
        )
        fraction = (min(start + m, n) - start) / n
        grads, clean, ran, y_pred, loss, perturbed_loss = _variant_gradients(
            model, *piece
        )
        grad_sums = _accumulate(grad_sums, grads, fraction)
        clean_sums = _accumulate(clean_sums, clean, fraction)
        preds.append(y_pred)
        loss_sum = loss_sum + fraction * loss.float()
        if ran:
            second += fraction
            perturbed_sum = perturbed_sum + fraction * perturbed_loss.float()
    y_pred = tree.map_structure(lambda *parts: torch.cat(parts), *preds)
    perturbed_loss = perturbed_sum / second if second > 0 else loss_sum
    return grad_sums, clean_sums, second, y_pred, loss_sum, perturbed_loss


def _accumulate(sums, tensors, fraction):
    terms = [t * fraction for t in tensors]
    return terms if sums is None else [a + b for a, b in zip(sums, terms)]


def _replica_mean(tensors, group):
    """The mean of `tensors` over the DDP process group, in one all-reduce."""
    dtype = functools.reduce(torch.promote_types, [t.dtype for t in tensors])
    flat = torch.cat([t.reshape(-1).to(dtype) for t in tensors])
    torch.distributed.all_reduce(flat, group=group)
    flat = flat / _world_size(group)
    parts = flat.split([t.numel() for t in tensors])
    return [p.view_as(t).to(t.dtype) for p, t in zip(parts, tensors)]


def _world_size(group):
    return torch.distributed.get_world_size(group)


def _rho(model):
    # Like a learning-rate schedule, a rho schedule reads the step count.
    return schedules.rho_at(model.rho, model.optimizer.iterations)


def _gradients(loss, tensors):
    grads = torch.autograd.grad(loss, tensors, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, tensors)]


def _apply_masks(tensors, masks):
    return [t if m is None else t * m.to(t.dtype) for t, m in zip(tensors, masks)]


def _scale(optimizer):
    """The loss scale as a float32 tensor (1 without loss scaling)."""
    if not is_loss_scaled(optimizer):
        return torch.tensor(1.0)
    if optimizer.built:
        return optimizer.dynamic_scale.value.float()
    return torch.tensor(float(optimizer.initial_scale))


def _unscale(optimizer, grads):
    if not is_loss_scaled(optimizer):
        return grads
    inverse = 1.0 / _scale(optimizer)
    return [g * inverse.to(g.device, g.dtype) for g in grads]


def _detach(structure):
    return tree.map_structure(
        lambda t: t.detach() if torch.is_tensor(t) else t, structure
    )

"""The SAM update, once, in `keras.ops`: what every backend's step runs.

A step on a batch (or on each micro-batch, then averaged):

1. clean pass at w: g (the model's state updates happen here, once);
2. eps = rule(g, w, rho) with rho at the step, g clipped as the optimizer
   clips where asked, masked by the kernel masks and the variant's weight
   selection;
3. the second-pass decision (`variant.needs_second_pass`); where it runs,
   the perturbed pass at w + eps: gs, with the clean pass's state and
   randomness and no state change; else gs = g;
4. combine: d = `variant.combine(g, gs, ...)` (default d = gs) on the global
   (replica-mean) gradients;
5. finite guard: under loss scaling a non-finite g or d poisons d, so that
   the `LossScaleOptimizer` skips the step; the variant's state is written
   only where g and gs are finite;
6. state writes, trackers, and d scaled once by the loss scale for the
   optimizer; after its update, a `decouples` variant's term (-lr u) moved
   into the weights directly.

Two rules keep one code path right on every backend: branches of a `cond`
return values, and writes happen after it (a JAX branch cannot write; a
random variant's seed is advanced inside a `StatelessScope` and written
after); gradients are unscaled as they leave a pass and scaled once at the
end (the dynamic loss scale is a power of two, so both are exact).

A backend supplies a `Passes` object (`keras_sam.backend.passes`): the
three passes, the micro-batch loop, the replica reductions and the
optimizer call.
JAX runs `train_step` inside a `keras.StatelessScope` over its state, the
way Keras's `stateless_apply` runs `apply`.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import keras
from keras import ops

from keras_sam import _clipping, _gradient_math, _trackers
from keras_sam.backend._common import first_tensor
from keras_sam.backend.passes import Passes, all_finite
from keras_sam.sparsity import kernel_masks
from keras_sam.variants import schedules

__all__ = [
    "Passes",
    "Terms",
    "decoupled_shift",
    "direction",
    "epsilon",
    "loss_scale",
    "sam_gradients",
    "train_step",
    "unscale",
]


class Terms(NamedTuple):
    """One (micro-)batch's contribution, averaged over micro-batches: g and
    gs (unscaled, masked), 1.0 where the second pass ran, the clean loss, and
    the perturbed loss times that 1.0."""

    g: list
    gs: list
    ran: Any
    loss: Any
    perturbed_loss: Any


def train_step(model, passes: Passes, data) -> dict:
    """The SAM update of `model` on one batch `data`, with a backend's
    `passes`: applies it and updates the trackers and metrics.

    Returns:
        The logs: the compiled metrics' results and ``perturbed_loss``.
    """
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    if model.micro_batch_size is None:
        terms, y_pred = sam_gradients(model, passes, x, y, sample_weight)
    else:
        one_micro_batch = functools.partial(sam_gradients, model, passes)
        terms, y_pred = passes.micro_batches(one_micro_batch, (x, y, sample_weight))
    d = direction(model, passes, terms)
    shift = decoupled_shift(model, passes, terms)
    # Finite guard and the loss scale: under loss scaling a non-finite g or d
    # poisons d, so that the `LossScaleOptimizer` skips the whole step.
    applied = True
    scale = loss_scale(model.optimizer)
    if scale is not None:
        applied = passes.all_finite(list(terms.g) + list(d))
        d = _scaled(d, ops.where(applied, scale, float("nan")))
        if shift is not None:  # the skipped step moves no weight
            shift = [ops.where(applied, t, ops.zeros_like(t)) for t in shift]
    batch_size = ops.shape(first_tensor(x))[0]
    if model.micro_batch_size is None:
        eps_examples = passes.eps_batch_size(batch_size)
    else:
        eps_examples = ops.minimum(model.micro_batch_size, batch_size)
    _trackers.record_step(model, terms, batch_size, eps_examples, applied)
    if model.variant is not None:
        model.variant_step.assign_add(1)
    passes.apply(d)
    if shift is not None:
        passes.shift_weights(shift)
    logs = model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
    logs["perturbed_loss"] = model.perturbed_loss_tracker.result()
    return logs


def sam_gradients(model, passes: Passes, x, y, sample_weight):
    """g, gs and the losses of one (micro-)batch.

    Returns:
        ``(Terms, y_pred)``, y_pred from the clean pass.
    """
    masks = [
        None if m is None else m.value for m in kernel_masks(model.trainable_variables)
    ]
    if model.variant is not None and model.variant.single_pass:
        return _single_pass_gradients(model, passes, x, y, sample_weight, masks)
    weights = passes.weights()
    g, y_pred, loss = passes.clean(x, y, sample_weight)
    g = _masked(unscale(model.optimizer, g), masks)
    loss = ops.cast(loss, "float32")
    eps_g = passes.eps_gradients(g)
    seeds = _seed_variables(model)

    def second_pass():
        eps, seed = epsilon(model, eps_g, weights, masks)
        moved = _moved(weights, eps)
        del eps  # eager: its memory serves the perturbed pass
        gs, perturbed_loss = passes.perturbed(x, y, sample_weight, moved)
        gs = _masked(unscale(model.optimizer, gs), masks)
        return gs, ops.cast(perturbed_loss, "float32"), seed

    def no_second_pass():
        return list(g), loss, [s.value for s in seeds]

    run = True
    if model.variant is not None and model.variant.skips_second_pass:
        run = model.variant.needs_second_pass(
            model.variant_step.value, eps_g, _values(model.variant_state)
        )
    if run is True:
        gs, perturbed_loss, seed = second_pass()
    else:
        gs, perturbed_loss, seed = ops.cond(run, second_pass, no_second_pass)
    _assign(seeds, seed)
    ran = ops.cast(run, "float32")
    return Terms(g, gs, ran, loss, perturbed_loss * ran), y_pred


def _single_pass_gradients(model, passes, x, y, sample_weight, masks):
    # Momentum-SAM: eps from the optimizer's state, one pass at w + eps.
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    slots, sign = model.variant.optimizer_direction(
        model.optimizer, model.trainable_variables
    )
    uphill = _masked([sign * v.value for v in slots], masks)
    weights = passes.weights()
    eps, seed = epsilon(model, uphill, weights, masks)
    _assign(_seed_variables(model), seed)
    gs, y_pred, loss = passes.single(x, y, sample_weight, _moved(weights, eps))
    gs = _masked(unscale(model.optimizer, gs), masks)
    zero = ops.zeros((), "float32")
    return Terms(gs, gs, zero, ops.cast(loss, "float32"), zero), y_pred


def epsilon(model, grads, weights, masks):
    """eps at `weights` from `grads`: rho at the step, the optimizer's
    clipping where asked, the perturbation rule (through the variant), the
    variant's weight selection and the kernel masks.

    Returns:
        ``(eps, seed)``: seed is the random variant's next seed value in a
        list (empty without one), drawn here and written by the caller.
    """
    # Like a learning-rate schedule, a rho schedule reads the optimizer's
    # iterations (so that `ProportionalRho` follows the learning rate).
    rho = schedules.rho_at(model.rho, model.optimizer.iterations)
    if model.clip_eps_gradient:
        grads = _clipping.clip_like_optimizer(
            model.optimizer, grads, model.trainable_variables
        )
    variant = model.variant
    if variant is None:
        return _masked(model.perturbation(grads, weights, rho), masks), []
    selected = variant.weight_selection(model) or [True] * len(grads)
    selection = [None if s is None or s else 0.0 for s in selected]
    state, step = _values(model.variant_state), model.variant_step.value
    seeds = _seed_variables(model)
    # A scope that maps only the seed, so that the draw is read back, not
    # written; nothing else may be read inside it (on JAX nothing else is
    # mapped there).
    with keras.StatelessScope(state_mapping=[(s, s.value) for s in seeds]) as scope:
        eps = variant.perturbation(
            model.perturbation,
            _masked(grads, selection),
            weights,
            rho,
            state,
            step,
            model.variant_seed,
        )
    seed = [scope.get_current_value(s) for s in seeds]
    return _masked(_masked(eps, selection), masks), seed


def direction(model, passes: Passes, terms: Terms) -> list:
    """d, the update the optimizer applies: `variant.combine` of the
    replica-mean g and gs (its new state written where both are finite),
    else gs.

    Returns:
        d (unscaled), this replica's share of the global update.
    """
    variant = model.variant
    if variant is None or not variant.combines:
        return passes.optimizer_gradients(terms.gs)
    g, gs = passes.replica_mean(terms.g), passes.replica_mean(terms.gs)
    state = _values(model.variant_state)
    step = model.variant_step.value

    def combine(second_pass):
        d, new = variant.combine(g, gs, state, step, second_pass)
        d = [ops.cast(t, x.dtype) for t, x in zip(d, g)]
        return d, [ops.cast(n, s.dtype) for n, s in zip(new, state)]

    if not (variant.skips_second_pass or variant.single_pass):
        d, new_state = combine(True)
    else:
        ran = ops.cast(terms.ran, "float32") > 0
        d, new_state = ops.cond(ran, lambda: combine(True), lambda: combine(False))
    if loss_scale(model.optimizer) is not None:
        finite = all_finite(g + gs)
        new_state = [ops.where(finite, a, b) for a, b in zip(new_state, state)]
    _assign(model.variant_state or [], new_state)
    return passes.replica_share(d)


def decoupled_shift(model, passes: Passes, terms: Terms) -> list | None:
    """For a `decouples` variant, what the step adds to the weights after the
    optimizer's update: -lr u, u = `variant.decoupled_update` of the
    replica-mean g and gs, lr the optimizer's rate at this step.

    Returns:
        One tensor per trainable weight, or None for other variants.

    Raises:
        ValueError: the optimizer accumulates gradients
            (`gradient_accumulation_steps`), which the shift would not follow.
    """
    variant = model.variant
    if variant is None or not variant.decouples:
        return None
    optimizer = model.optimizer
    if getattr(optimizer, "gradient_accumulation_steps", None):
        raise ValueError(
            f"variant={variant!r} moves the weights outside the optimizer on "
            "every step, which `gradient_accumulation_steps="
            f"{optimizer.gradient_accumulation_steps}` would not follow: use "
            "an optimizer without gradient accumulation, or the coupled form "
            "of the variant."
        )
    lr = ops.convert_to_tensor(optimizer.learning_rate)  # before the update
    g, gs = passes.replica_mean(terms.g), passes.replica_mean(terms.gs)
    return [-ops.cast(lr, u.dtype) * u for u in variant.decoupled_update(g, gs)]


def loss_scale(optimizer):
    """The dynamic loss scale (float32), or None without loss scaling."""
    if not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return None
    scale = optimizer.dynamic_scale if optimizer.built else optimizer.initial_scale
    return ops.cast(scale, "float32")


def unscale(optimizer, grads):
    """The gradients of the unscaled loss from those of the scaled one."""
    scale = loss_scale(optimizer)
    if scale is None:
        return list(grads)
    return _scaled(grads, 1.0 / scale)


def _masked(tensors, masks):
    return [
        t if m is None else t * ops.cast(m, t.dtype) for t, m in zip(tensors, masks)
    ]


def _moved(weights, eps):
    return _gradient_math.add(weights, eps)


def _scaled(tensors, scale):
    return _gradient_math.scale(tensors, scale)


def _seed_variables(model):
    # The random variant's seed state: [] or [variable].
    return [] if model.variant_seed is None else [model.variant_seed.state]


def _values(variables):
    return [v.value for v in variables or []]


def _assign(variables, values):
    for variable, value in zip(variables, values):
        variable.assign(value)

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

A backend supplies a `Passes` object: the three passes, the micro-batch
loop, the replica reductions and the optimizer call (`keras_sam/backend/`).
JAX runs `train_step` inside a `keras.StatelessScope` over its state, the
way Keras's `stateless_apply` runs `apply`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import keras
from keras import ops

from keras_sam import _clipping, _compat
from keras_sam.sparsity._masks import kernel_masks
from keras_sam.variants import schedules


class Terms(NamedTuple):
    """One (micro-)batch's contribution, averaged over micro-batches: g and
    gs (unscaled, masked), 1.0 where the second pass ran, the clean loss, and
    the perturbed loss times that 1.0."""

    g: list
    gs: list
    ran: Any
    loss: Any
    perturbed_loss: Any


class Passes:
    """What a backend supplies. Passes return the gradient of the scaled loss
    (`optimizer.scale_loss`) and the loss as logged; the defaults are one
    device's (no replicas)."""

    def __init__(self, model):
        self.model = model

    def clean(self, x, y, sample_weight):
        """(grads at w, y_pred, loss), with the model's state updates."""
        raise NotImplementedError

    def perturbed(self, x, y, sample_weight, weights):
        """(grads at `weights`, loss) with the clean pass's state and
        randomness, writing nothing."""
        raise NotImplementedError

    def single(self, x, y, sample_weight, weights):
        """(grads at `weights`, y_pred, loss), with the state updates."""
        raise NotImplementedError

    def micro_batches(self, fn, data):
        """``fn(x, y, sample_weight) -> (Terms, y_pred)`` on each micro-batch
        of `data`, in order: (Terms averaged with weight size / batch, y_pred
        concatenated)."""
        raise NotImplementedError

    def apply(self, grads):
        """Hands the optimizer `grads` (scaled like the loss)."""
        raise NotImplementedError

    def shift_weights(self, shifts):
        """Adds `shifts` (the same on every replica) to the trainable
        weights, after the optimizer's update."""
        for variable, shift in zip(self.model.trainable_variables, shifts):
            variable.assign_add(ops.cast(shift, variable.dtype))

    def weights(self):
        """The trainable weights' values, as constants of the step."""
        return [v.value for v in self.model.trainable_variables]

    def eps_gradients(self, grads):
        """The gradient eps is formed from (a replica reduction, or not)."""
        return grads

    def replica_mean(self, grads):
        """The global batch's gradient from this replica's."""
        return grads

    def replica_share(self, grads):
        """What this replica hands its optimizer for the global `grads`."""
        return grads

    def optimizer_gradients(self, grads):
        """This replica's gs as its optimizer takes it."""
        return grads

    def all_finite(self, tensors):
        """True where every tensor (on every replica) is finite."""
        return all_finite(tensors)

    def eps_batch_size(self, batch_size):
        """How many examples' gradient forms each eps."""
        return batch_size


def train_step(model, passes: Passes, data) -> dict:
    """The SAM update of `model` on `data`, with `passes`: applies it,
    updates the trackers and metrics. Returns the logs."""
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    if model.micro_batch_size is None:
        terms, y_pred = sam_gradients(model, passes, x, y, sample_weight)
    else:

        def one(x, y, sample_weight):
            return sam_gradients(model, passes, x, y, sample_weight)

        terms, y_pred = passes.micro_batches(one, (x, y, sample_weight))
    d = direction(model, passes, terms)
    shift = decoupled_shift(model, passes, terms)
    applied = True
    scale = loss_scale(model.optimizer)
    if scale is not None:
        applied = passes.all_finite(list(terms.g) + list(d))
        poison = ops.where(applied, 1.0, float("nan")) * scale
        d = [t * ops.cast(poison, t.dtype) for t in d]
        if shift is not None:
            shift = [ops.where(applied, t, ops.zeros_like(t)) for t in shift]
    second = ops.cast(terms.ran, "float32")
    # The perturbed loss averages over the micro-batches that ran the pass.
    perturbed_loss = terms.perturbed_loss / ops.maximum(second, 1e-12)
    _update_trackers(model, passes, x, terms.loss, perturbed_loss, second, applied)
    model.gradient_pass_counter.update_state(1.0 + second)
    if model.variant is not None:
        model.variant_step.assign_add(1)
    passes.apply(d)
    if shift is not None:
        passes.shift_weights(shift)
    logs = model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
    logs["perturbed_loss"] = model.perturbed_loss_tracker.result()
    return logs


def sam_gradients(model, passes: Passes, x, y, sample_weight):
    """g, gs and the losses on one (micro-)batch: (Terms, clean y_pred)."""
    variant = model.variant
    masks = [
        None if m is None else m.value for m in kernel_masks(model.trainable_variables)
    ]
    weights = passes.weights()
    if variant is not None and variant.single_pass:
        # Momentum-SAM: eps from the optimizer's state, one pass at w + eps.
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        slots, sign = variant.optimizer_direction(
            model.optimizer, model.trainable_variables
        )
        direction = _masked([sign * v.value for v in slots], masks)
        eps, seed = epsilon(model, direction, weights, masks)
        _write_seed(model, seed)
        gs, y_pred, loss = passes.single(x, y, sample_weight, _moved(weights, eps))
        gs = _masked(unscale(model.optimizer, gs), masks)
        zero = ops.zeros((), "float32")
        return Terms(gs, gs, zero, ops.cast(loss, "float32"), zero), y_pred
    g, y_pred, loss = passes.clean(x, y, sample_weight)
    g = _masked(unscale(model.optimizer, g), masks)
    loss = ops.cast(loss, "float32")
    eps_g = passes.eps_gradients(g)
    seed_state = _seed_state(model)

    def second_pass():
        eps, seed = epsilon(model, eps_g, weights, masks)
        gs, perturbed_loss = passes.perturbed(x, y, sample_weight, _moved(weights, eps))
        gs = _masked(unscale(model.optimizer, gs), masks)
        return gs, ops.cast(perturbed_loss, "float32"), seed

    def skip():
        return list(g), loss, [] if seed_state is None else [seed_state.value]

    run = True
    if variant is not None and variant.skips_second_pass:
        run = variant.needs_second_pass(model.variant_step.value, eps_g, _state(model))
    if run is True:
        gs, perturbed_loss, seed = second_pass()
    else:
        gs, perturbed_loss, seed = ops.cond(run, second_pass, skip)
    _write_seed(model, seed)
    ran = ops.cast(run, "float32")
    return Terms(g, gs, ran, loss, perturbed_loss * ran), y_pred


def epsilon(model, grads, weights, masks):
    """eps from `grads` at `weights`, and the variant seed's next value
    ([] without a random variant, else [value]), drawn without writing it."""
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
    selection = variant.weight_selection(model)
    selection = [
        None if s is None or s else 0.0 for s in selection or [None] * len(grads)
    ]
    state, step = _state(model), model.variant_step.value
    seed_state = _seed_state(model)
    mapping = [] if seed_state is None else [(seed_state, seed_state.value)]
    # Only the seed is read in this scope (on JAX, nothing else is mapped).
    with keras.StatelessScope(state_mapping=mapping) as scope:
        eps = variant.perturbation(
            model.perturbation,
            _masked(grads, selection),
            weights,
            rho,
            state,
            step,
            model.variant_seed,
        )
    seed = [] if seed_state is None else [scope.get_current_value(seed_state)]
    return _masked(_masked(eps, selection), masks), seed


def direction(model, passes: Passes, terms: Terms) -> list:
    """d from g and gs (unscaled): `variant.combine` on the replica means,
    its state written where both are finite; else gs."""
    variant = model.variant
    if variant is None or not variant.combines:
        return passes.optimizer_gradients(terms.gs)
    g, gs = passes.replica_mean(terms.g), passes.replica_mean(terms.gs)
    state = _state(model)
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
    finite = all_finite(g + gs) if loss_scale(model.optimizer) is not None else None
    for variable, before, after in zip(model.variant_state or [], state, new_state):
        if finite is not None:
            after = ops.where(finite, after, before)
        variable.assign(after)
    return passes.replica_share(d)


def decoupled_shift(model, passes: Passes, terms: Terms) -> list | None:
    """For a `decouples` variant, what the step adds to the weights after the
    optimizer's update: -lr u, u = `variant.decoupled_update` of the
    replica-mean g and gs, lr the optimizer's rate at this step; else None."""
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
    return [g * ops.cast(1.0 / scale, g.dtype) for g in grads]


def all_finite(tensors):
    return ops.all(ops.stack([ops.all(ops.isfinite(t)) for t in tensors]))


def _update_trackers(model, passes, x, loss, perturbed_loss, second, applied):
    # A step skipped by loss scaling is counted and leaves the means alone:
    # its clean loss enters only where finite, its perturbed loss never.
    batch_size = ops.shape(_first(x))[0]
    finite_loss = ops.all(ops.isfinite(loss))
    tracker = _compat.loss_tracker(model)
    _update_mean(tracker, loss, batch_size, ops.logical_or(applied, finite_loss))
    _update_mean(
        model.perturbed_loss_tracker,
        perturbed_loss,
        batch_size,
        ops.logical_and(applied, second > 0),
    )
    model.skipped_steps_tracker.update_state(ops.logical_not(applied))
    m = model.micro_batch_size
    if m is None:
        eps_examples = passes.eps_batch_size(batch_size)
    else:
        eps_examples = ops.minimum(m, batch_size)
    model.eps_batch_size_tracker.update_state(eps_examples)


def _update_mean(tracker, value, batch_size, include):
    # Not even a NaN times 0 where `include` is False.
    weight = ops.where(include, ops.cast(batch_size, "float32"), 0.0)
    tracker.update_state(ops.where(include, value, ops.zeros_like(value)), weight)


def _masked(tensors, masks):
    return [
        t if m is None else t * ops.cast(m, t.dtype) for t, m in zip(tensors, masks)
    ]


def _moved(weights, eps):
    return [w + ops.cast(e, w.dtype) for w, e in zip(weights, eps)]


def _state(model):
    return [v.value for v in model.variant_state or []]


def _seed_state(model):
    return None if model.variant_seed is None else model.variant_seed.state


def _write_seed(model, seed):
    for value in seed:
        model.variant_seed.state.assign(value)


def _first(structure):
    return next(t for t in keras.tree.flatten(structure) if t is not None)

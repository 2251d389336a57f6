"""The SAM training step on the JAX backend, stateless like Keras's JAX trainer.

`train_step(model, state, data) -> (logs, state)`, with the state Keras's
JAX trainer carries (trainable, non-trainable, optimizer and metrics values).
On a batch (or on each micro-batch, inside a `jax.lax.scan`):

1. clean pass: `jax.value_and_grad` over `model.compute_loss_and_updates`
   (Keras's stateless forward and loss) at w, from the non-trainable state
   s; it returns g and the updated state s' (batch-norm statistics, seeds);
2. unscale g if the optimizer scales the loss, mask it, eps = rule(g, w, rho);
3. perturbed pass: the same function at w + eps and the same s, so the same
   dropout masks and batch statistics, regularizers evaluated at w + eps;
   its state output is dropped, so the state changes once, to s';
4. the optimizer's `stateless_apply` applies the perturbed gradient at w.

Masks (`keras_sam.sparsity.KernelMask`) are read from the non-trainable
state; the gradient, eps and the perturbed gradient are multiplied by them,
and the constraint re-masks the weights after the update.

Distribution: under `keras.distribution.DataParallel` the batch is sharded
and the step is one jitted program over the global batch, so g is the
global gradient and eps is synchronized. ``replica_eps="per_replica"`` with
several devices is refused (use ``micro_batch_size`` = the per-device batch
for the same m-sharpness).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import keras
from keras import tree

from keras_sam.backend import PER_REPLICA
from keras_sam.backend._common import (
    all_finite,
    eps_gradients,
    first_tensor,
    is_loss_scaled,
    micro_batch_split,
    update_trackers,
    variant_selection,
)
from keras_sam.sparsity._masks import kernel_masks, mask_values
from keras_sam.variants import schedules

#: Up to this many full micro-batches the scan is unrolled: XLA on CPU runs
#: loop bodies single-threaded and without its fast convolutions (a small CNN
#: with 4 micro-batches: 10.5 s/step rolled, 0.28 s unrolled, and it compiles
#: faster); above it the program would grow with the count.
_MAX_UNROLLED_MICRO_BATCHES = 16


def train_step(model, state, data):
    """`SAMModel.train_step` for JAX: returns ``(logs, state)``."""
    trainable, non_trainable, optimizer_vars, metrics_vars = state
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    _check_replica_eps(model)
    mask_vars = kernel_masks(model.trainable_variables)
    masks = _values_of(model, mask_vars, non_trainable)
    passes = _Passes(model, optimizer_vars, masks)
    second = jnp.array(1.0)
    if model.variant is not None:
        grads, second, y_pred, loss, perturbed_loss, non_trainable, metrics_vars = (
            _variant_step(
                passes, trainable, non_trainable, metrics_vars, x, y, sample_weight
            )
        )
    elif model.micro_batch_size is None:
        grads, y_pred, loss, perturbed_loss, non_trainable, metrics_vars = (
            passes.sam_gradients(
                trainable, non_trainable, metrics_vars, x, y, sample_weight
            )
        )
    else:
        (grads, loss, perturbed_loss), y_pred, non_trainable, metrics_vars = (
            _micro_batches(
                _sam_terms(passes, trainable),
                passes.model,
                non_trainable,
                metrics_vars,
                (x, y, sample_weight),
            )
        )
    # The loss-scale optimizer skips the step where a gradient is
    # non-finite (a non-finite clean gradient poisoned the perturbed one).
    applied = all_finite(grads) if passes.scale is not None else jnp.array(True)
    with mask_values(mask_vars, masks):
        trainable, optimizer_vars = model.optimizer.stateless_apply(
            optimizer_vars, grads, trainable
        )
    logs, metrics_vars = _update_metrics(
        model,
        metrics_vars,
        (loss, perturbed_loss, applied, second),
        x,
        y,
        y_pred,
        sample_weight,
    )
    return logs, (trainable, non_trainable, optimizer_vars, metrics_vars)


class _Passes:
    """The clean and perturbed passes of one step, closed over what stays
    fixed within it (optimizer state, masks)."""

    def __init__(self, model, optimizer_vars, masks):
        self.model = model
        self.optimizer_vars = optimizer_vars
        self.masks = masks
        self.grad_fn = jax.value_and_grad(model.compute_loss_and_updates, has_aux=True)
        self.scale = _loss_scale(model.optimizer, optimizer_vars)
        # Like a learning-rate schedule, a rho schedule reads the step count.
        self.rho = model.rho
        if callable(model.rho):
            step = _iterations(model.optimizer, optimizer_vars)
            self.rho = schedules.rho_at(model.rho, step)

    def _gradients(self, trainable, non_trainable, metrics_vars, x, y, sample_weight):
        (_, aux), grads = self.grad_fn(
            trainable,
            non_trainable,
            metrics_vars,
            x,
            y,
            sample_weight,
            training=True,
            optimizer_variables=self.optimizer_vars,
        )
        return grads, aux

    def sam_gradients(
        self, trainable, non_trainable, metrics_vars, x, y, sample_weight
    ):
        """(perturbed grads (scaled like the loss), clean y_pred, clean loss,
        perturbed loss, state after the clean pass, metrics state)."""
        model = self.model
        scaled_grads, (loss, y_pred, new_state, new_metrics) = self._gradients(
            trainable, non_trainable, metrics_vars, x, y, sample_weight
        )
        grads = _apply_masks(self._unscale(scaled_grads), self.masks)
        eps = model.perturbation(eps_gradients(model, grads), trainable, self.rho)
        eps = _apply_masks(eps, self.masks)
        perturbed = [w + e.astype(w.dtype) for w, e in zip(trainable, eps)]
        # The state of the perturbed pass is the clean pass's input state:
        # same seeds (dropout masks); its updates are dropped.
        perturbed_grads, (perturbed_loss, *_) = self._gradients(
            perturbed, non_trainable, metrics_vars, x, y, sample_weight
        )
        perturbed_grads = _apply_masks(perturbed_grads, self.masks)
        if self.scale is not None:
            # A non-finite first gradient must skip the step even where the
            # perturbed pass comes out finite: poison the second one.
            finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(g)) for g in grads]))
            factor = jnp.where(finite, 1.0, jnp.nan)
            perturbed_grads = [g * factor.astype(g.dtype) for g in perturbed_grads]
        return perturbed_grads, y_pred, loss, perturbed_loss, new_state, new_metrics

    def _unscale(self, grads):
        if self.scale is None:
            return grads
        inverse = 1.0 / self.scale.astype("float32")
        return [g * inverse.astype(g.dtype) for g in grads]


def _variant_step(passes, trainable, non_trainable, metrics_vars, x, y, sample_weight):
    """The step with a variant: (d (scaled like the loss), share of the
    batch that ran the second pass, clean y_pred, clean loss, perturbed loss,
    state, metrics state). The variant's step, state and seed are
    non-trainable variables: read from and written back to the state."""
    model = passes.model
    if model.micro_batch_size is None:
        (gs, grads, second, loss, perturbed_loss), y_pred, state, metrics_vars = (
            _variant_terms(passes, trainable)(
                non_trainable, metrics_vars, x, y, sample_weight
            )
        )
    else:
        # `needs_second_pass` and eps per micro-batch; `combine` once, on the
        # batch means of g and gs.
        (gs, grads, second, loss, perturbed_sum), y_pred, state, metrics_vars = (
            _micro_batches(
                _variant_terms(passes, trainable),
                model,
                non_trainable,
                metrics_vars,
                (x, y, sample_weight),
            )
        )
        # The perturbed loss averages over the micro-batches that ran the pass.
        perturbed_loss = perturbed_sum / jnp.maximum(second, 1e-12)
    variables = list(model.variant_state or [])
    step = _values_of(model, [model.variant_step], state)[0]
    variant_state = _values_of(model, variables, state)
    run = second > 0
    variant = model.variant
    if variant.combines:

        def combine(second_pass):
            d, new = variant.combine(grads, gs, variant_state, step, second_pass)
            d = [jnp.asarray(t).astype(g.dtype) for t, g in zip(d, grads)]
            new = [jnp.asarray(t).astype(v.dtype) for t, v in zip(new, variant_state)]
            return d, new

        d, new_state = jax.lax.cond(run, lambda: combine(True), lambda: combine(False))
        if passes.scale is not None:
            finite = all_finite(grads + gs)
            new_state = [
                jnp.where(finite, a, b) for a, b in zip(new_state, variant_state)
            ]
    else:
        d, new_state = gs, variant_state
    if passes.scale is not None:
        # A non-finite first gradient must skip the step: poison d.
        factor = jnp.where(all_finite(grads), passes.scale, jnp.nan)
        d = [t * factor.astype(t.dtype) for t in d]
    updates = {id(model.variant_step): step + 1}
    updates.update({id(v): a for v, a in zip(variables, new_state)})
    state = _with_values(model, state, updates)
    return d, second, y_pred, loss, perturbed_loss, state, metrics_vars


def _variant_terms(passes, trainable):
    """The variant's passes on one (micro-)batch as `_micro_batches` takes
    them: what is averaged is (gs, g (both unscaled), 1.0 where the second
    pass ran, clean loss, perturbed loss where it ran, else 0). The seed's
    new value is written to the state; the variant's step and state are read
    from it (the step's start: nothing writes them before `combine`)."""
    model = passes.model
    variant = model.variant
    selection = variant_selection(model)
    seed_var = model.variant_seed.state if model.variant_seed is not None else None

    if variant.single_pass:
        return _single_pass_terms(passes, trainable, selection, seed_var)

    def run_passes(non_trainable, metrics_vars, x, y, sample_weight):
        scaled_grads, (loss, y_pred, state, metrics_vars) = passes._gradients(
            trainable, non_trainable, metrics_vars, x, y, sample_weight
        )
        grads = _apply_masks(passes._unscale(scaled_grads), passes.masks)
        step = _values_of(model, [model.variant_step], state)[0]
        variant_state = _values_of(model, list(model.variant_state or []), state)
        seed = _values_of(model, [seed_var], state)[0]

        def perturbed(seed):
            eps, seed = _variant_eps(
                passes,
                eps_gradients(model, grads),
                trainable,
                selection,
                (variant_state, step),
                seed_var,
                seed,
            )
            weights = [w + e.astype(w.dtype) for w, e in zip(trainable, eps)]
            # The same input state as the clean pass (same dropout masks).
            gs, (perturbed_loss, *_) = passes._gradients(
                weights, non_trainable, metrics_vars, x, y, sample_weight
            )
            gs = _apply_masks(passes._unscale(gs), passes.masks)
            return gs, perturbed_loss.astype("float32"), seed

        def clean(seed):
            return list(grads), jnp.zeros((), "float32"), seed

        run = True
        if variant.skips_second_pass:
            run = variant.needs_second_pass(step, grads, variant_state)
        if run is True:
            gs, perturbed_loss, seed = perturbed(seed)
            run = jnp.array(True)
        else:
            run = jnp.asarray(run)
            gs, perturbed_loss, seed = jax.lax.cond(run, perturbed, clean, seed)
        if seed_var is not None:
            state = _with_values(model, state, {id(seed_var): seed})
        ran = run.astype("float32")
        terms = (gs, grads, ran, loss.astype("float32"), perturbed_loss * ran)
        return terms, y_pred, state, metrics_vars

    return run_passes


def _variant_eps(
    passes, eps_grads, trainable, selection, state_and_step, seed_var, seed
):
    """The variant's masked eps from `eps_grads` at `trainable`, and the seed
    value after its draw (a random variant advances the seed statelessly)."""
    model = passes.model
    variant_state, step = state_and_step
    mapping = [] if seed_var is None else [(seed_var, seed)]
    with keras.StatelessScope(state_mapping=mapping) as scope:
        eps = model.variant.perturbation(
            model.perturbation,
            _select(eps_grads, selection),
            trainable,
            passes.rho,
            variant_state,
            step,
            model.variant_seed,
        )
        if seed_var is not None:
            seed = scope.get_current_value(seed_var)
    return _apply_masks(_select(eps, selection), passes.masks), seed


def _single_pass_terms(passes, trainable, selection, seed_var):
    """`_variant_terms` for a single-pass variant (Momentum-SAM): eps from the
    optimizer's state, one pass at w + eps whose state output is kept; gs and
    g are its gradient, and no second pass ran."""
    model = passes.model
    variant = model.variant
    slots, sign = variant.optimizer_direction(
        model.optimizer, model.trainable_variables
    )
    values = dict(zip(map(id, model.optimizer.variables), passes.optimizer_vars))
    direction = _apply_masks([sign * values[id(v)] for v in slots], passes.masks)

    def run_pass(non_trainable, metrics_vars, x, y, sample_weight):
        step = _values_of(model, [model.variant_step], non_trainable)[0]
        variant_state = _values_of(
            model, list(model.variant_state or []), non_trainable
        )
        seed = _values_of(model, [seed_var], non_trainable)[0]
        eps, seed = _variant_eps(
            passes,
            direction,
            trainable,
            selection,
            (variant_state, step),
            seed_var,
            seed,
        )
        weights = [w + e.astype(w.dtype) for w, e in zip(trainable, eps)]
        scaled_grads, (loss, y_pred, state, metrics_vars) = passes._gradients(
            weights, non_trainable, metrics_vars, x, y, sample_weight
        )
        grads = _apply_masks(passes._unscale(scaled_grads), passes.masks)
        if seed_var is not None:
            state = _with_values(model, state, {id(seed_var): seed})
        zero = jnp.zeros((), "float32")
        terms = (list(grads), grads, zero, loss.astype("float32"), zero)
        return terms, y_pred, state, metrics_vars

    return run_pass


def _with_values(model, state, updates):
    """`state` (the non-trainable values) with ``{id(variable): value}``."""
    return [
        updates.get(id(v), value)
        for v, value in zip(model.non_trainable_variables, state)
    ]


def _select(tensors, selection):
    return [t if s is None else jnp.zeros_like(t) for t, s in zip(tensors, selection)]


def _sam_terms(passes, trainable):
    """The SAM pass of one micro-batch as `_micro_batches` takes it: what is
    averaged is (perturbed grads, clean loss, perturbed loss)."""

    def run(state, metrics, x, y, sample_weight):
        grads, y_pred, loss, perturbed_loss, state, metrics = passes.sam_gradients(
            trainable, state, metrics, x, y, sample_weight
        )
        terms = (grads, loss.astype("float32"), perturbed_loss.astype("float32"))
        return terms, y_pred, state, metrics

    return run


def _micro_batches(pass_fn, model, non_trainable, metrics_vars, data):
    """m-sharpness: ``pass_fn(state, metrics, x, y, sample_weight) -> (terms,
    y_pred, state, metrics)`` on each micro-batch; returns (the batch mean of
    `terms`, each micro-batch weighted by its size, clean y_pred, state,
    metrics state).

    A batch of n runs as floor(n/m) micro-batches of m over [num_full, m, ...]
    slices (`_scanned_micro_batches`), then one of n mod m if that is not 0
    (shapes are static under jit, so the partial one is known when traced).
    """
    m = model.micro_batch_size
    n = first_tensor(data).shape[0]
    num_full, rest = micro_batch_split(model, n)
    parts = []  # (fraction of the batch, mean terms, y_pred)
    if num_full:

        def split(t):
            if t is None:
                return None
            return t[: num_full * m].reshape((num_full, m) + tuple(t.shape[1:]))

        terms, y_pred, non_trainable, metrics_vars = _scanned_micro_batches(
            pass_fn, non_trainable, metrics_vars, tree.map_structure(split, data)
        )
        y_pred = tree.map_structure(
            lambda t: t.reshape((num_full * m,) + tuple(t.shape[2:])), y_pred
        )
        parts.append((num_full * m / n, terms, y_pred))
    if rest:
        tail = tree.map_structure(
            lambda t: None if t is None else t[num_full * m :], data
        )
        terms, y_pred, non_trainable, metrics_vars = pass_fn(
            non_trainable, metrics_vars, *tail
        )
        parts.append((rest / n, terms, y_pred))
    terms = tree.map_structure(
        lambda *values: sum(f * v for (f, _, _), v in zip(parts, values)),
        *[p[1] for p in parts],
    )
    y_pred = tree.map_structure(
        lambda *pieces: jnp.concatenate(pieces), *[p[2] for p in parts]
    )
    return terms, y_pred, non_trainable, metrics_vars


def _scanned_micro_batches(pass_fn, non_trainable, metrics_vars, batches):
    """`pass_fn` on each of `batches` ([num_full, m, ...] slices) in a
    `jax.lax.scan`: (mean terms, y_pred [num_full, m, ...], state, metrics
    state).

    Each clean pass updates the state (batch-norm statistics, seeds) and the
    metrics state in order, as calling the model on each micro-batch would.
    A `jax.vmap` over the micro-batches could run them side by side only for
    a model whose pass changes no state, and measured 1.7-2.8x slower than
    this scan on a CPU for an MLP and a CNN without such state
    (`benchmarks/jax_micro_batches.py`): the perturbed passes, each at its
    own w + eps, become batched matrix products and grouped convolutions.
    """
    num_full = first_tensor(batches).shape[0]

    def body(carry, batch):
        state, metrics, sums = carry
        terms, y_pred, state, metrics = pass_fn(state, metrics, *batch)
        sums = tree.map_structure(lambda a, b: a + b, sums, terms)
        return (state, metrics, sums), y_pred

    first = tree.map_structure(lambda t: None if t is None else t[0], batches)
    shapes = jax.eval_shape(lambda: pass_fn(non_trainable, metrics_vars, *first)[0])
    zeros = tree.map_structure(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    (non_trainable, metrics_vars, sums), y_pred = jax.lax.scan(
        body,
        (non_trainable, metrics_vars, zeros),
        batches,
        unroll=num_full <= _MAX_UNROLLED_MICRO_BATCHES,
    )
    means = tree.map_structure(lambda t: t / num_full, sums)
    return means, y_pred, non_trainable, metrics_vars


def _update_metrics(model, metrics_vars, losses, x, y, y_pred, sw):
    loss, perturbed_loss, applied, second = losses
    mapping = list(zip(model.metrics_variables, metrics_vars))
    with keras.StatelessScope(state_mapping=mapping) as scope:
        update_trackers(
            model, loss, perturbed_loss, first_tensor(x).shape[0], applied, second > 0
        )
        model.gradient_pass_counter.update_state(1.0 + second.astype("float32"))
        logs = model.compute_metrics(x, y, y_pred, sample_weight=sw)
        logs["perturbed_loss"] = model.perturbed_loss_tracker.result()
    new_metrics = []
    for variable, value in zip(model.metrics_variables, metrics_vars):
        new_value = scope.get_current_value(variable)
        new_metrics.append(value if new_value is None else new_value)
    return logs, new_metrics


def _values_of(model, variables, non_trainable):
    """The values `non_trainable` holds for `variables` (None stays None)."""
    index = {id(v): i for i, v in enumerate(model.non_trainable_variables)}
    return [
        None
        if v is None
        else non_trainable[index[id(v)]]
        if id(v) in index
        else v.value
        for v in variables
    ]


def _apply_masks(tensors, masks):
    return [t if m is None else t * m.astype(t.dtype) for t, m in zip(tensors, masks)]


def _iterations(optimizer, optimizer_vars):
    """The optimizer's step count as held in `optimizer_vars` (with gradient
    accumulation `iterations` is computed from its variables)."""
    mapping = list(zip(optimizer.variables, optimizer_vars))
    with keras.StatelessScope(state_mapping=mapping):
        return keras.ops.convert_to_tensor(optimizer.iterations)


def _loss_scale(optimizer, optimizer_vars):
    """The dynamic loss scale's value in `optimizer_vars`, or None."""
    if not is_loss_scaled(optimizer):
        return None
    for variable, value in zip(optimizer.variables, optimizer_vars):
        if variable is optimizer.dynamic_scale:
            return value
    raise ValueError("The LossScaleOptimizer's dynamic scale is not in its state.")


def _check_replica_eps(model):
    if model.replica_eps != PER_REPLICA:
        return
    distribution = keras.distribution.distribution()
    devices = getattr(getattr(distribution, "device_mesh", None), "devices", None)
    if devices is not None and devices.size > 1:
        raise ValueError(
            'replica_eps="per_replica" is not supported on the JAX backend with '
            f"a keras.distribution over {devices.size} devices: the step is one "
            'program over the global batch. Use replica_eps="synchronized" '
            "(eps from the global gradient), or micro_batch_size=<per-device "
            "batch size> for eps from each device's share of the batch."
        )

"""The SAM training step on the TensorFlow backend.

One step on a batch (or on each micro-batch, inside a `tf.while_loop`):

1. snapshot the non-trainable state (batch-norm statistics, dropout seeds);
2. clean pass: forward, loss and gradient g at w, with the model's normal
   state updates (they happen here, once);
3. unscale g if the optimizer scales the loss, eps = rule(g, w, rho);
4. perturbed pass at w + eps inside a `keras.StatelessScope` that maps the
   trainable weights to w + eps and the state to the snapshot: the same
   function (same dropout masks, same batch statistics, regularizers evaluated
   at w + eps) and no state change;
5. the optimizer applies the perturbed gradient at w.

Masks: a trainable variable whose constraint has a ``mask`` attribute (a 0/1
tensor of its shape, as `keras_sam.sparsity.KernelMask`) holds its masked
weights at zero. The step multiplies g (before eps, so that norms ignore
those weights), eps and the perturbed gradient by it; the constraint re-masks
the weights after the optimizer's update.

Loss, metrics and `y_pred` come from the clean pass; the perturbed loss is
logged as ``perturbed_loss``. A step skipped by loss scaling (a non-finite
gradient) is counted in ``model.skipped_steps`` and leaves the running means
alone: its perturbed loss (taken at an eps formed from a non-finite gradient)
never enters them, its clean loss only when finite.

Variants (`keras_sam.variants`): a `tf.cond` on `needs_second_pass` runs the
perturbed pass only on the steps that need it (the other branch returns g);
the variant's `combine` then turns g and gs into the update.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import keras
import tensorflow as tf
from keras import tree

from keras_sam import _compat, _gradient_math
from keras_sam.backend import PER_REPLICA, SYNCHRONIZED
from keras_sam.backend._common import (
    build_before_step,
    eps_gradients,
    first_tensor,
    forward,
    is_loss_scaled,
    output_spec,
    variant_selection,
)
from keras_sam.backend.tensorflow import gradient_math, replicas
from keras_sam.sparsity._masks import kernel_masks
from keras_sam.variants import schedules


def train_step(model, data):
    """`SAMModel.train_step` for TensorFlow: returns the logs dict."""
    # The rules' global norms and dot products as TensorFlow's own kernels.
    with _gradient_math.dot_kernel(gradient_math.dot):
        return _train_step(model, data)


def _train_step(model, data):
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    build_before_step(model, x)
    if model.micro_batch_size is None:
        grads, clean_grads, second, y_pred, loss, perturbed_loss = _sam_gradients(
            model, x, y, sample_weight, model.replica_eps
        )
    else:
        grads, clean_grads, second, y_pred, loss, perturbed_loss = (
            _micro_batch_sam_gradients(model, x, y, sample_weight)
        )
    grads = _combine(model, clean_grads, grads, second)
    second = tf.cast(second, tf.float32)  # share of the batch with 2 passes
    applied = tf.constant(True)
    if is_loss_scaled(model.optimizer):
        # Skip the step on every replica when any replica's gradient is
        # non-finite: the optimizer checks only the first replica's.
        applied = replicas.all_replicas_finite([g for g in grads if g is not None])
        grads = _poison_unless(applied, grads)
    batch_size = tf.shape(first_tensor(x))[0]
    loss = replicas.unscale_for_replicas(loss)
    perturbed_loss = replicas.unscale_for_replicas(perturbed_loss)
    _update_mean(
        _compat.loss_tracker(model), loss, batch_size, applied | _is_finite(loss)
    )
    _update_mean(
        model.perturbed_loss_tracker, perturbed_loss, batch_size, applied & (second > 0)
    )
    model.gradient_pass_counter.update_state(1.0 + second)
    if model.variant is not None:
        model.variant_step.assign_add(1)
    model.skipped_steps_tracker.update_state(tf.logical_not(applied))
    model.eps_batch_size_tracker.update_state(_eps_batch_size(model, batch_size))
    model.optimizer.apply_gradients(zip(grads, model.trainable_variables))
    logs = model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
    logs["perturbed_loss"] = model.perturbed_loss_tracker.result()
    return replicas.logs_for_reduction(logs)


def _is_finite(value):
    return tf.reduce_all(tf.math.is_finite(value))


def _update_mean(tracker, value, batch_size, include):
    """Adds `value` with weight `batch_size` to a `Mean`, or nothing (not even
    a NaN times 0) where `include` is False."""
    weight = tf.where(include, tf.cast(batch_size, tf.float32), 0.0)
    tracker.update_state(tf.where(include, value, tf.zeros_like(value)), weight)


def _sam_gradients(model, x, y, sample_weight, replica_eps):
    """SAM gradient on one batch: (perturbed grads, clean grads, second pass
    ran, clean y_pred, clean loss, perturbed loss). Applies the clean pass's
    state updates. Where the variant skips the second pass, the perturbed
    grads are the clean ones (scaled like a perturbed pass's)."""
    if model.variant is not None and model.variant.single_pass:
        return _single_pass_gradients(model, x, y, sample_weight)
    state = [tf.identity(v.value) for v in model.non_trainable_variables]
    clean_grads, y_pred, loss = _compiled(model, _clean_pass)(
        model, x, y, sample_weight
    )
    masks = kernel_masks(model.trainable_variables)
    clean_grads = _apply_masks(clean_grads, masks)
    eps_grads = replicas.gradients_for_eps(clean_grads, replica_eps)
    weights = [tf.identity(v.value) for v in model.trainable_variables]

    def second_pass():
        eps = _apply_masks(_epsilon(model, eps_grads, weights, masks), masks)
        perturbed_weights = [w + tf.cast(e, w.dtype) for w, e in zip(weights, eps)]
        grads, perturbed_loss = _compiled(model, _perturbed_pass)(
            model, x, y, sample_weight, perturbed_weights, state
        )
        return _apply_masks(grads, masks), perturbed_loss

    run = _needs_second_pass(model, eps_grads)
    if run is True:
        grads, perturbed_loss = second_pass()
    else:
        grads, perturbed_loss = _second_pass_if(
            run, second_pass, model, clean_grads, loss
        )
    if is_loss_scaled(model.optimizer):
        # A non-finite first gradient must skip the step even where the
        # perturbed pass happens to come out finite: poison the second one.
        finite = tf.reduce_all(
            [tf.reduce_all(tf.math.is_finite(g)) for g in clean_grads]
        )
        grads = _poison_unless(finite, grads)
    return grads, clean_grads, run, y_pred, loss, perturbed_loss


def _single_pass_gradients(model, x, y, sample_weight):
    """A single-pass variant (Momentum-SAM): eps from the optimizer's state,
    one pass at w + eps that applies the state updates. Returns what
    `_sam_gradients` does, with no second pass."""
    trainable = model.trainable_variables
    optimizer = model.optimizer
    if not optimizer.built:
        optimizer.build(trainable)
    slots, sign = model.variant.optimizer_direction(optimizer, trainable)
    masks = kernel_masks(trainable)
    direction = _apply_masks([sign * v.value for v in slots], masks)
    weights = [tf.identity(v.value) for v in trainable]
    eps = _apply_masks(_epsilon(model, direction, weights, masks), masks)
    perturbed = [w + tf.cast(e, w.dtype) for w, e in zip(weights, eps)]

    def one_pass(model, x, y, sample_weight, perturbed):
        with tf.GradientTape() as tape:
            tape.watch(perturbed)
            mapping = list(zip(model.trainable_variables, perturbed))
            with keras.StatelessScope(
                state_mapping=mapping, collect_losses=True
            ) as scope:
                y_pred = forward(model, x)
                loss = _loss(model, x, y, y_pred, sample_weight)
                scaled_loss = model.optimizer.scale_loss(loss)
        grads = tape.gradient(
            scaled_loss, perturbed, unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        updates = [scope.get_current_value(v) for v in model.non_trainable_variables]
        return grads, y_pred, loss, updates

    grads, y_pred, loss, updates = _compiled(model, one_pass)(
        model, x, y, sample_weight, perturbed
    )
    for variable, value in zip(model.non_trainable_variables, updates):
        if value is not None:
            variable.assign(value)
    grads = _apply_masks(grads, masks)
    return grads, _unscale(model.optimizer, grads), False, y_pred, loss, loss


def _clean_pass(model, x, y, sample_weight):
    """Loss, prediction and (unscaled) gradient at w, with state updates."""
    with tf.GradientTape() as tape:
        y_pred = forward(model, x)
        loss = _loss(model, x, y, y_pred, sample_weight)
        scaled_loss = model.optimizer.scale_loss(loss)
    grads = tape.gradient(
        scaled_loss,
        model.trainable_variables,
        unconnected_gradients=tf.UnconnectedGradients.ZERO,
    )
    grads = _unscale(model.optimizer, [tf.convert_to_tensor(g) for g in grads])
    return grads, y_pred, loss


def _perturbed_pass(model, x, y, sample_weight, perturbed_weights, state):
    """Loss and (scaled) gradient at w + eps, with the state of the clean pass
    and no variable written."""
    with tf.GradientTape() as tape:
        tape.watch(perturbed_weights)
        mapping = list(zip(model.trainable_variables, perturbed_weights))
        mapping += list(zip(model.non_trainable_variables, state))
        with keras.StatelessScope(state_mapping=mapping, collect_losses=True):
            y_pred = forward(model, x)
            loss = _loss(model, x, y, y_pred, sample_weight)
            scaled_loss = model.optimizer.scale_loss(loss)
    return tape.gradient(scaled_loss, perturbed_weights), loss


def _compiled(model, pass_fn):
    """`pass_fn` itself, or compiled with XLA per replica: under a
    multi-replica strategy Keras cannot compile the whole step
    (`SAMModel.make_train_function` then moves `jit_compile` here)."""
    if not getattr(model, "_jit_compile_per_replica", False):
        return pass_fn
    return tf.function(pass_fn, jit_compile=True, autograph=False)


def _eps_batch_size(model, local_batch_size):
    """How many examples' gradient forms each eps (the m of m-sharpness)."""
    size = tf.cast(local_batch_size, tf.float32)
    if model.micro_batch_size is not None:
        return tf.minimum(size, float(model.micro_batch_size))
    if model.replica_eps == SYNCHRONIZED:
        size *= replicas.num_replicas()
    return size


def _micro_batch_sam_gradients(model, x, y, sample_weight):
    """m-sharpness: each micro-batch gets its own eps; the perturbed
    gradients are averaged, each weighted by its micro-batch's size.

    A batch of n runs as floor(n/m) micro-batches of m, one after another in
    a `tf.while_loop` (the graph holds one copy of the step whatever their
    number), then one of n mod m if that is not 0 (a partial last batch):
    each perturbed gradient and loss counts with weight size / n, so a batch
    that m divides gives the plain mean. Each clean pass updates the state
    as calling the model on that micro-batch would. Under a strategy each
    micro-batch's eps comes from its own gradient on its own replica: with
    aligned shards this equals single-device micro-batch SAM on the global
    batch, and needs no all-reduce inside the loop.
    """
    m = model.micro_batch_size
    _warn_if_xla_on_cpu(model)
    first = first_tensor(x)
    static_size = first.shape[0]
    batch_size = tf.shape(first)[0]
    num_full = batch_size // m
    full_size = num_full * m
    data = (x, y, sample_weight)
    tail = tree.map_structure(lambda t: None if t is None else t[full_size:], data)

    pred_spec = output_spec(model, _take_rows(x, m))
    flat_spec = tree.flatten(pred_spec)
    # Where the batch size is known when traced (eager, `train_on_batch`,
    # `drop_remainder`) only the passes that run are traced; else both, and
    # the partial one runs under a `tf.cond`.
    parts = []  # (fraction of the batch, result of the passes)
    total = tf.cast(batch_size, tf.float32)
    if static_size is None or static_size >= m:
        result = _full_micro_batches(
            model, *data, m, num_full, flat_spec, pad=static_size is None
        )
        parts.append((tf.cast(full_size, tf.float32) / total, result))
    if static_size is None or static_size % m:
        size = batch_size - full_size
        result = _partial_micro_batch(
            model, *tail, size, static_size is None, flat_spec
        )
        parts.append((tf.cast(size, tf.float32) / total, result))

    grads = [
        _weighted_sum([(f, r.grads[i]) for f, r in parts if r.grads[i] is not None])
        for i in range(len(model.trainable_variables))
    ]
    clean_grads = [
        _weighted_sum([(f, r.clean_grads[i]) for f, r in parts])
        for i in range(len(model.trainable_variables))
    ]
    second = _weighted_sum([(f, r.second) for f, r in parts])
    preds = [
        tf.concat([r.preds[i] for _, r in parts], axis=0) for i in range(len(flat_spec))
    ]
    y_pred = tree.pack_sequence_as(pred_spec, preds)
    loss = _weighted_sum([(f, r.loss) for f, r in parts])
    # The perturbed loss averages over the micro-batches that ran the pass.
    perturbed_loss = _weighted_sum(
        [(f * r.second, r.perturbed_loss) for f, r in parts]
    ) / tf.maximum(second, 1e-12)
    return grads, clean_grads, second, y_pred, loss, perturbed_loss


class _Passes(NamedTuple):
    """SAM on some micro-batches: mean perturbed gradients (None where a
    variable gets none), mean clean gradients, the share that ran the second
    pass, flat predictions, mean clean loss, mean perturbed loss over the
    micro-batches that ran it."""

    grads: list
    clean_grads: list
    second: tf.Tensor
    preds: list
    loss: tf.Tensor
    perturbed_loss: tf.Tensor


def _weighted_sum(terms):
    """sum of fraction * value over (fraction, value) pairs; None if none."""
    if not terms:
        return None
    return tf.add_n([v * tf.cast(f, v.dtype) for f, v in terms])


def _full_micro_batches(model, x, y, sample_weight, m, num_micro, flat_spec, pad):
    """SAM on the first `num_micro` micro-batches of `m`, one by one in a
    loop."""
    rows = num_micro + 1 if pad else num_micro

    def split(t):
        # [batch, ...] -> [rows, m, ...]: each micro-batch is then read with
        # a dynamic index but a static size, which XLA needs to keep shapes
        # static inside the loop. With a batch size unknown when traced, the
        # data gets m rows of padding (never read), so that XLA never meets
        # a loop body that reads from an empty array (a batch smaller than m).
        if t is None:
            return None
        if pad:
            t = tf.pad(t, [[0, m]] + [[0, 0]] * (t.shape.rank - 1))
        t = t[: rows * m]
        shape = tf.concat([[rows, m], tf.shape(t)[1:]], axis=0)
        micro = tf.reshape(t, shape)
        micro.set_shape(tf.TensorShape([None, m]).concatenate(t.shape[1:]))
        return micro

    x, y, sample_weight = tree.map_structure(split, (x, y, sample_weight))

    def take(structure, k):
        return tree.map_structure(lambda t: None if t is None else t[k], structure)

    trainable = model.trainable_variables
    gradient_is_none = []  # set while the body is traced

    def body(k, grad_sums, clean_sums, seconds, loss_sum, perturbed_sum, preds):
        grads, clean, second, y_pred, loss, perturbed_loss = _sam_gradients(
            model, take(x, k), take(y, k), take(sample_weight, k), PER_REPLICA
        )
        gradient_is_none[:] = [g is None for g in grads]
        grad_sums = [
            s if g is None else s + tf.convert_to_tensor(g)
            for s, g in zip(grad_sums, grads)
        ]
        clean_sums = [s + g for s, g in zip(clean_sums, clean)]
        preds = [
            ta.write(k, tf.cast(p, ta.dtype))
            for ta, p in zip(preds, tree.flatten(y_pred))
        ]
        second = tf.cast(second, tf.float32)
        loss_sum += tf.cast(loss, tf.float32)
        perturbed_sum += tf.cast(perturbed_loss, tf.float32) * second
        seconds += second
        return k + 1, grad_sums, clean_sums, seconds, loss_sum, perturbed_sum, preds

    initial = (
        tf.constant(0),
        [tf.zeros(v.shape, v.dtype) for v in trainable],
        [tf.zeros(v.shape, v.dtype) for v in trainable],
        tf.constant(0.0),
        tf.constant(0.0),
        tf.constant(0.0),
        [
            tf.TensorArray(s.dtype, size=num_micro, element_shape=s.shape)
            for s in flat_spec
        ],
    )
    _, grad_sums, clean_sums, seconds, loss_sum, perturbed_sum, pred_arrays = (
        tf.while_loop(lambda k, *_: k < num_micro, body, initial)
    )
    # Over zero micro-batches (a batch smaller than m) the sums are zeros,
    # and their weight is 0.
    count = tf.cast(tf.maximum(num_micro, 1), tf.float32)
    grads = [
        None if none else s / tf.cast(count, s.dtype)
        for s, none in zip(grad_sums, gradient_is_none)
    ]
    clean_grads = [s / tf.cast(count, s.dtype) for s in clean_sums]
    preds = [ta.concat() for ta in pred_arrays]
    return _Passes(
        grads,
        clean_grads,
        seconds / count,
        preds,
        loss_sum / count,
        perturbed_sum / tf.maximum(seconds, 1.0),
    )


def _partial_micro_batch(model, x, y, sample_weight, size, dynamic, flat_spec):
    """SAM on the last `size` < m examples. With a batch size unknown when
    traced, inside a `tf.cond` that runs it only where `size` > 0 (else
    zeros, and weight 0)."""
    trainable = model.trainable_variables
    gradient_is_none = []  # set while `run` is traced

    def run():
        grads, clean, second, y_pred, loss, perturbed_loss = _sam_gradients(
            model, x, y, sample_weight, PER_REPLICA
        )
        gradient_is_none[:] = [g is None for g in grads]
        grads = [
            tf.zeros(v.shape, v.dtype) if g is None else tf.convert_to_tensor(g)
            for g, v in zip(grads, trainable)
        ]
        preds = [tf.cast(p, s.dtype) for p, s in zip(tree.flatten(y_pred), flat_spec)]
        return (
            grads,
            list(clean),
            tf.cast(second, tf.float32),
            preds,
            tf.cast(loss, tf.float32),
            tf.cast(perturbed_loss, tf.float32),
        )

    def skip():
        grads = [tf.zeros(v.shape, v.dtype) for v in trainable]
        preds = [
            tf.zeros([size] + [d or 0 for d in s.shape[1:]], s.dtype) for s in flat_spec
        ]
        zero = tf.constant(0.0)
        return grads, list(grads), zero, preds, zero, zero

    grads, clean, second, preds, loss, perturbed_loss = (
        run() if not dynamic else tf.cond(size > 0, run, skip)
    )
    grads = [None if none else g for g, none in zip(grads, gradient_is_none)]
    return _Passes(grads, clean, second, preds, loss, perturbed_loss)


def _take_rows(structure, n):
    """`structure`'s tensors with a batch dimension of `n` (for shapes)."""
    return tree.map_structure(
        lambda t: (
            None if t is None else keras.KerasTensor((n,) + tuple(t.shape[1:]), t.dtype)
        ),
        structure,
    )


def _apply_masks(tensors, masks):
    return [
        t if m is None or t is None else tf.convert_to_tensor(t) * tf.cast(m, t.dtype)
        for t, m in zip(tensors, masks)
    ]


def _warn_if_xla_on_cpu(model):
    # Runs while tracing, so once per traced function.
    accelerators = tf.config.list_logical_devices(
        "GPU"
    ) + tf.config.list_logical_devices("TPU")
    if model.jit_compile and not accelerators:
        warnings.warn(
            "micro_batch_size with jit_compile=True on CPU: XLA runs the "
            "micro-batch loop body single-threaded and without its fast "
            "convolutions (about 50x slower for CNNs). Use jit_compile=False "
            "on CPU (Keras' 'auto' does).",
            stacklevel=2,
        )


def _loss(model, x, y, y_pred, sample_weight):
    return _compat.compute_loss(model, x, y, y_pred, sample_weight, training=True)


def _unscale(optimizer, grads):
    if not is_loss_scaled(optimizer):
        return grads
    scale = optimizer.dynamic_scale if optimizer.built else optimizer.initial_scale
    inverse = 1.0 / tf.cast(tf.convert_to_tensor(scale), tf.float32)
    return [g * tf.cast(inverse, g.dtype) for g in grads]


def _poison_unless(finite, grads):
    """`grads` where `finite`, else NaN: the loss-scale optimizer then skips
    the step and leaves weights and slots as they were."""
    factor = tf.where(finite, 1.0, float("nan"))
    return [_scale_gradient(g, factor) for g in grads]


def _scale_gradient(gradient, factor):
    if gradient is None:
        return None
    if isinstance(gradient, tf.IndexedSlices):
        values = gradient.values * tf.cast(factor, gradient.values.dtype)
        return tf.IndexedSlices(values, gradient.indices, gradient.dense_shape)
    return gradient * tf.cast(factor, gradient.dtype)


def _step(model):
    """The variant's step index (see `SAMModel._build_variant_state`)."""
    return model.variant_step


def _variant_state(model):
    return [v.value for v in model.variant_state or []]


def _needs_second_pass(model, eps_grads):
    """True, or a boolean tensor when the variant may skip the second pass."""
    variant = model.variant
    if variant is None or not variant.skips_second_pass:
        return True
    run = variant.needs_second_pass(_step(model), eps_grads, _variant_state(model))
    return True if run is True else tf.convert_to_tensor(run)


def _epsilon(model, eps_grads, weights, masks):
    # Like a learning-rate schedule, a rho schedule reads the optimizer's
    # iterations (so that `ProportionalRho` follows the learning rate).
    rho = schedules.rho_at(model.rho, model.optimizer.iterations)
    eps_grads = eps_gradients(model, eps_grads)
    variant = model.variant
    if variant is None:
        return model.perturbation(eps_grads, weights, rho)
    selection = variant_selection(model)
    eps_grads = _apply_masks(eps_grads, selection)
    eps = variant.perturbation(
        model.perturbation,
        eps_grads,
        weights,
        rho,
        _variant_state(model),
        _step(model),
        model.variant_seed,
    )
    return _apply_masks(eps, selection)


def _second_pass_if(run, second_pass, model, clean_grads, loss):
    """`second_pass()` where `run`, else the clean gradient scaled like a
    perturbed pass's: only the branch taken is computed."""

    def perturbed():
        grads, perturbed_loss = second_pass()
        return _dense(grads, clean_grads), perturbed_loss

    def clean():
        if not is_loss_scaled(model.optimizer):
            return list(clean_grads), tf.identity(loss)
        scale = _loss_scale(model.optimizer)
        return [g * tf.cast(scale, g.dtype) for g in clean_grads], tf.identity(loss)

    return tf.cond(run, perturbed, clean)


def _combine(model, clean_grads, grads, second):
    """The variant's direction from g and gs, on unscaled gradients summed
    over replicas; writes its state when both are finite."""
    variant = model.variant
    if variant is None or not variant.combines:
        return grads
    loss_scaled = is_loss_scaled(model.optimizer)
    count = replicas.num_replicas()
    scale = tf.cast(_loss_scale(model.optimizer), tf.float32)
    perturbed = _dense(grads, clean_grads)
    if loss_scaled:
        perturbed = [g / tf.cast(scale, g.dtype) for g in perturbed]
    clean = list(clean_grads)
    if count > 1:
        context = tf.distribute.get_replica_context()
        clean, perturbed = context.all_reduce(
            tf.distribute.ReduceOp.SUM, (clean, perturbed)
        )
    state = _variant_state(model)
    step = _step(model)
    finite = None
    if loss_scaled:
        finite = tf.reduce_all(
            [tf.reduce_all(tf.math.is_finite(t)) for t in clean + perturbed]
        )

    # Writes go inside each branch (the cheap one then writes nothing),
    # except under several replicas: a mirrored variable cannot be written
    # inside a `tf.cond` in replica context.
    write_in_branch = count == 1

    def combine(second_pass):
        d, new_state = variant.combine(clean, perturbed, state, step, second_pass)
        if write_in_branch:
            _write_state(model, state, new_state, finite)
            return d
        return d, new_state

    if second is True:
        result = combine(True)
    else:
        # Each branch computes its own side of the rule only.
        ran = tf.cast(second, tf.float32) > 0
        result = tf.cond(ran, lambda: combine(True), lambda: combine(False))
    if write_in_branch:
        d = result
    else:
        d, new_state = result
        _write_state(model, state, list(new_state), finite)
    if loss_scaled or count > 1:
        factor = scale / count
        d = [t * tf.cast(factor, t.dtype) for t in d]
    return [tf.cast(t, g.dtype) for t, g in zip(d, perturbed)]


def _write_state(model, old, new, finite):
    """Assigns the variant's new state (skipping values passed through
    unchanged), keeping the old one where `finite` is False."""
    for variable, before, after in zip(model.variant_state or [], old, new):
        if after is before:
            continue
        if finite is not None:
            after = tf.where(finite, after, before)
        variable.assign(tf.cast(after, variable.dtype))


def _loss_scale(optimizer):
    if not is_loss_scaled(optimizer):
        return tf.constant(1.0)
    scale = optimizer.dynamic_scale if optimizer.built else optimizer.initial_scale
    return tf.convert_to_tensor(scale)


def _dense(grads, like):
    """Dense gradients, zeros for None (`tf.cond` outputs cannot be None)."""
    return [
        tf.zeros_like(c) if g is None else tf.convert_to_tensor(g)
        for g, c in zip(grads, like)
    ]

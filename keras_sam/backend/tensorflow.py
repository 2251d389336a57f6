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
logged as ``perturbed_loss``.
"""

from __future__ import annotations

import warnings

import keras
import tensorflow as tf
from keras import tree


def train_step(model, data):
    """`SAMModel.train_step` for TensorFlow: returns the logs dict."""
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    if not model.built:
        # Create the variables before snapshotting state (Keras' own step
        # builds lazily inside its first forward pass).
        _output_spec(model, x)
    if model.micro_batch_size is None:
        grads, y_pred, loss, perturbed_loss = _sam_gradients(model, x, y, sample_weight)
    else:
        grads, y_pred, loss, perturbed_loss = _micro_batch_sam_gradients(
            model, x, y, sample_weight
        )
    batch_size = tf.shape(_first_tensor(x))[0]
    model._loss_tracker.update_state(
        _unscale_for_replicas(loss), sample_weight=batch_size
    )
    model.perturbed_loss_tracker.update_state(
        _unscale_for_replicas(perturbed_loss), sample_weight=batch_size
    )
    model.optimizer.apply_gradients(zip(grads, model.trainable_variables))
    logs = model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
    logs["perturbed_loss"] = model.perturbed_loss_tracker.result()
    return logs


def _sam_gradients(model, x, y, sample_weight):
    """SAM gradient on one batch: (perturbed grads, clean y_pred, clean loss,
    perturbed loss). Applies the clean pass's state updates."""
    trainable = model.trainable_variables
    state_variables = model.non_trainable_variables
    state = [tf.identity(v.value) for v in state_variables]

    with tf.GradientTape() as tape:
        y_pred = _forward(model, x)
        loss = _loss(model, x, y, y_pred, sample_weight)
        scaled_loss = model.optimizer.scale_loss(loss)
    clean_grads = tape.gradient(
        scaled_loss, trainable, unconnected_gradients=tf.UnconnectedGradients.ZERO
    )
    clean_grads = _unscale(
        model.optimizer, [tf.convert_to_tensor(g) for g in clean_grads]
    )
    masks = _masks(trainable)
    clean_grads = _apply_masks(clean_grads, masks)

    weights = [tf.identity(v.value) for v in trainable]
    eps = _apply_masks(model.perturbation(clean_grads, weights, model.rho), masks)
    perturbed_weights = [w + tf.cast(e, w.dtype) for w, e in zip(weights, eps)]

    with tf.GradientTape() as tape:
        tape.watch(perturbed_weights)
        mapping = list(zip(trainable, perturbed_weights))
        mapping += list(zip(state_variables, state))
        with keras.StatelessScope(state_mapping=mapping, collect_losses=True):
            perturbed_pred = _forward(model, x)
            perturbed_loss = _loss(model, x, y, perturbed_pred, sample_weight)
            scaled_perturbed_loss = model.optimizer.scale_loss(perturbed_loss)
    grads = _apply_masks(tape.gradient(scaled_perturbed_loss, perturbed_weights), masks)

    if _is_loss_scaled(model.optimizer):
        # A non-finite first gradient must skip the step even where the
        # perturbed pass happens to come out finite: poison the second one.
        finite = tf.reduce_all(
            [tf.reduce_all(tf.math.is_finite(g)) for g in clean_grads]
        )
        factor = tf.where(finite, 1.0, float("nan"))
        grads = [_scale_gradient(g, factor) for g in grads]
    return grads, y_pred, loss, perturbed_loss


def _micro_batch_sam_gradients(model, x, y, sample_weight):
    """m-sharpness: each micro-batch gets its own eps; gradients are averaged.

    The micro-batches run one after another in a `tf.while_loop` (the graph
    holds one copy of the step whatever their number); each clean pass updates
    the state as calling the model on that micro-batch would.
    """
    m = model.micro_batch_size
    _warn_if_xla_on_cpu(model)
    message = (
        f"micro_batch_size={m} must divide the batch size. Batch the data with "
        "drop_remainder=True, or use a batch size that is a multiple of "
        "micro_batch_size."
    )
    static_size = _first_tensor(x).shape[0]
    if static_size is not None and static_size % m:
        raise ValueError(f"{message} Got a batch of {static_size}.")
    batch_size = tf.shape(_first_tensor(x))[0]
    check = tf.debugging.assert_equal(batch_size % m, 0, message=message)
    with tf.control_dependencies([check]):
        num_micro = batch_size // m

    def split(t):
        # [batch, ...] -> [num_micro, m, ...]: each micro-batch is then read
        # with a dynamic index but a static size, which XLA needs to keep
        # shapes static inside the loop.
        if t is None:
            return None
        shape = tf.concat([[num_micro, m], tf.shape(t)[1:]], axis=0)
        micro = tf.reshape(t, shape)
        micro.set_shape(tf.TensorShape([None, m]).concatenate(t.shape[1:]))
        return micro

    x, y, sample_weight = tree.map_structure(split, (x, y, sample_weight))

    def take(structure, k):
        return tree.map_structure(lambda t: None if t is None else t[k], structure)

    pred_spec = _output_spec(model, take(x, 0))
    trainable = model.trainable_variables
    gradient_is_none = []  # set while the body is traced

    def body(k, grad_sums, loss_sum, perturbed_sum, pred_arrays):
        grads, y_pred, loss, perturbed_loss = _sam_gradients(
            model, take(x, k), take(y, k), take(sample_weight, k)
        )
        gradient_is_none[:] = [g is None for g in grads]
        grad_sums = [
            s if g is None else s + tf.convert_to_tensor(g)
            for s, g in zip(grad_sums, grads)
        ]
        pred_arrays = [
            ta.write(k, tf.cast(p, ta.dtype))
            for ta, p in zip(pred_arrays, tree.flatten(y_pred))
        ]
        loss_sum += tf.cast(loss, tf.float32)
        perturbed_sum += tf.cast(perturbed_loss, tf.float32)
        return k + 1, grad_sums, loss_sum, perturbed_sum, pred_arrays

    initial = (
        tf.constant(0),
        [tf.zeros(v.shape, v.dtype) for v in trainable],
        tf.constant(0.0),
        tf.constant(0.0),
        [tf.TensorArray(s.dtype, size=num_micro) for s in tree.flatten(pred_spec)],
    )
    _, grad_sums, loss_sum, perturbed_sum, pred_arrays = tf.while_loop(
        lambda k, *_: k < num_micro, body, initial
    )
    count = tf.cast(num_micro, tf.float32)
    grads = [
        None if none else s / tf.cast(count, s.dtype)
        for s, none in zip(grad_sums, gradient_is_none)
    ]
    y_pred = tree.pack_sequence_as(pred_spec, [ta.concat() for ta in pred_arrays])
    return grads, y_pred, loss_sum / count, perturbed_sum / count


def _masks(variables):
    """Per-variable 0/1 masks (None where unmasked): see the module docstring."""
    return [getattr(getattr(v, "constraint", None), "mask", None) for v in variables]


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


def _forward(model, x):
    if getattr(model, "_call_has_training_arg", True):
        return model(x, training=True)
    return model(x)


def _loss(model, x, y, y_pred, sample_weight):
    # `_compute_loss` is Keras' dispatcher that copes with user overrides of
    # `compute_loss` with or without a `training` argument.
    return model._compute_loss(
        x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
    )


def _output_spec(model, x):
    symbolic = tree.map_structure(
        lambda t: None if t is None else keras.KerasTensor(t.shape, t.dtype), x
    )
    if getattr(model, "_call_has_training_arg", True):
        return model.compute_output_spec(symbolic, training=True)
    return model.compute_output_spec(symbolic)


def _first_tensor(structure):
    return next(t for t in tree.flatten(structure) if t is not None)


def _unscale_for_replicas(value):
    # Keras divides each replica's loss by the replica count; undo it for logs.
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return value * tf.cast(replicas, value.dtype) if replicas > 1 else value


def _is_loss_scaled(optimizer):
    return isinstance(optimizer, keras.optimizers.LossScaleOptimizer)


def _unscale(optimizer, grads):
    if not _is_loss_scaled(optimizer):
        return grads
    scale = optimizer.dynamic_scale if optimizer.built else optimizer.initial_scale
    inverse = 1.0 / tf.cast(tf.convert_to_tensor(scale), tf.float32)
    return [g * tf.cast(inverse, g.dtype) for g in grads]


def _scale_gradient(gradient, factor):
    if gradient is None:
        return None
    if isinstance(gradient, tf.IndexedSlices):
        values = gradient.values * tf.cast(factor, gradient.values.dtype)
        return tf.IndexedSlices(values, gradient.indices, gradient.dense_shape)
    return gradient * tf.cast(factor, gradient.dtype)

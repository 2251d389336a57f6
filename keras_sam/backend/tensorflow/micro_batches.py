"""The micro-batch loop of the TensorFlow SAM step (m-sharpness)."""

from __future__ import annotations

import warnings

import keras
import tensorflow as tf
from keras import tree

from keras_sam import sam_step
from keras_sam.backend._common import first_tensor, output_spec


def run(model, fn, data):
    """A batch of n runs as floor(n/m) micro-batches of m, one after
    another in a `tf.while_loop` (the graph holds one copy of the step
    whatever their number), then one of n mod m if that is not 0. Under a
    strategy each micro-batch's eps comes from its own replica's
    gradient: with aligned shards this equals single-device micro-batch
    SAM on the global batch, with no all-reduce inside the loop."""
    m = model.micro_batch_size
    _warn_if_xla_on_cpu(model)
    first = first_tensor(data[0])
    static_size, batch_size = first.shape[0], tf.shape(first)[0]
    num_full = batch_size // m
    full_size = num_full * m
    pred_spec = output_spec(model, _take_rows(data[0], m))
    flat_spec = tree.flatten(pred_spec)
    zeros = _zero_terms(model)
    # Where the batch size is known when traced (eager, `train_on_batch`,
    # `drop_remainder`) only the passes that run are traced; else both,
    # and the partial one runs under a `tf.cond`.
    parts = []  # (fraction of the batch, terms, flat predictions)
    total = tf.cast(batch_size, tf.float32)
    if static_size is None or static_size >= m:
        terms, preds = _full_micro_batches(
            fn, data, m, num_full, flat_spec, zeros, pad=static_size is None
        )
        parts.append((tf.cast(full_size, tf.float32) / total, terms, preds))
    if static_size is None or static_size % m:
        tail = tree.map_structure(lambda t: None if t is None else t[full_size:], data)
        size = batch_size - full_size

        def run():
            terms, y_pred = fn(*tail)
            flat = tree.flatten(y_pred)
            return terms, [tf.cast(p, s.dtype) for p, s in zip(flat, flat_spec)]

        def skip():
            shapes = [[size] + [d or 0 for d in s.shape[1:]] for s in flat_spec]
            return zeros, [tf.zeros(h, s.dtype) for h, s in zip(shapes, flat_spec)]

        terms, preds = tf.cond(size > 0, run, skip) if static_size is None else run()
        parts.append((tf.cast(size, tf.float32) / total, terms, preds))
    terms = tree.map_structure(
        lambda *values: tf.add_n(
            [v * tf.cast(f, v.dtype) for (f, _, _), v in zip(parts, values)]
        ),
        *[p[1] for p in parts],
    )
    preds = [tf.concat(pieces, axis=0) for pieces in zip(*[p[2] for p in parts])]
    return terms, tree.pack_sequence_as(pred_spec, preds)


def _full_micro_batches(fn, data, m, num_micro, flat_spec, zeros, pad):
    """`fn` on the first `num_micro` micro-batches of `m`, one by one in a
    loop: (mean terms, flat predictions)."""
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
        micro = tf.reshape(t, tf.concat([[rows, m], tf.shape(t)[1:]], axis=0))
        micro.set_shape(tf.TensorShape([None, m]).concatenate(t.shape[1:]))
        return micro

    data = tree.map_structure(split, data)

    def body(k, sums, preds):
        batch = tree.map_structure(lambda t: None if t is None else t[k], data)
        terms, y_pred = fn(*batch)
        sums = tree.map_structure(lambda s, t: s + tf.cast(t, s.dtype), sums, terms)
        flat = tree.flatten(y_pred)
        preds = [ta.write(k, tf.cast(p, ta.dtype)) for ta, p in zip(preds, flat)]
        return k + 1, sums, preds

    arrays = [
        tf.TensorArray(s.dtype, size=num_micro, element_shape=s.shape)
        for s in flat_spec
    ]
    _, sums, arrays = tf.while_loop(
        lambda k, *_: k < num_micro, body, (tf.constant(0), zeros, arrays)
    )
    # Over zero micro-batches (a batch smaller than m) the sums are zeros,
    # and their weight is 0.
    count = tf.cast(tf.maximum(num_micro, 1), tf.float32)
    means = tree.map_structure(lambda s: s / tf.cast(count, s.dtype), sums)
    return means, [ta.concat() for ta in arrays]


def _zero_terms(model):
    zeros = [tf.zeros(v.shape, v.dtype) for v in model.trainable_variables]
    zero = tf.constant(0.0)
    return sam_step.Terms(zeros, list(zeros), zero, zero, zero)


def _take_rows(structure, n):
    """`structure`'s tensors with a batch dimension of `n` (for shapes)."""
    return tree.map_structure(
        lambda t: (
            None if t is None else keras.KerasTensor((n,) + tuple(t.shape[1:]), t.dtype)
        ),
        structure,
    )


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

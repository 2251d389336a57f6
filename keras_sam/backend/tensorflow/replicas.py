"""`tf.distribute` helpers for the TensorFlow SAM step (replica context only).

Keras divides each replica's loss, regularizers included, by the number of
replicas R, and the optimizer sums the replicas' gradients. So a replica's
gradient is g_r / R, where g_r is the gradient of its own mean loss.
"""

from __future__ import annotations

import tensorflow as tf

from keras_sam import _compat
from keras_sam.backend import SYNCHRONIZED


def num_replicas() -> int:
    return tf.distribute.get_strategy().num_replicas_in_sync


def unscale_for_replicas(value):
    """Undoes Keras' 1/R loss scaling, for logging."""
    replicas = num_replicas()
    return value * tf.cast(replicas, value.dtype) if replicas > 1 else value


def gradients_for_eps(grads, mode: str):
    """The gradient that eps is formed from, given each replica's g_r / R.

    synchronized: sum over replicas = the mean gradient of the global batch,
    the same on every replica (single-device SAM on the global batch).
    per_replica: R * (g_r / R) = g_r, the replica's own batch gradient
    (m-sharpness with m = per-replica batch).
    """
    replicas = num_replicas()
    if replicas == 1:
        return grads
    if mode == SYNCHRONIZED:
        return tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, grads
        )
    return [g * tf.cast(replicas, g.dtype) for g in grads]


def all_replicas_finite(tensors) -> tf.Tensor:
    """True when every tensor on every replica is finite.

    Under `MirroredStrategy`, Keras' `LossScaleOptimizer` inspects only the
    first replica's gradients; sharing the flag lets every replica skip.
    """
    tensors = [t.values if isinstance(t, tf.IndexedSlices) else t for t in tensors]
    bad = tf.add_n(
        [tf.reduce_sum(tf.cast(~tf.math.is_finite(t), tf.float32)) for t in tensors]
    )
    if num_replicas() > 1:
        bad = tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, bad
        )
    return tf.equal(bad, 0.0)


def local_first_batch(strategy, iterator):
    """The first batch of a Keras epoch iterator, as this worker's first
    replica sees it.

    Keras' `_maybe_symbolic_build` reduces a distributed batch across
    replicas, which fails under `MultiWorkerMirroredStrategy`
    (keras-team/keras#20585); building needs shapes only.
    """
    for _, _, batches in iterator:
        batch = next(batches)
        return tf.nest.map_structure(
            lambda v: strategy.experimental_local_results(v)[0], batch
        )
    return None


def is_multi_worker(strategy=None) -> bool:
    return _compat.in_multi_worker_mode(strategy or tf.distribute.get_strategy())


def logs_for_reduction(logs):
    """Keras reduces multi-worker logs with `reduce("MEAN", v, axis=0)`, which
    fails on scalars; give each value a leading axis of 1."""
    if not is_multi_worker():
        return logs
    return {k: tf.reshape(v, [1]) for k, v in logs.items()}

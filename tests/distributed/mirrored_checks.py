"""Runs SAMModel under MirroredStrategy on 2 logical CPUs and prints, as JSON,
the largest deviation of each case from its independent reference.

A separate process: logical devices must be configured before TensorFlow
starts its runtime. Used by tests/test_distribute.py.
"""

import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import tensorflow as tf  # noqa: E402

from tests.distributed.two_cpus import STRATEGY  # noqa: E402

# isort: split
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_sam  # noqa: E402
from tests import reference  # noqa: E402
from tests.models import mlp  # noqa: E402

LR, RHO, STEPS, BATCH = 0.1, 0.2, 3, 32
rng = np.random.default_rng(0)
X = rng.normal(size=(BATCH * STEPS, 5)).astype("float32")
Y = rng.normal(size=(BATCH * STEPS, 1)).astype("float32")


def numpy_sam(params, rule, groups):
    """STEPS of SGD with the mean over `groups(batch)` of SAM gradients."""
    for step in range(STEPS):
        xb, yb = (
            X[step * BATCH : (step + 1) * BATCH],
            Y[step * BATCH : (step + 1) * BATCH],
        )
        pieces = [
            reference.sam_gradient(rule, params, xb[s], yb[s], RHO)[2] for s in groups
        ]
        grads = [np.mean([p[i] for p in pieces], axis=0) for i in range(len(params))]
        params = [p - LR * g for p, g in zip(params, grads)]
    return params


def slices(size):
    return [slice(k, k + size) for k in range(0, BATCH, size)]


def train(model, jit):
    model.compile(keras.optimizers.SGD(LR), loss="mse", jit_compile=jit)
    history = model.fit(X, Y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    return [v.numpy().astype(np.float64) for v in model.trainable_variables], history


def deviation(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


def mlp_case(rule, mode, micro, jit):
    with STRATEGY.scope():
        model = mlp(
            rho=RHO, perturbation=rule, replica_eps=mode, micro_batch_size=micro
        )
    start = [v.numpy().astype(np.float64) for v in model.trainable_variables]
    weights, history = train(model, jit)
    if micro:
        groups = slices(micro)
    elif mode == "synchronized":
        groups = [slice(0, BATCH)]
    else:
        groups = slices(BATCH // 2)  # one group per replica
    expected = numpy_sam(start, rule, groups)
    return {
        "deviation": deviation(weights, expected),
        "eps_batch_size": model.eps_batch_size,
        "moved": deviation(weights, start),
    }


def bn_model(mode):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5,))
    h = keras.layers.Dense(8)(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Activation("tanh")(h)
    outputs = keras.layers.Dense(1)(h)
    return keras_sam.SAMModel(inputs, outputs, rho=RHO, replica_eps=mode)


def batch_norm_case(mode, jit):
    """Batch norm normalizes with each replica's own statistics; the reference
    is computed by hand on one device, shard by shard."""
    with STRATEGY.scope():
        model = bn_model(mode)
    reference_model = bn_model(mode)
    weights, _ = train(model, jit)
    variables = reference_model.trainable_variables
    for step in range(STEPS):
        shards = [
            slice(step * BATCH + k, step * BATCH + k + BATCH // 2)
            for k in (0, BATCH // 2)
        ]

        def shard_grads(values, shard):
            mapping = list(zip(variables, values))
            mapping += [(v, v.value) for v in reference_model.non_trainable_variables]
            with tf.GradientTape() as tape:
                tape.watch(values)
                with keras.StatelessScope(state_mapping=mapping):
                    pred = reference_model(X[shard], training=True)
                    loss = tf.reduce_mean(tf.square(pred - Y[shard]))
            return tape.gradient(loss, values)

        values = [tf.convert_to_tensor(v) for v in variables]
        clean = [shard_grads(values, s) for s in shards]
        rule = keras_sam.perturbations.SAM()
        if mode == "synchronized":
            mean = [(a + b) / 2 for a, b in zip(*clean)]
            eps_list = [rule(mean, values, RHO)] * 2
        else:
            eps_list = [rule(g, values, RHO) for g in clean]
        perturbed = [
            shard_grads([w + e for w, e in zip(values, eps)], s)
            for eps, s in zip(eps_list, shards)
        ]
        for v, a, b in zip(variables, *perturbed):
            v.assign(v - LR * (a + b) / 2)
    expected = [v.numpy().astype(np.float64) for v in variables]
    return {"deviation": deviation(weights, expected)}


def synchronized_batch_norm_case(jit):
    """With `BatchNormalization(synchronized=True)` the statistics are those of
    the global batch, so synchronized SAM equals single-device SAM."""

    def build():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((5,))
        h = keras.layers.Dense(8)(inputs)
        h = keras.layers.BatchNormalization(synchronized=True)(h)
        outputs = keras.layers.Dense(1)(keras.layers.Activation("tanh")(h))
        return keras_sam.SAMModel(inputs, outputs, rho=RHO)

    with STRATEGY.scope():
        distributed = build()
    weights, _ = train(distributed, jit)
    single = build()
    expected, _ = train(single, jit=False)
    statistics = [v.numpy() for v in distributed.non_trainable_weights]
    reference_statistics = [v.numpy() for v in single.non_trainable_weights]
    return {
        "deviation": deviation(weights, expected),
        "statistics_deviation": deviation(statistics, reference_statistics),
    }


def sparse_case(mode):
    """Random masks at 50%: under 2 replicas, masked SAM equals the masked
    single-device run (synchronized) and pruned weights stay exactly zero."""
    from keras_sam import sparsity

    def build():
        model = mlp(rho=RHO, hidden=16, replica_eps=mode)
        sparsity.prune_at_init(model, 0.5, method="random", seed=3)
        return model

    with STRATEGY.scope():
        distributed = build()
    weights, _ = train(distributed, jit=False)
    masks = [
        None
        if getattr(v.constraint, "mask", None) is None
        else v.constraint.mask.numpy()
        for v in distributed.trainable_variables
    ]
    pruned = [w[m == 0] for w, m in zip(weights, masks) if m is not None]
    result = {
        "pruned_max_abs": max(float(np.max(np.abs(p), initial=0.0)) for p in pruned),
        "num_pruned": int(sum(p.size for p in pruned)),
    }
    if mode == "synchronized":
        single, _ = train(build(), jit=False)
        result["deviation"] = deviation(weights, single)
    return result


class Interrupt(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 2:
            raise RuntimeError("interrupted")


def backup_and_restore_case(directory):
    """An interrupted fit resumes from the backup and ends where an
    uninterrupted one does."""

    def fit(callbacks, epochs=4):
        with STRATEGY.scope():
            model = mlp(rho=RHO)
            model.compile(keras.optimizers.SGD(LR, momentum=0.9), loss="mse")
        model.fit(
            X,
            Y,
            batch_size=BATCH,
            epochs=epochs,
            shuffle=False,
            verbose=0,
            callbacks=callbacks,
        )
        return [v.numpy() for v in model.trainable_variables]

    straight = fit([])
    backup = keras.callbacks.BackupAndRestore(directory)
    try:
        fit([backup, Interrupt()])
    except RuntimeError:
        pass
    resumed = fit([keras.callbacks.BackupAndRestore(directory)])
    return {"deviation": deviation(resumed, straight)}


def mixed_precision_case():
    """A shard that overflows on replica 1 only must skip the step everywhere."""
    keras.config.set_dtype_policy("mixed_float16")
    try:
        with STRATEGY.scope():
            model = mlp(rho=RHO)
            model.compile(keras.optimizers.SGD(LR, momentum=0.9), loss="mse")
        start = [v.numpy() for v in model.trainable_variables]
        x = X[:BATCH].copy()
        x[BATCH // 2 :] *= 1e6
        model.fit(x, Y[:BATCH], batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
        weights = [v.numpy() for v in model.trainable_variables]
        return {
            "deviation": deviation(weights, start),
            "scale": float(model.optimizer.dynamic_scale.numpy()),
        }
    finally:
        keras.config.set_dtype_policy("float32")


def main():
    results = {}
    # Each rule and each mode with and without XLA, in pairs (not all 8
    # combinations: each one traces a replicated step, seconds apiece).
    for rule, mode, jit in (
        ("sam", "synchronized", False),
        ("sam", "per_replica", True),
        ("usam", "synchronized", True),
        ("usam", "per_replica", False),
    ):
        results[f"mlp-{rule}-{mode}-jit{int(jit)}"] = mlp_case(rule, mode, None, jit)
    for mode, jit in (("synchronized", True), ("per_replica", False)):
        results[f"mlp-micro8-{mode}"] = mlp_case("sam", mode, 8, False)
        results[f"bn-{mode}-jit{int(jit)}"] = batch_norm_case(mode, jit)
    # Synchronized batch norm all-reduces inside the forward pass, which cannot
    # run inside the per-replica XLA functions (see docs/distributed.md).
    results["sync-bn"] = synchronized_batch_norm_case(jit=False)
    for mode in ("synchronized", "per_replica"):
        results[f"sparse-{mode}"] = sparse_case(mode)
    results["mixed-float16-skip"] = mixed_precision_case()
    with tempfile.TemporaryDirectory() as directory:
        results["backup-and-restore"] = backup_and_restore_case(directory)
    return results


if __name__ == "__main__":
    print("RESULTS " + json.dumps(main()))

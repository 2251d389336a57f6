"""SAM under MirroredStrategy, side by side in one run; prints ratios.

On 2 logical CPU devices (set before TensorFlow starts) it times, per global
batch of 256 on a 784-512-512-10 MLP:

- SGD and SAM on the default strategy (1 replica);
- SGD, SAM with ``replica_eps="per_replica"`` and SAM with
  ``replica_eps="synchronized"`` (one extra all-reduce) on 2 replicas.

It prints the synchronized / per-replica ratio (target <= 1.05x) and the SAM /
SGD ratio under the strategy. Two logical devices share the same 2 cores, so
1- vs 2-replica throughput says nothing about scaling, only about overhead.

    python benchmarks/distributed.py [--steps 40] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration()] * 2
)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_sam  # noqa: E402

BATCH = 256


def build(variant):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((784,))
    h = keras.layers.Dense(512, activation="relu")(inputs)
    h = keras.layers.Dense(512, activation="relu")(h)
    outputs = keras.layers.Dense(10)(h)
    if variant == "sgd":
        model = keras.Model(inputs, outputs)
    else:
        model = keras_sam.SAMModel(inputs, outputs, rho=0.05, replica_eps=variant)
    model.compile(
        keras.optimizers.SGD(0.01, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        # steps_per_execution > 1 fails under MirroredStrategy in Keras 3.15,
        # for plain models too ("You must feed a value for placeholder").
    )
    return model


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH * 4, 784)).astype("float32")
    y = rng.integers(0, 10, size=(BATCH * 4,))
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).cache().repeat()

    mirrored = tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])
    setups = {}
    for variant in ("sgd", "synchronized"):
        setups[f"1 replica, {variant}"] = build(variant)
    for variant in ("sgd", "per_replica", "synchronized"):
        with mirrored.scope():
            setups[f"2 replicas, {variant}"] = build(variant)
    for model in setups.values():
        model.fit(data, epochs=1, steps_per_epoch=10, verbose=0)  # trace
    times = {name: [] for name in setups}
    for _ in range(args.rounds):
        for name, model in setups.items():
            start = time.perf_counter()
            model.fit(data, epochs=1, steps_per_epoch=args.steps, verbose=0)
            times[name].append((time.perf_counter() - start) / args.steps)
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"# 2 logical CPU devices on {os.cpu_count()} cores, global batch {BATCH}")
    for name, seconds in median.items():
        print(f"{name:<26} {1e3 * seconds:8.2f} ms/step")
    print(
        "synchronized / per_replica (2 replicas): "
        f"{median['2 replicas, synchronized'] / median['2 replicas, per_replica']:.3f}x"
    )
    for replicas in ("1 replica", "2 replicas"):
        ratio = median[f"{replicas}, synchronized"] / median[f"{replicas}, sgd"]
        print(f"SAM / SGD, {replicas}: {ratio:.2f}x")


if __name__ == "__main__":
    main()

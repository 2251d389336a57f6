"""SAM with tf.distribute on the synthetic teacher-student workload.

One machine, all its GPUs (or N logical CPU devices to try it on a laptop):

    python examples/distributed.py --strategy mirrored [--logical-cpus 2]

Several hosts: start the same command on every host with TF_CONFIG set
(https://www.tensorflow.org/guide/distributed_training#TF_CONFIG):

    TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]},
                "task": {"type": "worker", "index": 0}}' \\
        python examples/distributed.py --strategy multi_worker --backup-dir /tmp/bk

TPU: --strategy tpu (untested here; same code path as the others).

--replica-eps synchronized (default) trains exactly like one device on the
global batch; per_replica gives each replica its own eps (m-sharpness with m =
per-replica batch, as in the paper's code); model.eps_batch_size is m.
"""

from __future__ import annotations

import argparse
import os


def make_strategy(name: str, logical_cpus: int):
    import tensorflow as tf

    if name == "mirrored":
        if logical_cpus and not tf.config.list_physical_devices("GPU"):
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus
            )
            devices = [f"CPU:{i}" for i in range(logical_cpus)]
            return tf.distribute.MirroredStrategy(devices)
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    return tf.distribute.get_strategy()


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--strategy",
        choices=["default", "mirrored", "multi_worker", "tpu"],
        default="mirrored",
    )
    parser.add_argument("--logical-cpus", type=int, default=2)
    parser.add_argument(
        "--replica-eps", choices=["synchronized", "per_replica"], default="synchronized"
    )
    parser.add_argument("--micro-batch-size", type=int)
    parser.add_argument("--rho", type=float, default=0.05)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128, help="global batch")
    parser.add_argument("--num-train", type=int, default=4096)
    parser.add_argument("--backup-dir", help="BackupAndRestore directory")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    strategy = make_strategy(args.strategy, args.logical_cpus)
    import json

    import keras

    import keras_sam
    from keras_sam.study.workloads import student, teacher_student

    (x, y), (x_test, y_test) = teacher_student(num_train=args.num_train, num_test=1024)
    with strategy.scope():
        model = keras_sam.sam(
            student(args.hidden, seed=0),
            rho=args.rho,
            replica_eps=args.replica_eps,
            micro_batch_size=args.micro_batch_size,
        )
        model.compile(keras.optimizers.SGD(0.01, momentum=0.9), loss="mse")
    callbacks = []
    if args.backup_dir:
        # One directory per worker: workers sharing one fail on its file lock.
        task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {})
        directory = os.path.join(args.backup_dir, f"worker_{task.get('index', 0)}")
        callbacks.append(keras.callbacks.BackupAndRestore(directory))
    history = model.fit(
        x,
        y,
        batch_size=args.batch_size,
        epochs=args.epochs,
        verbose=2,
        callbacks=callbacks,
    )
    test_loss = model.evaluate(x_test, y_test, verbose=0)
    print(
        f"{strategy.num_replicas_in_sync} replica(s), eps_batch_size "
        f"{model.eps_batch_size}, test loss {test_loss:.4f}"
    )
    return history.history


if __name__ == "__main__":
    main()

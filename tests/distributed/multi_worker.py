"""One worker of a 2-worker MultiWorkerMirroredStrategy SAM run.

    TF_CONFIG=... python multi_worker.py OUT_DIR [--epochs N] [--backup DIR]
        [--die-after-epoch K]

Trains the MLP of tests/test_sam_model.py with SAM on fixed data and writes
its final weights to OUT_DIR/worker_<index>.npz. With --die-after-epoch the
process kills itself (os._exit, no cleanup) after that epoch, as a crashed
worker would.
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tests.models import mlp  # noqa: E402

BATCH, STEPS_PER_EPOCH = 32, 3


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH * STEPS_PER_EPOCH, 5)).astype("float32")
    y = rng.normal(size=(BATCH * STEPS_PER_EPOCH, 1)).astype("float32")
    return x, y


class RecordEpochs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


class DieAfterEpoch(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            os._exit(17)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--backup")
    parser.add_argument("--die-after-epoch", type=int)
    parser.add_argument("--replica-eps", default="synchronized")
    args = parser.parse_args()
    keras.config.disable_traceback_filtering()
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = mlp(rho=0.2, replica_eps=args.replica_eps)
        model.compile(keras.optimizers.SGD(0.1), loss="mse")
    record = RecordEpochs()
    callbacks = [record]
    if args.backup:
        # One directory per worker: a shared one fails on the HDF5 file lock.
        backup = os.path.join(args.backup, f"worker_{index}")
        callbacks.append(keras.callbacks.BackupAndRestore(backup))
    if args.die_after_epoch is not None and index == 1:
        callbacks.append(DieAfterEpoch(args.die_after_epoch))
    x, y = data()
    model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=args.epochs,
        shuffle=False,
        verbose=0,
        callbacks=callbacks,
    )
    weights = [v.numpy() for v in model.trainable_variables]
    np.savez(os.path.join(args.out, f"worker_{index}.npz"), *weights)
    with open(os.path.join(args.out, f"worker_{index}.json"), "w") as f:
        json.dump({"epochs_run": record.epochs}, f)


if __name__ == "__main__":
    main()

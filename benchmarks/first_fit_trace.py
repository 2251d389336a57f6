"""TensorFlow: the first `fit` of a `SAMModel`, with its optimizer built
before the step is traced (keras-sam's path) and inside the first trace
(Keras's path without a tf.distribute strategy, which traces the step twice
when the optimizer has state). Fresh models, the two paths alternating in one
process; process CPU time of a one-epoch `fit` on 8 batches, and how many
times the step was traced.

    KERAS_BACKEND=tensorflow python benchmarks/first_fit_trace.py --rounds 3
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_sam  # noqa: E402
from keras_sam.backend import tensorflow as tensorflow_backend  # noqa: E402
from keras_sam.backend.tensorflow import trainer  # noqa: E402

BUILD_FIRST = trainer.build_optimizer_before_tracing


def _mlp():
    inputs = keras.Input((784,))
    h = keras.layers.Dense(512, activation="relu")(inputs)
    h = keras.layers.Dense(512, activation="relu")(h)
    return keras.Model(inputs, keras.layers.Dense(10)(h)), (784,)


def _cnn():
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(16, 3, padding="same")(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Activation("relu")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(10)(h)), (28, 28, 1)


MODELS = {"mlp": _mlp, "cnn": _cnn}
OPTIMIZERS = {
    "adam": lambda: keras.optimizers.Adam(1e-3),
    "sgd_momentum": lambda: keras.optimizers.SGD(0.05, momentum=0.9),
}


def first_fit(model_name, optimizer_name, built_first):
    trainer.build_optimizer_before_tracing = BUILD_FIRST if built_first else _keep
    traces = []
    step = tensorflow_backend.train_step
    tensorflow_backend.train_step = lambda *a: traces.append(1) or step(*a)
    try:
        base, shape = MODELS[model_name]()
        model = keras_sam.sam(base, rho=0.05)
        model.compile(
            OPTIMIZERS[optimizer_name](),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        rng = np.random.default_rng(0)
        x = rng.normal(size=(256, *shape)).astype("float32")
        y = rng.integers(0, 10, 256)
        start = time.process_time()
        model.fit(x, y, batch_size=32, epochs=1, verbose=0)
        return time.process_time() - start, len(traces)
    finally:
        tensorflow_backend.train_step = step
        trainer.build_optimizer_before_tracing = BUILD_FIRST


def _keep(model):
    """Keras's path: the optimizer left to the first trace."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"load {os.getloadavg()[0]:.2f}")
    for model_name in MODELS:
        for optimizer_name in OPTIMIZERS:
            times = {True: [], False: []}
            traces = {}
            for _ in range(args.rounds):
                for built_first in (False, True):
                    seconds, count = first_fit(model_name, optimizer_name, built_first)
                    times[built_first].append(seconds)
                    traces[built_first] = count
            keras_path, ours = np.median(times[False]), np.median(times[True])
            print(
                f"{model_name:4s} {optimizer_name:12s} Keras's path {keras_path:.2f} s "
                f"({traces[False]} traces), built first {ours:.2f} s "
                f"({traces[True]}): {ours / keras_path:.2f}x"
            )
    print(f"load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

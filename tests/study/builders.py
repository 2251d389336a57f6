"""The data and the small CNN of the `keras_sam.study.compare` tests."""

import keras
import numpy as np


def compare_data(n=96):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 6, 6, 1)).astype("float32")
    y = (x.reshape(n, -1)[:, :3].sum(1) > 0).astype("int64")
    return (x[:64], y[:64]), (x[64:], y[64:])


def compare_model(compiled=True):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((6, 6, 1))
    h = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Dropout(0.2)(keras.layers.Flatten()(h))
    model = keras.Model(inputs, keras.layers.Dense(2)(h))
    if compiled:
        model.compile(
            keras.optimizers.SGD(0.05, momentum=0.9),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
    return model

"""The benchmarks' models (``(inputs, outputs)`` of a functional model, or a
compiled model) and their generated data.

Import after `KERAS_BACKEND` is set (Keras picks its backend at import).
"""

from __future__ import annotations

import keras
import numpy as np


def mlp():
    """The 784-512-512-10 ReLU MLP (MNIST-sized input, logits)."""
    inputs = keras.Input((784,))
    h = keras.layers.Dense(512, activation="relu")(inputs)
    h = keras.layers.Dense(512, activation="relu")(h)
    return inputs, keras.layers.Dense(10)(h)


def cnn(batch_norm: bool = True):
    """Two 3x3 conv blocks (32, 64 filters) with max pooling on CIFAR-sized
    input, then global pooling and logits; batch norm after each conv unless
    ``batch_norm=False`` (then the convs have a bias and a ReLU)."""
    inputs = keras.Input((32, 32, 3))
    h = inputs
    for filters in (32, 64):
        if batch_norm:
            h = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(h)
            h = keras.layers.BatchNormalization()(h)
            h = keras.layers.Activation("relu")(h)
        else:
            h = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(h)
        h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return inputs, keras.layers.Dense(10)(h)


def lenet():
    """LeNet-300-100 compiled with SGD(0.1) and sparse cross-entropy on
    logits (the curvature benchmarks' model)."""
    model = keras.Sequential(
        [
            keras.Input((784,)),
            keras.layers.Dense(300, activation="relu"),
            keras.layers.Dense(100, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        keras.optimizers.SGD(0.1),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def teacher_classes(n: int, seed: int):
    """n uniform 784-pixel inputs labelled by a random linear teacher."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, 784)).astype("float32")
    teacher = rng.normal(size=(784, 10))
    return x, np.argmax((x - 0.5) @ teacher, axis=1)

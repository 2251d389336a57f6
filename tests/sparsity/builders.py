"""Models and mask readers shared by the sparsity tests."""

import keras
import numpy as np

import keras_sam
from keras_sam import sparsity

LR = 0.1


def mlp(hidden=16, seed=0, sam=True, rho=0.05, **options):
    """The 5-h-1 tanh MLP of tests/reference.py."""
    keras.utils.set_random_seed(seed)
    init = keras.initializers.RandomNormal(stddev=0.5, seed=seed)
    inputs = keras.Input((5,))
    h = keras.layers.Dense(
        hidden, activation="tanh", kernel_initializer=init, bias_initializer=init
    )(inputs)
    outputs = keras.layers.Dense(1, kernel_initializer=init, bias_initializer=init)(h)
    if sam:
        return keras_sam.SAMModel(inputs, outputs, rho=rho, **options)
    return keras.Model(inputs, outputs)


def cnn(width=8, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(width, 3, padding="same")(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.DepthwiseConv2D(3)(h)
    h = keras.layers.SeparableConv2D(width, 3)(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.Dense(3)(h)
    return keras.Model(inputs, outputs)


def kernels(model):
    return [t.variable.numpy() for t in sparsity.prunable_weights(model)]


def masks(model):
    return [t.mask.mask.numpy() for t in sparsity.prunable_weights(model)]


def params_of(model):
    return [v.numpy().astype(np.float64) for v in model.trainable_variables]

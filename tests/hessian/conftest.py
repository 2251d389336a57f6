"""Tiny models and dense Hessian references shared by the curvature tests.

The dense references (`tests.hessian.references`, one code path per
backend) differentiate the per-example loss twice, independent of the
library's HVP code path."""

import keras
import numpy as np
import pytest

from tests.hessian.references import per_example_hessians


def dense_per_example_hessians(model, loss_fn, x, y):
    """(n, P, P) float64 array of per-example Hessians of loss_fn."""
    return per_example_hessians(model, x, y, loss_fn)


class Case:
    def __init__(self, model, x, y, loss_fn):
        self.model, self.x, self.y, self.loss_fn = model, x, y, loss_fn
        self.hessians = dense_per_example_hessians(model, loss_fn, x, y)
        self.h = self.hessians.mean(axis=0)
        self.dim = self.h.shape[0]


@pytest.fixture(scope="session")
def classifier():
    """Softmax cross-entropy classifier with batch norm (moving statistics
    set away from 0/1 so that inference mode matters)."""
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    inputs = keras.Input((4,))
    h = keras.layers.Dense(5, activation="tanh")(inputs)
    bn = keras.layers.BatchNormalization()
    h = bn(h)
    outputs = keras.layers.Dense(3)(h)
    model = keras.Model(inputs, outputs)
    bn.moving_mean.assign(rng.normal(size=5).astype("float32") * 0.3)
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, size=5).astype("float32"))
    bn.gamma.assign(rng.uniform(0.5, 1.5, size=5).astype("float32"))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.SGD(0.1), loss)
    x = rng.normal(size=(12, 4)).astype("float32")
    y = rng.integers(0, 3, size=12)

    def loss_fn(yt, yp):
        return keras.losses.sparse_categorical_crossentropy(yt, yp, from_logits=True)

    return Case(model, x, y, loss_fn)


@pytest.fixture(scope="session")
def regressor():
    """Squared-loss regressor with two outputs."""
    keras.utils.set_random_seed(2)
    rng = np.random.default_rng(2)
    inputs = keras.Input((3,))
    h = keras.layers.Dense(4, activation="tanh")(inputs)
    outputs = keras.layers.Dense(2)(h)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.SGD(0.05), "mse")
    x = rng.normal(size=(12, 3)).astype("float32")
    y = rng.normal(size=(12, 2)).astype("float32")

    def loss_fn(yt, yp):
        return keras.losses.mean_squared_error(yt, yp)

    return Case(model, x, y, loss_fn)


@pytest.fixture(params=["classifier", "regressor"])
def case(request):
    return request.getfixturevalue(request.param)

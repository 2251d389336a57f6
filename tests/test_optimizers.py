"""L2SGD (coupled L2 weight decay) against a NumPy re-derivation, alone and
under SAM, and against Keras' decoupled form."""

import keras
import numpy as np
import pytest

import keras_sam
from keras_sam.optimizers import L2SGD
from tests import reference
from tests.models import mlp, weights_of

# Slots made before the step is traced: one trace, not two (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("optimizer_built_before_tracing")


def numpy_l2sgd(params, grads_fn, lrs, momentum, l2):
    """PyTorch / optax SGD: buf = m buf + (g + l2 w); w -= lr buf."""
    params = [p.copy() for p in params]
    buffers = [np.zeros_like(p) for p in params]
    for lr in lrs:
        grads = grads_fn(params)
        for i, (p, g) in enumerate(zip(params, grads)):
            buffers[i] = momentum * buffers[i] + g + l2 * p
            params[i] = p - lr * buffers[i]
    return params


def test_sam_step_adds_l2_times_w_to_the_perturbed_gradient_before_momentum(
    regression_data,
):
    x, y = regression_data
    rho, l2, momentum = 0.2, 0.05, 0.9
    # x0.1 after the 2nd step: the buffer is not rescaled by the drop.
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([1], [0.1, 0.01])
    lrs = [0.1, 0.1, 0.01, 0.01]
    model = mlp(rho=rho)
    params = weights_of(model)
    model.compile(L2SGD(schedule, momentum=momentum, l2=l2), loss="mse")
    for _ in lrs:
        model.train_on_batch(x, y)

    def sam_grads(p):  # eps from the loss gradient alone: l2 is not in it
        return reference.sam_gradient("sam", p, x, y, rho)[2]

    expected = numpy_l2sgd(params, sam_grads, lrs, momentum, l2)
    for got, want in zip(weights_of(model), expected):
        np.testing.assert_allclose(got, want, atol=2e-6, rtol=0)
    # Neither without the decay, nor with Keras' velocity (-lr g) form:
    no_decay = numpy_l2sgd(params, sam_grads, lrs, momentum, 0.0)
    assert not np.allclose(weights_of(model)[0], no_decay[0], atol=1e-4)
    velocity_form = [p.copy() for p in params]
    velocity = [np.zeros_like(p) for p in params]
    for lr in lrs:
        grads = sam_grads(velocity_form)
        for i, (p, g) in enumerate(zip(velocity_form, grads)):
            velocity[i] = momentum * velocity[i] - lr * (g + l2 * p)
            velocity_form[i] = p + velocity[i]
    assert not np.allclose(weights_of(model)[0], velocity_form[0], atol=1e-5)


def test_differs_from_decoupled_weight_decay_and_matches_sgd_without_it(
    regression_data,
):
    x, y = regression_data

    def trained(optimizer):
        model = mlp(sam=False)
        model.compile(optimizer, loss="mse")
        for _ in range(3):
            model.train_on_batch(x, y)
        return weights_of(model)

    plain = trained(keras.optimizers.SGD(0.1, momentum=0.9))
    for a, b in zip(trained(L2SGD(0.1, momentum=0.9)), plain):
        np.testing.assert_allclose(a, b, atol=1e-6)
    coupled = trained(L2SGD(0.1, momentum=0.9, l2=0.1))
    decoupled = trained(keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=0.1))
    assert not np.allclose(coupled[0], decoupled[0], atol=1e-3)


def test_serializable_and_validated(tmp_path, regression_data):
    opt = L2SGD(0.05, momentum=0.5, l2=1e-4, clipnorm=1.0)
    clone = L2SGD.from_config(opt.get_config())
    assert (clone.momentum, clone.l2, clone.clipnorm) == (0.5, 1e-4, 1.0)
    model = keras_sam.sam(mlp(sam=False), rho=0.1)
    model.compile(opt, loss="mse")
    model.train_on_batch(*regression_data)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.optimizer, L2SGD) and loaded.optimizer.l2 == 1e-4
    for bad in [dict(momentum=1.0), dict(momentum=-0.1), dict(l2=-1), dict(l2="x")]:
        name = next(iter(bad))
        with pytest.raises(ValueError, match=name):
            L2SGD(0.1, **bad)

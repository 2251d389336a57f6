"""WSAM's two forms inside the step on every backend: the decoupled
sharpness term (the paper's, applied after the optimizer's update, outside
its momentum) and the coupled one, against a NumPy re-derivation with
momentum SGD and a learning-rate schedule."""

import keras
import numpy as np
import pytest

from keras_sam import variants
from tests.models import assert_weights_close, mlp, weights_of
from tests.variants import reference

# Slots made before the step is traced: one trace, not two (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("optimizer_built_before_tracing")

RHO, GAMMA, STEPS = 0.2, 0.8, 4


def _schedule():
    # lr 0.1, 0.05, 0.025, ...: the shift must use its own step's rate.
    return keras.optimizers.schedules.ExponentialDecay(0.1, 1, 0.5)


def _train(model, x, y, optimizer):
    model.compile(optimizer, loss="mse")
    model.fit(x, y, batch_size=len(x), epochs=STEPS, shuffle=False, verbose=0)
    return weights_of(model)


@pytest.mark.parametrize("decoupled", [True, False], ids=["decoupled", "coupled"])
def test_momentum_sgd_steps_match_numpy(regression_data, decoupled):
    x, y = regression_data
    model = mlp(rho=RHO, variant=variants.WSAM(gamma=GAMMA, decoupled=decoupled))
    params = weights_of(model)
    lrs = [0.1 * 0.5**i for i in range(STEPS)]
    expected = reference.train_wsam_momentum(params, x, y, RHO, lrs, GAMMA, decoupled)
    optimizer = keras.optimizers.SGD(_schedule(), momentum=0.9)
    assert_weights_close(_train(model, x, y, optimizer), expected, atol=2e-6)
    # The two forms differ with momentum (so each check can fail).
    other = reference.train_wsam_momentum(params, x, y, RHO, lrs, GAMMA, not decoupled)
    assert max(np.max(np.abs(a - b)) for a, b in zip(expected, other)) > 1e-4


def test_decoupled_is_the_default_and_old_configs_stay_coupled():
    assert variants.get("wsam") == variants.WSAM(gamma=0.9, decoupled=True)
    restored = variants.get(variants.serialize(variants.WSAM(0.7, decoupled=True)))
    assert restored == variants.WSAM(0.7, decoupled=True)
    # Saved before the option existed: trained (and resumed) coupled.
    old = variants.WSAM.from_config({"gamma": 0.9})
    assert old.decoupled is False and not old.decouples


def test_skipped_loss_scaled_step_moves_no_weight(regression_data, mixed_precision):
    x, y = regression_data
    mixed_precision("mixed_float16")
    model = mlp(rho=0.05, variant=variants.WSAM())
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    model.train_on_batch(x, y)
    before = weights_of(model)
    model.train_on_batch(x * 1e6, y)  # float16 overflow: the step is skipped
    assert_weights_close(weights_of(model), before, atol=0)


def test_gradient_accumulation_is_refused(regression_data):
    x, y = regression_data
    model = mlp(rho=0.05, variant=variants.WSAM())
    optimizer = keras.optimizers.SGD(0.1, gradient_accumulation_steps=2)
    model.compile(optimizer, loss="mse")
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        model.train_on_batch(x, y)
    # The coupled form goes through the optimizer and accumulates with it.
    model = mlp(rho=0.05, variant=variants.WSAM(decoupled=False))
    model.compile(keras.optimizers.SGD(0.1, gradient_accumulation_steps=2), loss="mse")
    model.train_on_batch(x, y)


@pytest.mark.parametrize("decoupled", [1, "yes", None])
def test_decoupled_must_be_a_bool(decoupled):
    with pytest.raises(ValueError, match="decoupled"):
        variants.WSAM(decoupled=decoupled)

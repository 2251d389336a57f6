"""Micro-batches on JAX: the `jax.lax.scan`, rolled and unrolled, gives the
NumPy m-sharpness step and threads the state in order.

test_sam_model.py checks micro-batches on every backend with 2-3 of them,
which JAX unrolls (up to 16); a batch of more runs as a rolled loop. Here
the same references run both ways, the rolled one by setting the unroll
limit to 0 (the same code path as above 16, compiled in less time)."""

import keras
import numpy as np
import pytest

import keras_sam
from tests.models import LR, micro_batch_reference, mlp, weights_of

pytestmark = pytest.mark.backends("jax")

#: The step's unroll limit for each way (None: its default, >= 3).
UNROLL = {"rolled": 0, "unrolled": None}


def _unroll(monkeypatch, way):
    """Sets the step's unroll limit (read when the train step is traced)."""
    from keras_sam.backend.jax import micro_batches

    assert micro_batches.MAX_UNROLLED_MICRO_BATCHES >= 3
    if UNROLL[way] is not None:
        monkeypatch.setattr(micro_batches, "MAX_UNROLLED_MICRO_BATCHES", UNROLL[way])


@pytest.mark.parametrize("way", sorted(UNROLL))
def test_micro_batches_and_a_partial_one_match_numpy(regression_data, monkeypatch, way):
    """A batch of 7 with m = 2: 3 micro-batches of 2, then one of 1
    weighted by its size; the logged losses are the weighted means."""
    _unroll(monkeypatch, way)
    x, y = regression_data
    model = mlp(rho=0.2, micro_batch_size=2)
    params = weights_of(model)
    model.compile(keras.optimizers.SGD(LR), loss="mse")
    logs = model.train_on_batch(x[:7], y[:7], return_dict=True)
    expected, losses = micro_batch_reference(params, x, y, [(0, 7)], 2)
    for a, b in zip(weights_of(model), expected):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    assert logs["loss"] == pytest.approx(losses[0], rel=1e-5)
    assert logs["perturbed_loss"] == pytest.approx(losses[1], rel=1e-5)


def _bn_dropout_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    h = keras.layers.BatchNormalization(momentum=0.9)(inputs)
    h = keras.layers.Dense(4, activation="tanh")(h)
    h = keras.layers.Dropout(0.5)(h)
    outputs = keras.layers.Dense(1)(h)
    model = keras_sam.SAMModel(inputs, outputs, rho=0.5, micro_batch_size=2)
    model.compile(keras.optimizers.SGD(LR), loss="mse")
    return model


def test_rolled_scan_threads_state_like_unrolled(monkeypatch):
    """Batch norm + dropout, 3 micro-batches of 2: each clean pass updates
    the moving mean in order (checked by hand), and the dropout seeds move
    on per micro-batch: rolled and unrolled take the same step."""
    rng = np.random.default_rng(5)
    x = rng.normal(loc=2.0, size=(6, 3)).astype("float32")
    y = rng.normal(size=(6, 1)).astype("float32")
    weights = {}
    for way in sorted(UNROLL):
        with monkeypatch.context() as patch:
            _unroll(patch, way)
            model = _bn_dropout_model()
            model.train_on_batch(x, y)
        expected = np.zeros(3)
        for k in range(0, 6, 2):
            expected = 0.9 * expected + 0.1 * x[k : k + 2].mean(0)
        np.testing.assert_allclose(
            model.layers[1].moving_mean.numpy(), expected, rtol=1e-5
        )
        weights[way] = [v.numpy() for v in model.weights]
    for a, b in zip(weights["rolled"], weights["unrolled"]):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # The dropout seed moved on once per micro-batch, as 3 calls move it:
    # the perturbed passes reused the clean passes' seeds.
    fresh = _bn_dropout_model()
    for k in range(0, 6, 2):
        fresh(x[k : k + 2], training=True)
    seed = fresh.layers[3].seed_generator.state
    np.testing.assert_array_equal(
        model.layers[3].seed_generator.state.numpy(), seed.numpy()
    )
    assert not np.array_equal(
        seed.numpy(), _bn_dropout_model().layers[3].seed_generator.state.numpy()
    )

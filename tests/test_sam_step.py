"""The backend-neutral update (`keras_sam.sam_step`) is what each backend's
step runs: its pieces are called, and a change to them changes the step."""

import keras
import numpy as np
import pytest

import keras_sam
from keras_sam import backend, sam_step


def _model(**options):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    outputs = keras.layers.Dense(1)(keras.layers.Dense(4, activation="tanh")(inputs))
    model = keras_sam.SAMModel(inputs, outputs, rho=0.1, **options)
    model.compile(keras.optimizers.SGD(0.1), loss="mse")
    return model


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(8, 3)).astype("float32"), rng.normal(size=(8, 1))


@pytest.mark.parametrize("options", [{}, {"micro_batch_size": 4}, {"variant": "gsam"}])
def test_each_backend_runs_the_neutral_update(monkeypatch, options):
    calls = []
    for name in ("train_step", "sam_gradients", "epsilon", "direction"):
        original = getattr(sam_step, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(sam_step, name, spy)
    model = _model(**options)
    model.train_on_batch(*_data())
    assert {"train_step", "sam_gradients", "epsilon", "direction"} <= set(calls)
    passes = backend.module("step").__dict__
    assert any(
        isinstance(v, type)
        and issubclass(v, sam_step.Passes)
        and v is not sam_step.Passes
        for v in passes.values()
    )


def test_the_neutral_direction_is_what_the_optimizer_applies(monkeypatch):
    """Doubling d in `sam_step.direction` doubles the SGD step on every
    backend: the optimizer applies what the neutral code hands it."""
    x, y = _data()
    steps = []
    original = sam_step.direction
    for factor in (1.0, 2.0):

        def scaled(*args, _factor=factor, **kwargs):
            return [d * _factor for d in original(*args, **kwargs)]

        monkeypatch.setattr(sam_step, "direction", scaled)
        model = _model()
        before = [w.numpy() for w in model.trainable_weights]
        model.train_on_batch(x, y)
        steps.append([w.numpy() - b for w, b in zip(model.trainable_weights, before)])
        monkeypatch.setattr(sam_step, "direction", original)
    for one, two in zip(*steps):
        np.testing.assert_allclose(two, 2 * one, rtol=1e-5, atol=1e-7)

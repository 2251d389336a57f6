"""`SAMModel` builds its optimizer before TensorFlow traces the step, so the
first `fit` traces it once (Keras, without a tf.distribute strategy, builds
the optimizer inside the first trace, and the slot variables made there
force a second trace), with the same numbers as Keras's path."""

import keras
import numpy as np
import pytest

import keras_sam
from keras_sam.backend import tensorflow as tensorflow_backend
from keras_sam.backend.tensorflow import trainer

pytestmark = pytest.mark.backends("tensorflow")


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(48, 5)).astype("float32"), rng.integers(0, 3, 48)


def _optimizers():
    return {
        "adam": keras.optimizers.Adam(0.01),
        "momentum_accumulation_ema": keras.optimizers.SGD(
            0.1, momentum=0.9, gradient_accumulation_steps=2, use_ema=True
        ),
    }


def _fit(optimizer, monkeypatch, built_first):
    if not built_first:
        monkeypatch.setattr(trainer, "build_optimizer_before_tracing", lambda m: None)
    traces = []
    step = tensorflow_backend.train_step
    monkeypatch.setattr(
        tensorflow_backend, "train_step", lambda *a: traces.append(1) or step(*a)
    )
    keras.utils.set_random_seed(0)
    model = keras_sam.sam(
        keras.Sequential(
            [keras.Input((5,)), keras.layers.Dense(8, "tanh"), keras.layers.Dense(3)]
        ),
        rho=0.1,
    )
    model.compile(optimizer, loss="sparse_categorical_crossentropy")
    x, y = _data()
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    monkeypatch.undo()
    return len(traces), model.get_weights() + [
        v.numpy() for v in model.optimizer.variables
    ]


@pytest.mark.parametrize("name", ["adam", "momentum_accumulation_ema"])
def test_first_fit_traces_once_with_keras_numbers(name, monkeypatch):
    traces, weights = _fit(_optimizers()[name], monkeypatch, built_first=True)
    keras_traces, keras_weights = _fit(_optimizers()[name], monkeypatch, False)
    assert (traces, keras_traces) == (1, 2)
    for got, expected in zip(weights, keras_weights, strict=True):
        np.testing.assert_array_equal(got, expected)


def test_unbuilt_subclassed_model_builds_its_optimizer_in_the_trace():
    class Small(keras_sam.SAMModel):
        def __init__(self):
            super().__init__(rho=0.1)
            self.hidden = keras.layers.Dense(4)
            self.out = keras.layers.Dense(3)

        def call(self, x):
            return self.out(self.hidden(x))

    model = Small()
    model.compile(keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    trainer.build_optimizer_before_tracing(model)
    assert not model.optimizer.built  # its layers are not built yet
    x, y = _data()
    model.fit(x, y, batch_size=8, verbose=0)
    assert model.optimizer.built
    assert len(model.optimizer.variables) > 1

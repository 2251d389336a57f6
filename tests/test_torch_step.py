"""The PyTorch step's passes call a `SAMWrapper`'s inner model directly
where the wrapper's layer call would change nothing, with the same values as
through the wrapper (`keras_sam.backend.torch.step._network`)."""

import keras
import numpy as np
import pytest

import keras_sam
from keras_sam.sam_model import SAMWrapper
from tests.conftest import BACKEND

pytestmark = pytest.mark.skipif(BACKEND != "torch", reason="torch only")


class _Regularized(keras.layers.Layer):
    """Dense with an activity loss: an `add_loss` inside the passes."""

    def build(self, input_shape):
        self.dense = keras.layers.Dense(4)
        self.dense.build(input_shape)

    def call(self, x):
        h = self.dense(x)
        self.add_loss(1e-2 * keras.ops.mean(keras.ops.square(h)))
        return h


def _zoo():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5,))
    h = keras.layers.Dense(8, activation="relu")(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Dropout(0.3, seed=1)(h)
    h = _Regularized()(h)
    outputs = keras.layers.Dense(1, kernel_regularizer="l2")(h)
    return keras.Model(inputs, outputs)


def _train(direct, monkeypatch):
    from keras_sam.backend.torch import step

    if not direct:
        monkeypatch.setattr(step, "_network", lambda model: model)
    calls = []
    forward = step._forward
    monkeypatch.setattr(
        step,
        "_forward",
        lambda network, model, x: (
            calls.append(network is not model) or forward(network, model, x)
        ),
    )
    model = keras_sam.sam(_zoo(), rho=0.1)
    model.compile(keras.optimizers.Adam(1e-2), loss="mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 5)).astype("float32")
    y = rng.normal(size=(32, 1)).astype("float32")
    keras.utils.set_random_seed(1)
    history = model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    return model, history.history, calls


def test_inner_model_call_matches_the_wrappers_exactly(monkeypatch):
    direct, direct_logs, calls = _train(True, monkeypatch)
    assert len(calls) == 16 and all(calls)  # 8 steps, 2 passes each
    monkeypatch.undo()
    wrapped, wrapped_logs, calls = _train(False, monkeypatch)
    assert len(calls) == 16 and not any(calls)
    for a, b in zip(direct.variables, wrapped.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    assert direct_logs == wrapped_logs
    assert direct.gradient_passes == wrapped.gradient_passes == 16


def test_wrapper_with_its_own_call_or_autocast_is_called_itself():
    from keras_sam.backend.torch import step

    model = keras_sam.sam(_zoo())
    assert step._network(model) is model.model

    class Doubled(SAMWrapper):
        def call(self, inputs, training=None):
            return 2.0 * self.model(inputs, training=training)

    doubled = Doubled(_zoo())
    assert step._network(doubled) is doubled
    mixed = SAMWrapper(_zoo(), dtype="mixed_float16")
    assert step._network(mixed) is mixed


def test_inputs_the_wrapper_would_cast_go_through_it():
    import torch

    from keras_sam.backend.torch import step

    model = keras_sam.sam(_zoo())
    ints = torch.zeros((2, 5), dtype=torch.int64)
    assert not step._casts_inputs(model, torch.zeros((2, 5)))
    assert not step._casts_inputs(model, {"a": ints, "b": None})
    assert step._casts_inputs(model, [ints, torch.zeros((2, 5), dtype=torch.float64)])

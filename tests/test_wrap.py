"""`keras_sam.sam` on every kind of Keras model, and subclassing (the import
guard against TF-MOT's legacy-Keras switch: tests/sparsity/test_schedules.py)."""

import keras
import numpy as np
import pytest

import keras_sam
from tests.conftest import BACKEND
from tests.models import mlp

# Keras on torch allows only steps_per_execution=1.
STEPS_PER_EXECUTION = 1 if BACKEND == "torch" else 2


class Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(8, activation="relu")
        self.dropout = keras.layers.Dropout(0.1)
        self.out = keras.layers.Dense(1)

    def call(self, inputs, training=False):
        return self.out(self.dropout(self.hidden(inputs), training=training))


def sequential():
    return keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(8), keras.layers.Dense(1)]
    )


def subclassed():
    model = Subclassed()
    model(np.zeros((1, 5), "float32"))
    return model


@pytest.mark.parametrize("build", [sequential, lambda: mlp(sam=False), subclassed])
def test_sam_shares_weights_and_matches_functional_sam(regression_data, build):
    x, y = regression_data
    keras.utils.set_random_seed(0)
    model = build()
    before = [v.numpy().copy() for v in model.trainable_variables]
    wrapped = keras_sam.sam(model, rho=0.1)
    assert isinstance(wrapped, keras_sam.SAMModel)
    wrapped.compile(keras.optimizers.SGD(0.1), loss="mse")
    logs = wrapped.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    assert "perturbed_loss" in logs
    after = [v.numpy() for v in model.trainable_variables]
    assert all(
        not np.allclose(a, b) for a, b in zip(before, after)
    )  # the original trained


def test_wrapped_equals_functional_sam_model(regression_data):
    x, y = regression_data
    direct = mlp(rho=0.2)
    wrapped = keras_sam.sam(mlp(sam=False), rho=0.2)
    for model in (direct, wrapped):
        model.compile(keras.optimizers.SGD(0.1), loss="mse")
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(direct.trainable_variables, wrapped.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)


def test_wrapped_subclassed_model_saves_and_loads(tmp_path, regression_data):
    x, y = regression_data
    wrapped = keras_sam.sam(subclassed_registered(), rho=0.3, perturbation="usam")
    wrapped.compile(keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    wrapped.fit(x, y, epochs=1, verbose=0)
    wrapped.save(tmp_path / "w.keras")
    restored = keras.models.load_model(tmp_path / "w.keras")
    assert isinstance(restored, keras_sam.SAMWrapper)
    assert (restored.rho, restored.perturbation) == (
        0.3,
        keras_sam.perturbations.USAM(),
    )
    np.testing.assert_allclose(
        restored.predict(x, verbose=0), wrapped.predict(x, verbose=0)
    )
    for a, b in zip(restored.optimizer.variables, wrapped.optimizer.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy())


@keras.saving.register_keras_serializable(package="tests")
class RegisteredSubclassed(Subclassed):
    pass


def subclassed_registered():
    model = RegisteredSubclassed()
    model(np.zeros((1, 5), "float32"))
    return model


def test_subclassing_sam_model_works_after_functional_use(regression_data):
    x, y = regression_data
    mlp()  # a functional SAMModel must not turn SAMModel itself functional

    class Custom(keras_sam.SAMModel):
        def __init__(self):
            super().__init__(rho=0.1, perturbation="asam")
            self.dense = keras.layers.Dense(1)

        def call(self, inputs):
            return self.dense(inputs)

    model = Custom()
    model.compile(keras.optimizers.SGD(0.1), loss="mse")
    history = model.fit(x, y, epochs=1, verbose=0).history
    assert np.isfinite(history["perturbed_loss"][0])
    assert model.perturbation == keras_sam.perturbations.ASAM()


@pytest.mark.parametrize(
    "model, message",
    [(keras.layers.Dense(1), "keras.Model"), (Subclassed(), "built")],
)
def test_sam_rejects_what_it_cannot_wrap(model, message):
    with pytest.raises(ValueError, match=message):
        keras_sam.sam(model)


def test_sam_rejects_sam_model():
    with pytest.raises(ValueError, match="already a SAMModel"):
        keras_sam.sam(mlp())


def conv_bn_classifier():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 1))
    h = keras.layers.Conv2D(4, 3, use_bias=False)(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Dropout(0.2)(keras.layers.Flatten()(keras.layers.ReLU()(h)))
    return keras.Model(inputs, keras.layers.Dense(3)(h))


def test_sam_of_a_compiled_model_keeps_its_compile_settings():
    """Conv + batch norm + dropout, compiled first, then wrapped."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 6, 6, 1)).astype("float32")
    y = rng.integers(0, 3, size=(24,))
    base = conv_bn_classifier()
    optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
    base.compile(
        optimizer,
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        steps_per_execution=STEPS_PER_EXECUTION,
        jit_compile=False,
    )
    base.fit(x, y, batch_size=8, verbose=0)  # the optimizer has state
    iterations = int(optimizer.iterations.numpy())
    model = keras_sam.sam(base, rho=0.1)
    assert model.compiled and model.optimizer is optimizer
    assert model.steps_per_execution == STEPS_PER_EXECUTION
    assert model.jit_compile is False
    history = model.fit(x, y, batch_size=8, verbose=0).history
    assert set(history) == {"loss", "accuracy", "perturbed_loss"}
    assert int(optimizer.iterations.numpy()) == iterations + 3


def multi_output(compiled=True):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5,))
    h = keras.layers.Dense(8, activation="tanh")(inputs)
    outputs = {
        "value": keras.layers.Dense(1, name="value")(h),
        "label": keras.layers.Dense(3, name="label")(h),
    }
    model = keras.Model(inputs, outputs)
    model.compile(
        keras.optimizers.SGD(0.1),
        loss={
            "value": "mse",
            "label": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        },
        loss_weights={"value": 0.3, "label": 2.0},
        metrics={"label": ["accuracy"], "value": ["mae"]},
    )
    return model


@pytest.mark.parametrize("micro_batch_size", [None, 6])
def test_sam_of_a_compiled_multi_output_model_at_rho_0_is_plain_keras(
    micro_batch_size,
):
    """Losses, loss weights and per-output metrics carried over: at rho = 0
    the wrapped model trains and logs as the compiled model itself; with
    micro-batches of 6, 6 and a partial 4 per batch of 16 too (gradients
    weighted by size, predictions reassembled in order)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(32, 5)).astype("float32")
    y = {"value": rng.normal(size=(32, 1)), "label": rng.integers(0, 3, size=(32,))}
    plain = multi_output()
    expected = plain.fit(x, y, batch_size=16, shuffle=False, verbose=0).history
    model = keras_sam.sam(multi_output(), rho=0.0, micro_batch_size=micro_batch_size)
    history = model.fit(x, y, batch_size=16, shuffle=False, verbose=0).history
    assert set(history) == set(expected) | {"perturbed_loss"}
    for name, values in expected.items():
        if micro_batch_size and name.endswith("_loss"):
            # Keras weights its per-output loss logs by the static batch
            # size, known for whole micro-batches only (docs/sam_step.md).
            continue
        assert history[name] == pytest.approx(values, rel=1e-5), name
    for a, b in zip(model.trainable_variables, plain.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)


def test_sam_of_a_compiled_mixed_float16_model_keeps_its_loss_scaling(
    mixed_precision,
):
    mixed_precision("mixed_float16")
    base = sequential()
    base.compile("sgd", "mse")
    scaled = base.optimizer
    assert isinstance(scaled, keras.optimizers.LossScaleOptimizer)
    assert keras_sam.sam(base).optimizer is scaled


def test_sam_of_a_compiled_model_says_what_to_do_without_compile_settings(
    monkeypatch,
):
    base = sequential()
    base.compile("sgd", "mse")
    monkeypatch.setattr(keras_sam._compat, "compile_arguments", lambda model: None)
    with pytest.raises(ValueError, match=r"Wrap the model before compiling"):
        keras_sam.sam(base)

"""Late-phase SAM, its reverse, and Momentum-SAM in the training step on
every backend: several steps against the NumPy reference, degenerate
options equal to SAM or to the base optimizer, save / load / resume, and a
zoo of models."""

import keras
import numpy as np
import pytest

from keras_sam import SAMModel, variants
from tests.conftest import BACKEND
from tests.models import LR, assert_weights_close, mlp, weights_of
from tests.variants import reference
from tests.variants.training import (
    assert_resume_equals_uninterrupted,
    train_full_batch,
)

# Slots made before the step is traced: one trace, not two (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("optimizer_built_before_tracing")

STEPS = 6


# ---- the rules ------------------------------------------------------------


@pytest.mark.parametrize(
    "variant",
    [
        variants.LatePhaseSAM(total_steps=10, start=0.3),
        variants.EarlyPhaseSAM(total_steps=10, stop=0.7),
        variants.MomentumSAM(),
    ],
    ids=repr,
)
def test_serialization_round_trip(variant):
    assert variants.get(variants.serialize(variant)) == variant
    assert variants.get(type(variant).from_config(variant.get_config())) == variant


def test_names_and_switch_step():
    assert variants.get("msam") == variants.MomentumSAM()
    assert variants.LatePhaseSAM(total_steps=7, start=0.5).switch_step == 4
    assert variants.EarlyPhaseSAM(total_steps=100, stop=0.25).switch_step == 25


@pytest.mark.parametrize(
    "make, argument",
    [
        (lambda: variants.LatePhaseSAM(), "total_steps"),
        (lambda: variants.get("latesam"), "total_steps"),
        (lambda: variants.LatePhaseSAM(total_steps=0), "total_steps"),
        (lambda: variants.LatePhaseSAM(total_steps=10, start=1.5), "start"),
        (lambda: variants.EarlyPhaseSAM(total_steps=10, stop=-0.1), "stop"),
        (lambda: variants.EarlyPhaseSAM(total_steps=10, stop="half"), "stop"),
    ],
)
def test_bad_options_name_the_argument(make, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        make()


# ---- late / early phase in the step ---------------------------------------


@pytest.mark.parametrize(
    "name, variant",
    [
        ("latesam", variants.LatePhaseSAM(total_steps=STEPS, start=0.5)),
        ("earlysam", variants.EarlyPhaseSAM(total_steps=STEPS, stop=0.5)),
    ],
)
def test_phases_match_numpy(regression_data, name, variant):
    x, y = regression_data
    model = mlp(rho=0.2, variant=variant)
    params = weights_of(model)
    expected, passes = reference.train(name, params, x, y, 0.2, LR, STEPS, switch=3)
    assert_weights_close(train_full_batch(model, x, y), expected, atol=2e-6)
    assert model.gradient_passes == passes == STEPS + 3
    sam, _ = reference.train("sam", params, x, y, 0.2, LR, STEPS)
    sgd, _ = reference.train("sam", params, x, y, 0.0, LR, STEPS)  # rho 0: SGD
    for other in (sam, sgd):
        assert max(np.max(np.abs(a - b)) for a, b in zip(expected, other)) > 1e-4


@pytest.mark.parametrize(
    "variant, like",
    [
        (variants.LatePhaseSAM(total_steps=STEPS, start=0.0), "sam"),
        (variants.LatePhaseSAM(total_steps=STEPS, start=1.0), "sgd"),
        (variants.EarlyPhaseSAM(total_steps=STEPS, stop=1.0), "sam"),
        (variants.EarlyPhaseSAM(total_steps=STEPS, stop=0.0), "sgd"),
    ],
    ids=repr,
)
def test_degenerate_phases_are_sam_or_sgd(regression_data, variant, like):
    x, y = regression_data
    model = mlp(rho=0.2, variant=variant)
    params = weights_of(model)
    if like == "sam":
        expected, passes = reference.train("sam", params, x, y, 0.2, LR, STEPS)
    else:
        expected, _ = reference.train("sam", params, x, y, 0.0, LR, STEPS)
        passes = STEPS  # plain one-pass steps
    assert_weights_close(train_full_batch(model, x, y), expected, atol=2e-6)
    assert model.gradient_passes == passes


def test_late_phase_save_load_and_resume(tmp_path, regression_data):
    """The switch falls in the resumed epoch: the saved step decides."""

    def fresh():
        variant = variants.LatePhaseSAM(total_steps=16, start=0.75)
        model = mlp(rho=0.2, variant=variant)
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
        return model

    assert_resume_equals_uninterrupted(fresh, *regression_data, tmp_path / "m.keras")


# ---- Momentum-SAM in the step ---------------------------------------------


def _optimizer(kind, lr=LR):
    if kind == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9)
    return keras.optimizers.Adam(lr)


# MSAM builds the optimizer itself when its slots are not there yet.
@pytest.mark.optimizer_built_in_the_trace
@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_msam_matches_numpy(regression_data, kind):
    x, y = regression_data
    model = mlp(rho=0.3, variant="msam")
    params = weights_of(model)
    lr = LR if kind == "sgd" else 0.01
    model.compile(_optimizer(kind, lr), loss="mse")
    model.fit(x, y, batch_size=len(x), epochs=STEPS, shuffle=False, verbose=0)
    expected = reference.train_msam(params, x, y, 0.3, lr, STEPS, optimizer=kind)
    assert_weights_close(weights_of(model), expected, atol=2e-6)
    assert model.gradient_passes == STEPS  # one pass per step
    plain = reference.train_msam(params, x, y, 0.0, lr, STEPS, optimizer=kind)
    assert max(np.max(np.abs(a - b)) for a, b in zip(expected, plain)) > 1e-4


def test_msam_with_rho_zero_is_the_optimizer(regression_data):
    x, y = regression_data
    model = mlp(rho=0.0, variant="msam")
    plain = mlp(sam=False)
    for m in (model, plain):
        m.compile(_optimizer("sgd"), loss="mse")
        m.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    assert_weights_close(weights_of(model), weights_of(plain), atol=1e-6)


@pytest.mark.parametrize(
    "optimizer, shown",
    [
        (keras.optimizers.SGD(0.1), "SGD with momentum=0"),
        (keras.optimizers.RMSprop(0.1), "RMSprop"),
    ],
    ids=["sgd-no-momentum", "rmsprop"],
)
def test_msam_refuses_an_optimizer_without_momentum(regression_data, optimizer, shown):
    x, y = regression_data
    model = mlp(variant="msam")
    model.compile(optimizer, loss="mse")
    with pytest.raises(ValueError, match=f"MomentumSAM .*{shown}.*Use keras"):
        model.fit(x, y, batch_size=16, epochs=1, verbose=0)


def test_msam_save_load_and_resume(tmp_path, regression_data):
    """The momentum is the optimizer's, saved with it."""

    def fresh():
        model = mlp(rho=0.2, variant="msam")
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
        return model

    assert_resume_equals_uninterrupted(fresh, *regression_data, tmp_path / "m.keras")


def _conv_bn(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(3, 3)(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Activation("relu")(h)
    outputs = keras.layers.Dense(1)(keras.layers.Flatten()(h))
    return inputs, outputs


def test_msam_first_step_is_the_optimizers_and_state_updates_once():
    """Conv + batch norm: v = 0 on the first step, so MSAM's first step
    (weights and batch statistics, written once) is plain SGD's; the second
    moves the weights differently."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 6, 6, 2)).astype("float32")
    y = rng.normal(size=(16, 1)).astype("float32")
    msam = SAMModel(*_conv_bn(), rho=0.5, variant="msam")
    plain = keras.Model(*_conv_bn())
    for m in (msam, plain):
        m.compile(_optimizer("sgd"), loss="mse")
        m.train_on_batch(x, y)
    layer_weights = [
        [v for layer in m.layers for v in layer.weights] for m in (msam, plain)
    ]
    assert len(layer_weights[0]) == len(layer_weights[1]) == 8
    for a, b in zip(*layer_weights):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), atol=1e-6
        )
    for m in (msam, plain):
        m.train_on_batch(x, y)
    moved = [
        np.max(np.abs(keras.ops.convert_to_numpy(a) - keras.ops.convert_to_numpy(b)))
        for a, b in zip(msam.trainable_variables, plain.trainable_variables)
    ]
    assert max(moved) > 1e-5
    assert msam.gradient_passes == 2


def _zoo_models():
    def attention():
        inputs = keras.Input((4, 6))
        h = keras.layers.MultiHeadAttention(2, 3)(inputs, inputs)
        h = keras.layers.LayerNormalization()(h)
        return inputs, keras.layers.Dense(1)(keras.layers.GlobalAveragePooling1D()(h))

    def embedding_gru():
        inputs = keras.Input((5,), dtype="int32")
        h = keras.layers.Embedding(11, 4)(inputs)
        return inputs, keras.layers.Dense(1)(keras.layers.GRU(3)(h))

    def two_in_two_out():
        a, b = keras.Input((3,)), keras.Input((2,))
        h = keras.layers.Dense(4, activation="tanh")(keras.layers.Concatenate()([a, b]))
        h = keras.layers.Dropout(0.3)(h)
        return [a, b], [keras.layers.Dense(1)(h), keras.layers.Dense(2)(h)]

    return {
        "attention": attention,
        "embedding_gru": embedding_gru,
        "multi": two_in_two_out,
    }


def _zoo_data(name, rng):
    n = 12
    if name == "attention":
        return rng.normal(size=(n, 4, 6)).astype("float32"), rng.normal(size=(n, 1))
    if name == "embedding_gru":
        return rng.integers(0, 11, size=(n, 5)), rng.normal(size=(n, 1))
    x = [rng.normal(size=(n, 3)), rng.normal(size=(n, 2))]
    return [a.astype("float32") for a in x], [
        rng.normal(size=(n, 1)).astype("float32"),
        rng.normal(size=(n, 2)).astype("float32"),
    ]


@pytest.mark.parametrize("name", ["attention", "embedding_gru", "multi"])
@pytest.mark.parametrize(
    "variant",
    [variants.MomentumSAM(), variants.LatePhaseSAM(total_steps=4, start=0.5)],
    ids=["msam", "latesam"],
)
def test_zoo_trains_with_the_expected_passes(name, variant):
    keras.utils.set_random_seed(0)
    inputs, outputs = _zoo_models()[name]()
    model = SAMModel(inputs, outputs, rho=0.1, variant=variant)
    model.compile(keras.optimizers.Adam(0.01), loss="mse")
    x, y = _zoo_data(name, np.random.default_rng(0))
    before = weights_of(model)
    history = model.fit(x, y, batch_size=6, epochs=2, shuffle=False, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert model.gradient_passes == (4 if variant.single_pass else 4 + 2)
    assert max(np.max(np.abs(a - b)) for a, b in zip(weights_of(model), before)) > 0


# The loss scale read before the optimizer is built, with MSAM's own build.
@pytest.mark.optimizer_built_in_the_trace
@pytest.mark.skipif(BACKEND != "tensorflow", reason="mixed_float16 on CPU: TF")
def test_msam_under_loss_scaling_is_close_to_float32(regression_data):
    x, y = regression_data
    results = []
    for policy in ("float32", "mixed_float16"):
        keras.config.set_dtype_policy(policy)
        try:
            model = mlp(rho=0.2, variant="msam")
            model.compile(_optimizer("sgd"), loss="mse")
            model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
            results.append(weights_of(model))
        finally:
            keras.config.set_dtype_policy("float32")
    assert_weights_close(results[0], results[1], atol=5e-3)

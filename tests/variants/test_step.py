"""Variants inside the TensorFlow training step: composition with the step's
options, save / load / resume (the backend-neutral checks are in
test_step_backends.py)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_sam
from keras_sam import variants
from tests.models import LR, assert_weights_close, mlp, weights_of
from tests.variants import reference
from tests.variants.training import (
    assert_resume_equals_uninterrupted,
    train_full_batch,
)

# Slots made before the step is traced: one trace, not two (tests/conftest.py).
pytestmark = [
    pytest.mark.backends("tensorflow"),
    pytest.mark.usefixtures("optimizer_built_before_tracing"),
]


def test_masks_compose_with_looksam(regression_data):
    """A pruned first kernel: g, eps, gs and the stored gv are masked."""
    from keras_sam.sparsity import _masks

    x, y = regression_data
    inner = mlp(sam=False)
    target = _masks.attach_masks(inner)[0]
    mask = (np.random.default_rng(2).random((5, 4)) > 0.5).astype("float32")
    _masks.set_mask(target, mask)
    model = keras_sam.sam(inner, rho=0.2, variant=variants.LookSAM(every=2, alpha=0.7))
    params = weights_of(model)
    expected, _ = reference.train(
        "looksam",
        params,
        x,
        y,
        0.2,
        LR,
        4,
        masks=[mask, None, None, None],
        every=2,
        alpha=0.7,
    )
    weights = train_full_batch(model, x, y, steps=4)
    assert_weights_close(weights, expected)
    assert np.all(weights[0][mask == 0] == 0)


class CountCalls(keras.layers.Layer):
    """Identity that counts how often its forward pass really runs."""

    calls = 0

    def call(self, inputs):
        def count():
            CountCalls.calls += 1
            return np.float32(0.0)

        return inputs + tf.reshape(tf.py_function(count, [], tf.float32), [])

    def compute_output_shape(self, input_shape):
        return input_shape


def test_cheap_steps_do_not_run_the_second_pass(regression_data):
    x, y = regression_data
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5,))
    outputs = keras.layers.Dense(1)(CountCalls()(keras.layers.Dense(4)(inputs)))
    model = keras_sam.SAMModel(inputs, outputs, variant=variants.LookSAM(every=3))
    model.compile(keras.optimizers.SGD(LR), loss="mse", steps_per_execution=2)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # 8 steps: 0, 3, 6 are SAM
    CountCalls.calls = 0
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # steps 8..15: 9, 12, 15
    assert CountCalls.calls == 8 + 3
    assert model.gradient_passes == 2 * 8 + 3 + 3
    logs = model.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert set(logs) == {"loss", "perturbed_loss"}


def conv_bn_dropout(variant, seed=0, dropout=0.3, **options):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(4, 3, kernel_regularizer=keras.regularizers.L2(1e-3))(
        inputs
    )
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Activation("relu")(h)
    h = keras.layers.Flatten()(h)
    if dropout:
        h = keras.layers.Dropout(dropout, seed=seed)(h)
    outputs = keras.layers.Dense(1)(h)
    return keras_sam.SAMModel(inputs, outputs, rho=0.2, variant=variant, **options)


@pytest.fixture(scope="module")
def image_data():
    rng = np.random.default_rng(1)
    return (
        rng.normal(size=(32, 6, 6, 2)).astype("float32"),
        rng.normal(size=(32, 1)).astype("float32"),
    )


def test_jit_and_steps_per_execution_agree(regression_data):
    x, y = regression_data
    final = []
    for jit, steps in [(False, 1), (True, 3)]:
        model = mlp(rho=0.5, perturbation="asam", variant=variants.LookSAM(every=2))
        model.compile(
            keras.optimizers.SGD(LR, momentum=0.9),
            loss="mse",
            jit_compile=jit,
            steps_per_execution=steps,
        )
        model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        final.append(weights_of(model) + [v.numpy() for v in model.variant_state])
        assert model.gradient_passes == 8 * 1.5
    assert_weights_close(final[0], final[1], atol=1e-5)


def test_conv_bn_micro_batches_and_steps_per_execution_agree(image_data):
    x, y = image_data
    final = []
    for steps in (1, 3):
        model = conv_bn_dropout(
            variants.LookSAM(every=2),
            dropout=0.0,
            perturbation="asam",
            micro_batch_size=4,
        )
        model.compile(
            keras.optimizers.SGD(0.05, momentum=0.9),
            loss="mse",
            steps_per_execution=steps,
        )
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        final.append([v.numpy() for v in model.variables])
        assert model.gradient_passes == 8 * 1.5
    for a, b in zip(*final):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_mixed_float16_matches_float32(regression_data, mixed_precision):
    x, y = regression_data
    final = []
    for policy in ("float32", "mixed_float16"):
        mixed_precision(policy)
        model = mlp(rho=0.5, perturbation="usam", variant=variants.LookSAM(every=2))
        optimizer = keras.optimizers.SGD(LR)
        if policy == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(
                optimizer, initial_scale=256
            )
        model.compile(optimizer, loss="mse")
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        final.append(weights_of(model) + [v.numpy() for v in model.variant_state])
    assert_weights_close(final[0], final[1], atol=5e-3)


# The loss scale read before the optimizer is built (the first trace).
@pytest.mark.optimizer_built_in_the_trace
def test_mixed_float16_non_finite_step_keeps_variant_state(
    regression_data, mixed_precision
):
    x, y = regression_data
    mixed_precision("mixed_float16")
    model = mlp(rho=0.05, variant=variants.LookSAM(every=1))
    model.compile(keras.optimizers.SGD(LR), loss="mse")
    model.train_on_batch(x, y)
    stored = [v.numpy().copy() for v in model.variant_state]
    model.train_on_batch(x * 1e6, y)  # float16 overflow: skipped step
    for a, v in zip(stored, model.variant_state):
        np.testing.assert_array_equal(a, v.numpy())


def test_save_load_and_resume_conv_bn_dropout(tmp_path, image_data):
    """LookSAM's stored direction, batch norm, dropout seeds."""

    def fresh():
        model = conv_bn_dropout(variants.LookSAM(every=3))
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
        return model

    assert_resume_equals_uninterrupted(fresh, *image_data, tmp_path / "m.keras")


@pytest.mark.parametrize(
    "kwargs, argument",
    [({"variant": "bsam"}, "variant"), ({"rho": "schedule"}, "rho")],
)
def test_bad_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        mlp(**kwargs)
    with pytest.raises(ValueError, match=argument):
        keras_sam.sam(mlp(sam=False), **kwargs)

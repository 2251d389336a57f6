"""Variants inside the training step on every backend: several full-batch
SGD steps against the NumPy reference, the skipped second pass really
skipped, save / load / resume."""

import keras
import numpy as np
import pytest

import keras_sam
from keras_sam import SAMModel, variants
from tests import reference as sam_reference
from tests.conftest import BACKEND
from tests.models import LR, assert_weights_close, mlp, weights_of
from tests.variants import reference
from tests.variants.training import (
    STEPS,
    assert_resume_equals_uninterrupted,
    train_full_batch,
)

# Slots made before the step is traced: one trace, not two (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("optimizer_built_before_tracing")

CASES = [
    ("sam", variants.PlainSAM(), {}),
    ("lazysam", variants.LazySAM(every=3), {"every": 3}),
    ("looksam", variants.LookSAM(every=3, alpha=0.7), {"every": 3, "alpha": 0.7}),
    ("gsam", variants.GSAM(alpha=0.4), {"alpha": 0.4}),
    ("wsam", variants.WSAM(gamma=0.9), {"gamma": 0.9}),
    ("fsam", variants.FriendlySAM(sigma=1.0, lmbda=0.6), {"sigma": 1.0, "lmbda": 0.6}),
    ("aesam", variants.AESAM(threshold=0.5), {"threshold": 0.5, "momentum": 0.9}),
]


@pytest.mark.parametrize("name, variant, options", CASES, ids=[c[0] for c in CASES])
def test_several_steps_match_numpy(regression_data, name, variant, options):
    x, y = regression_data
    model = mlp(rho=0.2, variant=variant)
    params = weights_of(model)
    expected, passes = reference.train(name, params, x, y, 0.2, LR, STEPS, **options)
    assert_weights_close(train_full_batch(model, x, y), expected, atol=2e-6)
    assert model.gradient_passes == passes
    # The update is not plain SGD's (AESAM's threshold is not reached from
    # the JAX and torch initial weights: they draw other numbers).
    if name != "aesam" or BACKEND == "tensorflow":
        sgd, _ = reference.train("lazysam", params, x, y, 0.2, LR, STEPS, every=10**6)
        assert max(np.max(np.abs(a - b)) for a, b in zip(expected, sgd)) > 1e-4


@pytest.mark.parametrize(
    "variant",
    [
        variants.LookSAM(every=1),
        variants.LazySAM(every=1),
        variants.GSAM(alpha=0.0),
        variants.WSAM(gamma=0.5),
    ],
    ids=repr,
)
def test_degenerate_variants_train_like_sam(regression_data, variant):
    x, y = regression_data
    model = mlp(rho=0.2, perturbation="usam", variant=variant)
    params = weights_of(model)
    expected, _ = reference.train("sam", params, x, y, 0.2, LR, 3, rule="usam")
    assert_weights_close(train_full_batch(model, x, y, steps=3), expected)
    assert model.gradient_passes == 6


def test_rho_schedules_match_numpy(regression_data):
    x, y = regression_data
    lr = keras.optimizers.schedules.ExponentialDecay(LR, 1, 0.5)
    for rho, rho_of_step in [
        (variants.ProportionalRho(lr, rho_max=0.3), lambda i: 0.3 * 0.5**i),
        (
            lambda step: 0.1 * keras.ops.cast(step + 1, "float32"),
            lambda i: 0.1 * (i + 1),
        ),
    ]:
        model = mlp(rho=rho, variant="gsam")
        params = weights_of(model)
        expected, _ = reference.train(
            "gsam", params, x, y, rho_of_step, LR, 3, alpha=0.4
        )
        assert_weights_close(train_full_batch(model, x, y, steps=3), expected)


def test_sam_on_with_a_path_selection_matches_numpy(regression_data):
    """eps on the output layer only, its norm over those weights only."""
    x, y = regression_data
    inner = mlp(sam=False)
    output_layer = f"^{inner.layers[-1].name}/"
    selection = variants.SAMON(layer_types=(), paths=[output_layer])
    model = keras_sam.sam(inner, rho=0.3, variant=selection)
    model.compile(keras.optimizers.SGD(LR), loss="mse")
    params = weights_of(model)
    _, g = sam_reference.loss_and_grads(params, x, y)
    chosen = [0.0, 0.0, 1.0, 1.0]
    selected = [a * c for a, c in zip(g, chosen)]
    eps = sam_reference.epsilon("sam", selected, params, 0.3)
    _, gs = sam_reference.loss_and_grads([p + e for p, e in zip(params, eps)], x, y)
    model.train_on_batch(x, y)
    assert_weights_close(weights_of(model), [p - LR * a for p, a in zip(params, gs)])


def test_wrapped_model_keeps_variant_and_schedule(tmp_path, regression_data):
    x, y = regression_data
    lr = keras.optimizers.schedules.ExponentialDecay(LR, 1, 0.5)
    model = keras_sam.sam(
        mlp(sam=False), rho=variants.ProportionalRho(lr, 0.2), variant="looksam"
    )
    model.compile(keras.optimizers.SGD(lr), loss="mse")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    model.save(tmp_path / "wrapped.keras")
    restored = keras.models.load_model(tmp_path / "wrapped.keras")
    assert restored.variant == variants.LookSAM()
    assert isinstance(restored.rho, variants.ProportionalRho)
    for a, b in zip(model.variant_state, restored.variant_state):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)
        )


def test_zero_norms_fall_back_to_g(regression_data):
    """A step with a zero gradient (all sample weights 0) moves nothing and
    stores gv = 0; the cheap steps after it (|gv| = 0) are plain SGD steps."""
    x, y = regression_data
    model = mlp(rho=0.2, variant=variants.LookSAM(every=3))
    model.compile(keras.optimizers.SGD(LR), loss="mse")
    params = weights_of(model)
    model.train_on_batch(x, y, sample_weight=np.zeros(len(x), "float32"))
    assert_weights_close(weights_of(model), params, atol=0)
    *gv, gv_norm = [keras.ops.convert_to_numpy(v) for v in model.variant_state]
    assert gv_norm == 0 and all(np.all(a == 0) for a in gv)
    for _ in range(2):
        model.train_on_batch(x, y)
    sgd, _ = reference.train("lazysam", params, x, y, 0.0, LR, 2, every=10**6)
    assert_weights_close(weights_of(model), sgd)
    assert model.gradient_passes == 2 + 1 + 1


class CountCalls(keras.layers.Layer):
    """Identity that counts how often its forward pass really runs (under
    JAX's jit through a host callback, which a branch not taken skips)."""

    calls = 0

    def call(self, inputs):
        if BACKEND == "jax":
            import jax

            jax.debug.callback(CountCalls.count)
        else:
            CountCalls.count()
        return inputs

    @staticmethod
    def count():
        CountCalls.calls += 1

    def compute_output_shape(self, input_shape):
        return input_shape


@pytest.mark.backends("jax", "torch")
def test_cheap_steps_do_not_run_the_second_pass(regression_data):
    x, y = regression_data
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5,))
    outputs = keras.layers.Dense(1)(CountCalls()(keras.layers.Dense(4)(inputs)))
    model = SAMModel(inputs, outputs, variant=variants.LookSAM(every=3))
    model.compile(keras.optimizers.SGD(LR), loss="mse")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # 8 steps: 0, 3, 6 are SAM
    CountCalls.calls = 0
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    if BACKEND == "jax":
        import jax

        jax.effects_barrier()
    assert CountCalls.calls == 8 + 3  # steps 8..15: 9, 12, 15
    assert model.gradient_passes == 2 * 8 + 3 + 3
    assert set(history) == {"loss", "perturbed_loss"}


@pytest.mark.parametrize(
    "variant",
    [variants.LookSAM(every=3), variants.RWP(sigma=0.05, seed=2)],
    ids=["looksam", "rwp"],
)
def test_save_load_and_resume(tmp_path, regression_data, variant):
    """LookSAM's stored direction and step; RWP's seed state."""

    def fresh():
        model = mlp(rho=0.2, variant=variant)
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
        return model

    assert_resume_equals_uninterrupted(fresh, *regression_data, tmp_path / "m.keras")


def test_rwp_noise_moves_the_weights(regression_data):
    x, y = regression_data
    params = weights_of(mlp())
    sgd, _ = reference.train("lazysam", params, x, y, 0.0, LR, 2, every=10**6)
    quiet = mlp(variant=variants.RWP(sigma=0.0, seed=1))
    assert_weights_close(train_full_batch(quiet, x, y, steps=2), sgd)
    noisy = mlp(variant=variants.RWP(sigma=0.5, mix=1.0, seed=1))
    moved = train_full_batch(noisy, x, y, steps=2)
    assert max(np.max(np.abs(a - b)) for a, b in zip(moved, sgd)) > 1e-3


@keras.saving.register_keras_serializable("tests_variants_backends")
class SubclassedSAM(SAMModel):
    """Its layers build on the first call, after `SAMModel.__init__`."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(4, activation="tanh")
        self.out = keras.layers.Dense(1)

    def call(self, x, training=None):
        return self.out(self.hidden(x))


def test_save_load_and_resume_subclassed_model(tmp_path, regression_data):
    """F-SAM's per-weight state is made once the layers exist (on JAX,
    before the trainer gathers its stateless state)."""

    def fresh():
        keras.utils.set_random_seed(0)
        model = SubclassedSAM(rho=0.2, variant=variants.FriendlySAM())
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
        return model

    assert_resume_equals_uninterrupted(fresh, *regression_data, tmp_path / "m.keras")

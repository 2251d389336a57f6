"""The curvature instruments on a zoo of tiny Keras models
(`tests.hessian.zoo`), each against dense per-example Hessians of Keras' own
`model.compute_loss`.

The reference (`tests.hessian.references`) differentiates Keras's compiled
loss of each one-example batch twice on the active backend, independent of
the library's loss resolution, HVP code and per-example paths.
"""

import keras
import numpy as np
import pytest

import keras_sam.callbacks
from keras_sam import hessian
from keras_sam.hessian import CurvatureOperator
from tests.hessian.references import (
    BACKEND,
    finite_difference_hvp,
    per_example_hessians,
)
from tests.hessian.zoo import (
    FACTORED,
    LOOPED_CHECKS,
    NOT_VECTORIZED,
    ZOO,
    N,
    build,
    compiled,
    per_token_model,
    rel_err,
)


@pytest.fixture(params=sorted(ZOO))
def member(request):
    return build(request.param)


def test_zoo_against_dense_hessians(member):
    name, model, x, y, hessians = member
    regularization = name == "nested_with_penalties"
    op = CurvatureOperator(model, (x, y), regularization=regularization, chunk_size=3)
    # The loss is Keras' own compiled loss of the batch.
    expected_loss = model.compute_loss(x, y, model(x, training=False), training=False)
    assert op.loss() == pytest.approx(float(expected_loss), rel=1e-5)
    h = hessians.mean(axis=0)
    v = np.random.default_rng(1).normal(size=op.dim)
    assert rel_err(op.hvp(v), h @ v) < 1e-4
    # Per-example products: the chosen path, and both paths where allowed.
    assert rel_err(op.per_example_hvp(v), hessians @ v) < 1e-4
    assert op.vectorized is (name not in NOT_VECTORIZED)
    if op.vectorized and (BACKEND != "jax" or name in LOOPED_CHECKS):
        looped = op.per_example_hvp(v, path="looped")
        assert rel_err(looped, hessians @ v) < 1e-4
    top = np.linalg.eigvalsh(h)[-1]
    assert hessian.sharpness(op, tol=1e-6) == pytest.approx(top, rel=1e-4)
    # The default tol (1e-3) is the accuracy promised, from either start
    # (test_solvers checks more seeds on dense matrices). On JAX the random
    # start is one more compilation: checked on the LOOPED_CHECKS member.
    starts = ((0, "gradient"), (1, "random"))
    if BACKEND == "jax" and name not in LOOPED_CHECKS:
        starts = starts[:1]
    for seed, start in starts:
        got = hessian.sharpness(op, seed=seed, start=start)
        assert abs(got - top) <= 1e-3 * abs(top), (seed, start)
    if name == "recurrent" and BACKEND == "tensorflow":
        return  # tracing M_k through the recurrent loop alone takes ~25 s
    m2 = np.mean([hi @ hi for hi in hessians], axis=0)
    assert rel_err(op.moment(v, 2), m2 @ v) < 1e-4
    if BACKEND == "torch" and not op.vectorized:
        return  # Lanczos on looped eager per-example products: ~15 s
    s2 = np.sqrt(np.linalg.eigvalsh(m2 - h @ h)[-1])
    if BACKEND != "jax":
        # Cached per model: decided here, by this call (on Dense-only members
        # the check of the Dense factors runs the fused step's first).
        op._fn._fused = op._fn._structured = None
    got = hessian.non_uniformity(op, order=2, tol=1e-6, max_iter=op.dim)
    assert got == pytest.approx(s2, rel=1e-3)
    if name in FACTORED:
        # The s_2 step from layer factors (`test_layer_factors`); PyTorch
        # drives it on these two chunks (`test_moment_drive`).
        assert op._fn._structured is True
        assert op._drive_agrees is (True if BACKEND == "torch" else None)
    if BACKEND != "jax" and op.vectorized:
        # TensorFlow and PyTorch fuse the s_2 step where a check on the first
        # chunk finds it exact (JAX always does): on every vectorized member.
        assert op._fn._fused is True


# Central differences of the float32 gradient: step 1e-3 balances the
# truncation (step^2) and the rounding (eps / step) near 1e-4.
FD_STEP, FD_TOL = 1e-3, 1e-3


def test_hvp_matches_finite_differences(member):
    # H v against central differences of the gradient: independent of every
    # second-derivative rule of the backend (the dense references
    # differentiate twice).
    name, model, x, y, _ = member
    regularization = name == "nested_with_penalties"
    op = CurvatureOperator(model, (x, y), regularization=regularization)
    v = np.random.default_rng(4).normal(size=op.dim)
    expected = finite_difference_hvp(model, x, y, v, step=FD_STEP)
    assert rel_err(op.hvp(v), expected) < FD_TOL
    if name == "transformer_block" and BACKEND == "tensorflow":
        # Keras's own TensorFlow moments, differentiated twice, miss by
        # about 1e-2: the test can tell the products apart from them.
        unpatched = per_example_hessians(model, x, y).mean(axis=0) @ v
        assert rel_err(unpatched, expected) > 10 * FD_TOL


def test_batch_norm_in_training_mode_matches_finite_differences():
    # BatchNormalization in training mode normalizes by the batch's
    # moments: on TensorFlow the same `tf.nn.moments` as LayerNormalization.
    name, model, x, y, _ = build("convolutions")
    op = CurvatureOperator(model, (x, y), training=True)
    v = np.random.default_rng(5).normal(size=op.dim)
    expected = finite_difference_hvp(model, x, y, v, step=FD_STEP, training=True)
    assert rel_err(op.hvp(v), expected) < FD_TOL


def test_weights_follow_keras():
    _, model, x, y, hessians = build("bce_vector_labels")
    w = np.array([0.5, 2.0, 1.0, 0.0], "float32")
    op = CurvatureOperator(model, (x, y, w))
    expected = model.compute_loss(x, y, model(x), sample_weight=w, training=False)
    assert op.loss() == pytest.approx(float(expected), rel=1e-5)
    v = np.random.default_rng(2).normal(size=op.dim)
    weighted = np.einsum("i,ijk->jk", w, hessians) / N
    assert rel_err(op.hvp(v), weighted @ v) < 1e-4
    # class_weight as fit applies it: a sample weight per label.
    by_class = CurvatureOperator(model, (x, y), class_weight={0: 0.5, 1: 3.0})
    w = np.where(y > 0.5, 3.0, 0.5).astype("float32")
    same = CurvatureOperator(model, (x, y, w))
    assert rel_err(by_class.hvp(v), same.hvp(v)) < 1e-6


def test_per_token_weights_follow_keras():
    # A causal-LM-shaped model: per-token logits (n, seq, vocab) against
    # (n, seq) labels, weighted by a (n, seq) padding mask (and other
    # values), reduced as Keras's compiled loss reduces them.
    model, x, y, mask = per_token_model()
    op = CurvatureOperator(model, (x, y, mask), chunk_size=3)
    expected = model.compute_loss(x, y, model(x), sample_weight=mask, training=False)
    assert op.loss() == pytest.approx(float(expected), rel=1e-5)
    hessians = per_example_hessians(model, x, y, sample_weight=mask)
    h = hessians.mean(axis=0)
    v = np.random.default_rng(7).normal(size=op.dim)
    assert rel_err(op.hvp(v), h @ v) < 1e-4
    assert rel_err(op.per_example_hvp(v), hessians @ v) < 1e-4
    m2 = np.mean([hi @ hi for hi in hessians], axis=0)
    assert rel_err(op.moment(v, 2), m2 @ v) < 1e-4
    top = np.linalg.eigvalsh(h)[-1]
    assert hessian.sharpness(op, tol=1e-6) == pytest.approx(top, rel=1e-4)
    # The callbacks take the same data.
    cb = keras_sam.callbacks.HessianMetrics((x, y, mask), num_examples=None, tol=1e-6)
    model.fit(x, y, sample_weight=mask, epochs=1, verbose=0, callbacks=[cb])
    assert cb.records[0]["sharpness"] == pytest.approx(
        hessian.sharpness(model, (x, y, mask), tol=1e-6), rel=1e-4
    )
    # Errors show the shape passed, not a flattened one.
    with pytest.raises(ValueError, match=r"got shape \(2, 3\)"):
        CurvatureOperator(model, (x, y, mask[:2]))


class Sampling(keras.layers.Layer):
    """The keras-io VAE sampling layer: z = mean + exp(log_var / 2) eps."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seed_generator = keras.random.SeedGenerator(7)

    def call(self, inputs):
        mean, log_var = inputs
        eps = keras.random.normal(keras.ops.shape(mean), seed=self.seed_generator)
        return mean + keras.ops.exp(0.5 * log_var) * eps


def test_stochastic_layers_are_frozen_and_state_untouched():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    inputs = keras.Input((3,))
    h = keras.layers.Dense(4, activation="tanh")(inputs)
    z = Sampling()([keras.layers.Dense(2)(h), keras.layers.Dense(2)(h)])
    outputs = keras.layers.Dropout(0.5)(keras.layers.Dense(1)(z))
    model = compiled(keras.Model(inputs, outputs), "mse")
    x = rng.normal(size=(8, 3)).astype("float32")
    y = rng.normal(size=(8, 1)).astype("float32")
    state = [v.numpy().copy() for v in model.non_trainable_variables]
    op = CurvatureOperator(model, (x, y), training=True)
    v = rng.normal(size=op.dim)
    np.testing.assert_array_equal(op.hvp(v), op.hvp(v))
    first = hessian.sharpness(model, (x, y), training=True)
    assert hessian.sharpness(model, (x, y), training=True) == first
    for before, after in zip(state, model.non_trainable_variables):
        np.testing.assert_array_equal(before, after.numpy())


def test_mixed_precision_matches_float32():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(16, 3)).astype("float32")
    y = rng.integers(0, 3, size=16)
    models = {}
    for policy in ("float32", "mixed_float16"):
        keras.config.set_dtype_policy(policy)
        try:
            keras.utils.set_random_seed(0)
            model = keras.Sequential(
                [
                    keras.Input((3,)),
                    keras.layers.Dense(8, activation="tanh"),
                    keras.layers.Dense(3),
                ]
            )
        finally:
            keras.config.set_dtype_policy("float32")
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        models[policy] = compiled(model, loss)
    models["mixed_float16"].set_weights(models["float32"].get_weights())
    reference = hessian.sharpness(models["float32"], (x, y), tol=1e-6)
    mixed = hessian.sharpness(models["mixed_float16"], (x, y), tol=1e-6)
    assert mixed == pytest.approx(reference, rel=1e-2)

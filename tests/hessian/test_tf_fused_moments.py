"""TensorFlow's fused s_2 step (`Functions.square_gap` on the vectorized
path: the rows ``H_i v``, then one batch gradient of ``sum_i c_i D f_i [H_i v
- center]``) against dense per-example Hessians on the zoo, and the check
that keeps two per-example products where the fused step is wrong or fails."""

import keras
import numpy as np
import pytest

from keras_sam.hessian import CurvatureOperator
from tests.hessian.references import per_example_hessians
from tests.hessian.zoo import build, rel_err

pytestmark = pytest.mark.backends("tensorflow")

# test_zoo runs non_uniformity against the dense reference on every member
# (the fused step where it is taken, and asserts it is); here, more vectors
# and two chunks on the members whose paths differ most: LayerNormalization
# + attention, and several outputs with loss weights.
FUSED_MEMBERS = ["multi_output_dict", "transformer_block"]


def dense_gap(hessians):
    h = hessians.mean(axis=0)
    return np.mean([hi @ hi for hi in hessians], axis=0) - h @ h


@pytest.mark.parametrize("name", FUSED_MEMBERS)
def test_fused_gap_equals_dense(name):
    _, model, x, y, hessians = build(name)
    regularization = name == "nested_with_penalties"
    op = CurvatureOperator(model, (x, y), regularization=regularization, chunk_size=3)
    op._fn._fused = None  # the functions are cached per model: decide here
    rng = np.random.default_rng(2)
    expected = dense_gap(hessians)
    v = rng.normal(size=op.dim)
    assert rel_err(op.moment_gap(v, 2), expected @ v) < 1e-4
    # The first chunk's check chose the fused step; later steps take it.
    assert op._fn._fused is True
    for _ in range(2):
        v = rng.normal(size=op.dim)
        assert rel_err(op.moment_gap(v, 2), expected @ v) < 1e-4


def test_fused_gap_alone_equals_dense_on_a_chunk():
    # The fused function itself (not the checked wrapper) on one chunk.
    _, model, x, y, hessians = build("bce_vector_labels")
    op = CurvatureOperator(model, (x, y))
    v = np.random.default_rng(4).normal(size=op.dim)
    center = op.hvp(v)
    chunk, _ = op._chunks()[0]
    got = op._fn._fused_gap(*chunk, op._vector(v), op._vector(center)).numpy()
    assert rel_err(got / len(x), dense_gap(hessians) @ v) < 1e-4


@pytest.mark.parametrize("wrong", ["scaled", "raises"])
def test_a_wrong_or_failing_fused_step_keeps_two_products(monkeypatch, wrong):
    _, model, x, y, hessians = build("bce_vector_labels")
    op = CurvatureOperator(model, (x, y), chunk_size=3)
    fn = op._fn
    fn._fused = None
    fn._square_gaps.pop("fused", None)
    right = fn._fused_gap_sum

    def fused(*args):
        if wrong == "raises":
            raise NotImplementedError("no forward-mode rule")
        return 1.01 * right(*args)

    monkeypatch.setattr(fn, "_fused_gap_sum", fused)
    v = np.random.default_rng(5).normal(size=op.dim)
    expected = dense_gap(hessians) @ v
    try:
        assert rel_err(op.moment_gap(v, 2), expected) < 1e-4
        assert fn._fused is False
        assert rel_err(op.moment_gap(v, 2), expected) < 1e-4
    finally:
        fn._fused = None  # the cached functions: decided again by others
        fn._square_gaps.pop("fused", None)


def test_fused_gap_with_per_token_weights_equals_dense():
    # (n, seq) weights inside each example's loss, each example once.
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(6)
    model = keras.Sequential(
        [
            keras.Input((3,), dtype="int32"),
            keras.layers.Embedding(5, 3),
            keras.layers.Dense(3, activation="tanh"),
            keras.layers.Dense(4),
        ]
    )
    model.compile(
        keras.optimizers.SGD(0.1),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x = rng.integers(0, 5, size=(4, 3)).astype("int32")
    y = rng.integers(0, 4, size=(4, 3))
    mask = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0.5, 2, 0]], "float32")
    hessians = per_example_hessians(model, x, y, sample_weight=mask)
    op = CurvatureOperator(model, (x, y, mask), chunk_size=3)
    v = np.random.default_rng(7).normal(size=op.dim)
    expected = dense_gap(hessians) @ v
    assert rel_err(op.moment_gap(v, 2), expected) < 1e-4
    assert op._fn._fused is True
    assert rel_err(op.moment_gap(v, 2), expected) < 1e-4


def test_fused_gap_with_per_example_weights_equals_dense():
    _, model, x, y, _ = build("bce_vector_labels")
    sw = np.linspace(0.5, 2.0, len(x)).astype("float32")
    hessians = per_example_hessians(model, x, y)
    weighted = hessians * sw[:, None, None]
    h = weighted.mean(axis=0)
    expected = np.mean([w * hi @ hi for w, hi in zip(sw, hessians)], axis=0) - h @ h
    op = CurvatureOperator(model, (x, y, sw), chunk_size=3)
    v = np.random.default_rng(8).normal(size=op.dim)
    assert rel_err(op.moment_gap(v, 2), expected @ v) < 1e-4
    assert op._fn._fused is True

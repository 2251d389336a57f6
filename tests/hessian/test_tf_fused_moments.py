"""TensorFlow's fused s_2 step (`Functions.square_gap` on the vectorized
path: the rows ``H_i v``, then one batch gradient of ``sum_i c_i D f_i [H_i v
- center]``) against dense per-example Hessians on the zoo, and the check
that keeps two per-example products where the fused step is wrong or fails."""

import numpy as np
import pytest

from keras_sam.hessian import CurvatureOperator
from tests.hessian.references import per_example_hessians
from tests.hessian.zoo import build, dense_gap, rel_err

pytestmark = pytest.mark.backends("tensorflow")


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
    # The fused step and its fallback, not the Dense factors this Dense-only
    # model takes (tests/hessian/test_layer_factors.py).
    monkeypatch.setattr(fn, "_structured", False)
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


def test_fused_gap_with_per_example_weights_equals_dense(monkeypatch):
    _, model, x, y, _ = build("bce_vector_labels")
    sw = np.linspace(0.5, 2.0, len(x)).astype("float32")
    hessians = per_example_hessians(model, x, y)
    weighted = hessians * sw[:, None, None]
    h = weighted.mean(axis=0)
    expected = np.mean([w * hi @ hi for w, hi in zip(sw, hessians)], axis=0) - h @ h
    op = CurvatureOperator(model, (x, y, sw), chunk_size=3)
    monkeypatch.setattr(op._fn, "_structured", False)  # the fused step
    v = np.random.default_rng(8).normal(size=op.dim)
    assert rel_err(op.moment_gap(v, 2), expected @ v) < 1e-4
    assert op._fn._fused is True

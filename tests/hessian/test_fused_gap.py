"""The fused s_2 step of TensorFlow and PyTorch (`Functions.square_gap` on the
vectorized path: the rows ``H_i v``, then one batch gradient of ``sum_i c_i D
f_i [H_i v - center]``) against dense per-example Hessians: more vectors and
two chunks than test_zoo (which checks every member once and that the fused
step is taken), on the members whose paths differ most, and per-token weights.
JAX always fuses the step (test_zoo)."""

import numpy as np
import pytest

from keras_sam.hessian import CurvatureOperator
from tests.hessian.references import per_example_hessians
from tests.hessian.zoo import build, dense_gap, per_token_model, rel_err

pytestmark = pytest.mark.backends("tensorflow", "torch")

# LayerNormalization + attention, and several outputs with loss weights.
FUSED_MEMBERS = ["multi_output_dict", "transformer_block"]


@pytest.mark.parametrize("name", FUSED_MEMBERS)
def test_fused_gap_equals_dense(name, monkeypatch):
    _, model, x, y, hessians = build(name)
    op = CurvatureOperator(model, (x, y), chunk_size=3)
    op._fn._fused = None  # the functions are cached per model: decide here
    # The fused step itself, not the Dense factors a Dense-only model takes
    # (tests/hessian/test_layer_factors.py).
    monkeypatch.setattr(op._fn, "_structured", False)
    rng = np.random.default_rng(2)
    expected = dense_gap(hessians)
    v = rng.normal(size=op.dim)
    assert rel_err(op.moment_gap(v, 2), expected @ v) < 1e-4
    # The first chunk's check chose the fused step (on PyTorch, LayerNormalization
    # too: its kernel runs as plain ops inside it); later steps take it.
    assert op._fn._fused is True
    for _ in range(2):
        v = rng.normal(size=op.dim)
        assert rel_err(op.moment_gap(v, 2), expected @ v) < 1e-4


def test_fused_gap_with_per_token_weights_equals_dense():
    # (n, seq) weights inside each example's loss, each example once.
    model, x, y, mask = per_token_model()
    hessians = per_example_hessians(model, x, y, sample_weight=mask)
    op = CurvatureOperator(model, (x, y, mask), chunk_size=3)
    v = np.random.default_rng(7).normal(size=op.dim)
    expected = dense_gap(hessians) @ v
    assert rel_err(op.moment_gap(v, 2), expected) < 1e-4
    assert op._fn._fused is True
    assert rel_err(op.moment_gap(v, 2), expected) < 1e-4

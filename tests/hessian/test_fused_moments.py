"""PyTorch's fused s_2 step (`Functions._fused_gap`) against dense
per-example Hessians on the zoo, and the check that keeps two per-example
products where the fused step is wrong."""

import contextlib

import keras
import numpy as np
import pytest

from keras_sam.hessian import CurvatureOperator
from tests.hessian.references import per_example_hessians
from tests.hessian.zoo import build, dense_gap, rel_err

pytestmark = pytest.mark.backends("torch")


def test_layer_norm_kernel_fails_the_check_and_keeps_two_products(monkeypatch):
    # Without the plain-ops layer norm, F.layer_norm differentiated under
    # vmap makes the fused step wrong on the transformer block: the check
    # must see it and keep the per-example products (right, but slower).
    from keras_sam.backend.torch import curvature

    _, model, x, y, hessians = build("transformer_block")
    op = CurvatureOperator(model, (x, y), chunk_size=4)
    v = np.random.default_rng(3).normal(size=op.dim)
    expected = dense_gap(hessians) @ v
    center = op._vector(op.hvp(v))
    chunk, _ = op._chunks()[0]
    tv = op._vector(v)
    n = len(x)
    with_plain = op._fn._fused_gap(*chunk, tv, center).numpy() / n
    assert rel_err(with_plain, expected) < 1e-4
    monkeypatch.setattr(curvature, "_PlainNormalization", contextlib.nullcontext)
    with_kernel = op._fn._fused_gap(*chunk, tv, center).numpy() / n
    assert rel_err(with_kernel, expected) > 1e-2
    op._fn._fused = None  # decided again (the functions are cached per model)
    monkeypatch.setattr(op._fn, "_structured", False)  # the fused step's test
    assert rel_err(op.moment_gap(v, 2), expected) < 1e-4
    assert op._fn._fused is False
    assert rel_err(op.moment_gap(v, 2), expected) < 1e-4


def test_rows_are_centered_in_place_only_where_they_own_their_memory():
    import torch

    from keras_sam.backend.torch.curvature import _centered_rows

    own = torch.ones(2, 3)
    shared = torch.ones(2, 3)
    expanded = torch.ones(3).expand(2, 3)
    center = (torch.full((3,), 0.5), torch.full((3,), 0.25), torch.full((3,), 2.0))
    rows = (own, shared, shared, expanded)
    got = _centered_rows(rows, center + (torch.zeros(3),))
    assert got[0] is own and torch.equal(own, torch.full((2, 3), 0.5))
    # Two rows on one tensor, and a broadcast view: new tensors, inputs kept.
    assert torch.equal(got[1], torch.full((2, 3), 0.75))
    assert torch.equal(got[2], torch.full((2, 3), -1.0))
    assert torch.equal(shared, torch.ones(2, 3))
    assert torch.equal(expanded, torch.ones(2, 3))


def test_plain_normalizations_equal_the_kernels():
    import torch
    import torch.nn.functional as F

    from keras_sam.backend.torch.curvature import _layer_norm, _rms_norm

    x = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0))
    w, b = torch.rand(3, 5) + 0.5, torch.randn(3, 5)
    for shape, weight, bias in (((5,), w[0], b[0]), ((3, 5), w, b), ((5,), None, None)):
        torch.testing.assert_close(
            _layer_norm(x, shape, weight, bias, 1e-3),
            F.layer_norm(x, shape, weight, bias, 1e-3),
        )
        torch.testing.assert_close(
            _rms_norm(x, shape, weight, 1e-3), F.rms_norm(x, shape, weight, 1e-3)
        )
    torch.testing.assert_close(_rms_norm(x, (5,)), F.rms_norm(x, (5,)))


def test_fused_gap_through_rms_normalization_equals_dense():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(8)
    inputs = keras.Input((3, 4))
    h = keras.layers.Dense(4, activation="tanh")(inputs)
    h = keras.layers.RMSNormalization()(keras.layers.Add()([inputs, h]))
    h = keras.layers.GlobalAveragePooling1D()(h)
    model = keras.Model(inputs, keras.layers.Dense(1)(h))
    model.compile(keras.optimizers.SGD(0.1), "mse")
    x = rng.normal(size=(4, 3, 4)).astype("float32")
    y = rng.normal(size=(4, 1)).astype("float32")
    hessians = per_example_hessians(model, x, y)
    op = CurvatureOperator(model, (x, y), chunk_size=2)
    v = np.random.default_rng(9).normal(size=op.dim)
    expected = dense_gap(hessians) @ v
    assert rel_err(op.moment_gap(v, 2), expected) < 1e-4
    assert op._fn._fused is True
    assert rel_err(op.moment_gap(v, 2), expected) < 1e-4

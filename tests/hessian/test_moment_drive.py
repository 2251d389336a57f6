"""A solver's s_2 steps in one backend call (`CurvatureOperator.
drive_moment_gap`, the backends' `drive_square_gap`) and the factored pieces
it adds (`LayerFactors.batch_tangent`, `LayerFactors.contraction_gradient`):
each piece against a central difference of the contraction (exact: the
contraction is quadratic in the factors), the driven Lanczos against dense
per-example Hessians and against one `moment_gap` per step, and the
fallbacks (several chunks, a loop that disagrees, TensorFlow)."""

import keras
import numpy as np
import pytest

from keras_sam import hessian
from keras_sam.hessian import CurvatureOperator, solvers
from keras_sam.hessian._layer_factors import LayerFactors
from tests.hessian.references import per_example_hessians
from tests.hessian.zoo import build, dense_gap

DRIVES = keras.backend.backend() in ("jax", "torch")
# TensorFlow has no loop: its steps are `moment_gap`'s, tested elsewhere; here
# only that it falls back (`test_several_chunks`).
driving_backends = pytest.mark.skipif(
    not DRIVES, reason="JAX and PyTorch drive the s_2 steps"
)


@pytest.fixture(params=["gram", "rows"])
def route(request, monkeypatch):
    # Each Dense layer's part through per-example Grams of its tokens, or
    # through its rows formed (what many tokens take).
    gram = request.param == "gram"
    monkeypatch.setattr(LayerFactors, "by_gram", staticmethod(lambda *a: gram))


def _all_kinds():
    # Every factored kind: an Embedding, Dense on tokens with and without
    # bias, an EinsumDense after a reshape, LayerNormalization with gamma
    # only and with both, and a Dense of one feature.
    keras.utils.set_random_seed(7)
    inputs = keras.Input((5,), dtype="int32")
    h = keras.layers.Embedding(9, 4)(inputs)
    h = keras.layers.Dense(3, activation="tanh")(h)
    h = keras.layers.Dense(4, use_bias=False)(h)
    h = keras.layers.EinsumDense("abc,cd->abd", output_shape=(None, 2), bias_axes="d")(
        h
    )
    h = keras.layers.LayerNormalization(center=False)(h)
    h = keras.layers.LayerNormalization()(h)
    h = keras.layers.Reshape((10, 1))(h)
    h = keras.layers.Dense(1)(h)
    model = keras.Model(inputs, keras.layers.Flatten()(h))
    factors = LayerFactors.find(
        model, model.trainable_variables, [None] * len(model.trainable_variables)
    )
    assert factors is not None and len(factors.kinds) == 7
    return model, factors


def _random_factors(rng, model, factors, n=3):
    # (live, rows, center, frequencies) of random values in the layers'
    # shapes: ids for the Embedding, as its calls record them.
    shapes = {
        "Embedding": (5, 1, 4),
        "Dense": None,
        "EinsumDense": (5, 4, 2),
        "LayerNormalization": (5, 2, 2),
    }
    live, rows = [], []
    for layer in factors.layers:
        kind = type(layer).__name__
        if kind == "Dense":
            t, i, o = (
                (10, 1, 1)
                if layer.units == 1
                else (5, layer.kernel.shape[0], layer.units)
            )
        else:
            t, i, o = shapes[kind]
        if kind == "Embedding":
            x = rng.integers(0, 9, size=(n, t, 1)).astype("float32")
            dx = np.zeros_like(x)
        else:
            x, dx = rng.normal(size=(2, n, t, i)).astype("float32")
        d, dd = rng.normal(size=(2, n, t, o)).astype("float32")
        live.append((x, d))
        rows.append((x, dx, d, dd))
    center = [
        rng.normal(size=v.shape).astype("float32") for v in model.trainable_variables
    ]
    frequencies = rng.uniform(0.5, 2.0, size=n).astype("float32")
    return live, rows, center, frequencies


def _tensors(structure):
    return keras.tree.map_structure(keras.ops.convert_to_tensor, structure)


def _value(factors, live, rows, center, frequencies):
    arguments = _tensors((live, rows, center, frequencies))
    return float(keras.ops.convert_to_numpy(factors.contraction(*arguments)))


def test_contraction_gradient_is_the_contractions_gradient(route):
    model, factors = _all_kinds()
    rng = np.random.default_rng(0)
    live, rows, center, frequencies = _random_factors(rng, model, factors)
    got = factors.contraction_gradient(*_tensors((live, rows, center, frequencies)))
    # Along a random direction e (none in the ids): the contraction is
    # quadratic in (x, d), so its central difference is its derivative.
    directions = []
    for (x, d), kind in zip(live, factors.kinds):
        ex = (
            np.zeros_like(x)
            if type(kind).__name__ == "_EmbeddingKind"
            else rng.normal(size=x.shape)
        )
        directions.append(
            (ex.astype("float32"), rng.normal(size=d.shape).astype("float32"))
        )
    plus = [(x + ex, d + ed) for (x, d), (ex, ed) in zip(live, directions)]
    minus = [(x - ex, d - ed) for (x, d), (ex, ed) in zip(live, directions)]
    expected = (
        _value(factors, plus, rows, center, frequencies)
        - _value(factors, minus, rows, center, frequencies)
    ) / 2
    derivative = 0.0
    for (gx, gd), (ex, ed) in zip(got, directions):
        if gx is not None:
            derivative += float(np.sum(keras.ops.convert_to_numpy(gx) * ex))
        derivative += float(np.sum(keras.ops.convert_to_numpy(gd) * ed))
    assert got[0][0] is None  # the Embedding's ids
    assert abs(derivative - expected) <= 1e-4 * abs(expected)


def test_batch_tangent_is_the_batch_gradients_tangent(route):
    # <sum_i c_i g_i, C> is minus the contraction without rows; its
    # derivative along the rows' tangents (x', d') is <batch_tangent, C>.
    model, factors = _all_kinds()
    rng = np.random.default_rng(1)
    live, rows, center, frequencies = _random_factors(rng, model, factors)
    got = factors.batch_tangent(*_tensors((rows, frequencies)), len(center))
    no_rows = [tuple(np.zeros_like(t) for t in r) for r in rows]

    def batch_gradient_along_center(t):
        moved = [(x + t * dx, d + t * dd) for x, dx, d, dd in rows]
        return -_value(factors, moved, no_rows, center, frequencies)

    expected = (
        batch_gradient_along_center(1.0) - batch_gradient_along_center(-1.0)
    ) / 2
    derivative = sum(
        float(np.sum(keras.ops.convert_to_numpy(g) * c)) for g, c in zip(got, center)
    )
    assert [tuple(g.shape) for g in got] == [c.shape for c in center]
    assert abs(derivative - expected) <= 1e-4 * abs(expected)


def _spy(monkeypatch, op):
    calls = []
    drive = op._fn.drive_square_gap

    def spied(*args):
        ran = drive(*args)
        calls.append(ran)
        return ran

    monkeypatch.setattr(op._fn, "drive_square_gap", spied)
    return calls


def _top(matrix):
    return np.linalg.eigvalsh(matrix)[-1]


@driving_backends
@pytest.mark.parametrize(
    "name", ["transformer_block", "embedding", "multi_output_dict"]
)
def test_driven_non_uniformity_equals_dense(monkeypatch, name):
    _, model, x, y, hessians = build(name)
    op = CurvatureOperator(model, (x, y))
    op._fn._structured = None  # the functions are cached per model
    calls = _spy(monkeypatch, op)
    first = hessian.non_uniformity_estimate(op, order=2, tol=1e-6)
    second = hessian.non_uniformity_estimate(op, order=2, tol=1e-6)
    expected = _top(dense_gap(hessians))
    assert abs(first.eigenvalues[0] - expected) <= 1e-4 * abs(expected)
    # Driven, a call does not depend on what ran before it.
    np.testing.assert_array_equal(first.eigenvalues, second.eigenvalues)
    assert calls == [True, True] and op._drive_agrees is True


@driving_backends
def test_driven_steps_equal_one_moment_gap_each(monkeypatch):
    _, model, x, y, _ = build("transformer_block")
    op = CurvatureOperator(model, (x, y))
    op._fn._structured = None
    v0 = np.random.default_rng(3).normal(size=op.dim)
    plain = solvers.lanczos(lambda v: op.moment_gap(v, 2), op.dim, 2, v0=v0, tol=1e-8)
    driven = solvers.lanczos(op.moment_gaps(2), op.dim, 2, v0=v0, tol=1e-8)
    np.testing.assert_allclose(driven.eigenvalues, plain.eigenvalues, rtol=1e-5)
    assert driven.iterations == plain.iterations


@driving_backends
def test_driven_with_per_token_weights_equals_dense():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((3, 2))
    h = keras.layers.Dense(2, activation="tanh")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(4)(h))
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 3, 2)).astype("float32")
    y = rng.integers(0, 4, size=(4, 3))
    mask = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0.5, 2, 0]], "float32")
    hessians = per_example_hessians(model, x, y, sample_weight=mask)
    op = CurvatureOperator(model, (x, y, mask))
    result = hessian.non_uniformity_estimate(op, order=2, tol=1e-6)
    expected = _top(dense_gap(hessians))
    assert abs(result.eigenvalues[0] - expected) <= 1e-4 * abs(expected)
    assert op._drive_agrees is True


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(
            "transformer_block",
            marks=pytest.mark.skipif(
                keras.backend.backend() != "torch", reason="driven on PyTorch only"
            ),
        ),
        "multi_output_dict",
    ],
)
def test_several_chunks(monkeypatch, name):
    # PyTorch drives every chunk's graph (the center summed from all their
    # rows first); JAX drives one chunk only; TensorFlow none.
    _, model, x, y, hessians = build(name)
    op = CurvatureOperator(model, (x, y), chunk_size=3)
    op._fn._structured = None
    calls = _spy(monkeypatch, op)
    result = hessian.non_uniformity_estimate(op, order=2, tol=1e-6)
    expected = _top(dense_gap(hessians))
    assert abs(result.eigenvalues[0] - expected) <= 1e-4 * abs(expected)
    driven = keras.backend.backend() == "torch"
    assert calls == [driven] and op._drive_agrees is (True if driven else None)


@driving_backends
def test_a_loop_that_disagrees_is_not_used(monkeypatch):
    # Mutation check: a center 10% off in the loop only (a model of its own
    # shapes: a fresh trace of the patched center).
    keras.utils.set_random_seed(11)
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(5, activation="tanh"),
            keras.layers.Dense(2),
        ]
    )
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(4)
    x = rng.normal(size=(4, 3)).astype("float32")
    y = rng.integers(0, 2, size=4)
    right = LayerFactors.batch_tangent
    monkeypatch.setattr(
        LayerFactors,
        "batch_tangent",
        lambda self, *a: [t * 1.1 for t in right(self, *a)],
    )
    op = CurvatureOperator(model, (x, y))
    calls = _spy(monkeypatch, op)
    v0 = rng.normal(size=op.dim)
    driven = solvers.lanczos(op.moment_gaps(2), op.dim, v0=v0, tol=1e-8)
    plain = solvers.lanczos(lambda v: op.moment_gap(v, 2), op.dim, v0=v0, tol=1e-8)
    assert calls == [True] and op._drive_agrees is False
    np.testing.assert_allclose(driven.eigenvalues, plain.eigenvalues, rtol=1e-6)
    expected = _top(dense_gap(per_example_hessians(model, x, y)))
    assert abs(driven.eigenvalues[0] - expected) <= 1e-4 * abs(expected)
    hessian.non_uniformity_estimate(op, order=2)
    assert calls == [True]  # not tried again


@driving_backends
def test_a_loop_that_fails_is_not_used(monkeypatch):
    _, model, x, y, hessians = build("multi_output_dict")
    op = CurvatureOperator(model, (x, y))
    op._fn._structured = None

    def fails(*args):
        raise RuntimeError("no third derivative here")

    monkeypatch.setattr(op._fn, "drive_square_gap", fails)
    result = hessian.non_uniformity_estimate(op, order=2, tol=1e-6)
    expected = _top(dense_gap(hessians))
    assert abs(result.eigenvalues[0] - expected) <= 1e-4 * abs(expected)
    assert op._drive_agrees is False

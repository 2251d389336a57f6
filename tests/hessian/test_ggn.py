"""The Gauss-Newton operator (``curvature="ggn"``) against a dense
``sum_i w_i J_i^T Q_i J_i / n``: J_i from plain autodiff of the model's
outputs (`references.output_jacobians`), Q_i, the loss's Hessian in the
outputs, in closed form (NumPy)."""

import keras
import numpy as np
import pytest

from keras_sam import hessian
from keras_sam.hessian import CurvatureOperator
from tests.hessian.references import output_jacobians


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def dense_ggn(model, x, kind, weights=None):
    """``sum_i w_i J_i^T Q_i J_i / n`` for Keras's mean loss."""
    jac = output_jacobians(model, x)
    n, outputs, _ = jac.shape
    z = np.asarray(keras.ops.convert_to_numpy(model(x)), np.float64)
    if kind == "sparse_ce_logits":
        p = _softmax(z)
        q = np.stack([np.diag(pi) - np.outer(pi, pi) for pi in p])
    else:  # mean squared error over the outputs
        q = np.broadcast_to(2.0 / outputs * np.eye(outputs), (n, outputs, outputs))
    w = np.ones(n) if weights is None else np.asarray(weights, np.float64)
    return np.einsum("i,iop,ioq,iqr->pr", w, jac, q, jac) / n


def _matrix(op):
    return np.stack([op.hvp(e) for e in np.eye(op.dim)], 1)


@pytest.fixture(params=["classifier", "regressor"])
def ggn_case(request):
    case = request.getfixturevalue(request.param)
    kind = "sparse_ce_logits" if request.param == "classifier" else "mse"
    return case, kind


def test_ggn_products_equal_dense(ggn_case):
    case, kind = ggn_case
    weights = np.linspace(0.5, 1.5, len(case.x)).astype("float32")
    for w in (None, weights):
        data = (case.x, case.y) if w is None else (case.x, case.y, w)
        op = CurvatureOperator(case.model, data, curvature="ggn")
        g = dense_ggn(case.model, case.x, kind, w)
        v = np.random.default_rng(0).standard_normal(op.dim)
        got = op.hvp(v)
        assert np.linalg.norm(got - g @ v) <= 1e-4 * np.linalg.norm(g @ v)
    # Positive semidefinite and symmetric, as products; not the Hessian.
    m = _matrix(op)
    np.testing.assert_allclose(m, m.T, atol=1e-5 * np.abs(m).max())
    assert np.linalg.eigvalsh(0.5 * (m + m.T))[0] >= -1e-5 * np.abs(m).max()
    assert np.linalg.norm(m - case.h) > 1e-2 * np.linalg.norm(case.h)


def test_ggn_measures_equal_dense(ggn_case):
    case, kind = ggn_case
    g = dense_ggn(case.model, case.x, kind)
    data = (case.x, case.y)
    top = hessian.sharpness(case.model, data, curvature="ggn", tol=1e-6)
    assert top == pytest.approx(np.linalg.eigvalsh(g)[-1], rel=1e-4)
    result = hessian.sharpness_estimate(
        case.model, data, k=2, curvature="ggn", tol=1e-6
    )
    np.testing.assert_allclose(
        result.eigenvalues, np.linalg.eigvalsh(g)[::-1][:2], rtol=1e-4
    )
    trace = hessian.trace(case.model, data, method="exact", curvature="ggn")
    assert trace == pytest.approx(np.trace(g), rel=1e-4)


def test_ggn_equals_hessian_of_a_linear_model():
    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(3)
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.compile(loss="mse")
    data = (
        rng.normal(size=(8, 3)).astype("float32"),
        rng.normal(size=(8, 2)).astype("float32"),
    )
    ggn = CurvatureOperator(model, data, curvature="ggn")
    h = CurvatureOperator(model, data)
    np.testing.assert_allclose(_matrix(ggn), _matrix(h), atol=1e-5)


def test_ggn_refuses_what_it_does_not_compute(regressor):
    data = (regressor.x, regressor.y)
    with pytest.raises(ValueError, match="`curvature`"):
        CurvatureOperator(regressor.model, data, curvature="gauss-newton")
    with pytest.raises(ValueError, match="`regularization`"):
        CurvatureOperator(regressor.model, data, curvature="ggn", regularization=True)
    op = CurvatureOperator(regressor.model, data, curvature="ggn")
    with pytest.raises(ValueError, match="curvature='hessian'"):
        hessian.non_uniformity(op)

"""Public measures against NumPy on dense Hessians, and a closed form."""

import inspect

import keras
import numpy as np
import pytest

import keras_sam
from keras_sam import hessian
from keras_sam.hessian import CurvatureOperator, measures
from tests.hessian import references
from tests.hessian.references import BACKEND


def test_sharpness_matches_dense_top_eigenvalue(case):
    exact = np.linalg.eigvalsh(case.h)[-1]
    a = hessian.sharpness(case.model, (case.x, case.y), batch_size=5, tol=1e-6)
    assert abs(a - exact) <= 1e-4 * abs(exact)
    # The second eigenvalue to 1e-4 needs a tighter stopping rule than the
    # default (1e-3 relative to the top one).
    result = hessian.sharpness_estimate(case.model, (case.x, case.y), k=2, tol=1e-6)
    np.testing.assert_allclose(
        result.eigenvalues, np.linalg.eigvalsh(case.h)[::-1][:2], rtol=1e-4
    )
    v = result.eigenvectors[:, 0]
    true_res = np.linalg.norm(case.h @ v - result.eigenvalues[0] * v)
    assert result.residuals[0] == pytest.approx(true_res, abs=1e-4 * abs(exact))


def test_trace_within_reported_error(case):
    exact = np.trace(case.h)
    data = (case.x, case.y)
    # The estimators are NumPy over the products: their statistics once.
    methods = ("hutchinson", "hutchpp") if BACKEND == "tensorflow" else ()
    for method in methods:
        result = hessian.trace_estimate(case.model, data, method=method, num_samples=30)
        assert result.stderr > 0
        assert abs(result.estimate - exact) <= 3 * result.stderr
    assert hessian.trace(case.model, data, method="exact") == pytest.approx(
        exact, rel=1e-5
    )


@pytest.mark.parametrize("order", [2, 3, 4])
def test_non_uniformity_equals_numpy(classifier, order):
    c = classifier
    m_k = np.mean([np.linalg.matrix_power(h, order) for h in c.hessians], axis=0)
    gap = m_k - np.linalg.matrix_power(c.h, order)
    top = np.linalg.eigvalsh(gap)[-1]
    expected = np.sign(top) * abs(top) ** (1 / order)
    s = hessian.non_uniformity(c.model, (c.x, c.y), order=order, chunk_size=5)
    assert s == pytest.approx(expected, rel=1e-4)


def test_non_uniformity_regressor_s2(regressor):
    c = regressor
    gap = np.mean([h @ h for h in c.hessians], axis=0) - c.h @ c.h
    expected = np.sqrt(np.linalg.eigvalsh(gap)[-1])
    s2 = hessian.non_uniformity(c.model, (c.x, c.y), tol=1e-6)
    assert s2 == pytest.approx(expected, rel=1e-4)


def test_non_uniformity_starts_agree(classifier):
    # Both starts reach the dense s_2; the Hessian start is the Hessian's
    # top eigenvector plus a random part of norm 0.3.
    c = classifier
    gap = np.mean([h @ h for h in c.hessians], axis=0) - c.h @ c.h
    expected = np.sqrt(np.linalg.eigvalsh(gap)[-1])
    for start in ("hessian", "random"):
        s2 = hessian.non_uniformity(c.model, (c.x, c.y), start=start, tol=1e-6)
        assert s2 == pytest.approx(expected, rel=1e-4)
    top = np.linalg.eigh(c.h)[1][:, -1]
    v = hessian.hessian_start(top * 5.0, seed=3)
    assert np.linalg.norm(v - top) == pytest.approx(0.3)
    # A zero vector gives the random part alone.
    assert np.linalg.norm(hessian.hessian_start(np.zeros(4))) == pytest.approx(0.3)


def test_stability_ratios_hand_computed():
    lr, rho, a, s2, s3, s4 = 0.1, 0.02, 12.0, 9.0, 5.0, 4.0
    ratios = hessian.stability_ratios(lr, rho, a, s2, s3, s4)
    assert ratios["sharpness"] == pytest.approx(a * (1 + rho * a) / (2 / lr))
    assert ratios["s2"] == pytest.approx(s2**2 / (1 / (lr * (lr - 2 * rho))))
    assert ratios["s3"] == pytest.approx(s3**3 / (1 / (2 * lr**2 * rho)))
    assert ratios["s4"] == pytest.approx(s4**4 / (1 / (lr**2 * rho**2)))
    sgd = hessian.stability_ratios(lr, 0.0, a, s2, s3, s4)
    assert sgd["sharpness"] == pytest.approx(a / (2 / lr))
    assert sgd["s2"] == pytest.approx((s2 / (1 / lr)) ** 2)
    assert sgd["s3"] == 0 and sgd["s4"] == 0
    # lr <= 2 rho: the s2 condition is vacuous.
    assert hessian.stability_ratios(0.1, 0.05, a, s2)["s2"] <= 0


@pytest.mark.backends("tensorflow")  # NumPy over sharpness / non_uniformity
def test_stability_margins_use_optimizer_lr_and_model_rho(classifier):
    c = classifier
    data = (c.x, c.y)
    a = hessian.sharpness(c.model, data)
    s = {k: hessian.non_uniformity(c.model, data, order=k) for k in (2, 3, 4)}
    sgd = hessian.stability_margins(c.model, data)
    assert sgd.lr == pytest.approx(0.1) and sgd.rho == 0.0
    assert set(sgd.ratios) == {"sharpness", "s2"}
    assert sgd.ratios["sharpness"] == pytest.approx(a * 0.1 / 2, rel=1e-5)
    assert sgd.ratios["s2"] == pytest.approx(s[2] ** 2 * 0.1**2, rel=1e-5)
    wrapped = keras_sam.sam(c.model, rho=0.01)
    wrapped.compile(keras.optimizers.SGD(0.2), c.model.loss)
    sam = hessian.stability_margins(wrapped, data)
    expected = hessian.stability_ratios(0.2, 0.01, a, s[2], s[3], s[4])
    for name, value in expected.items():
        assert sam.ratios[name] == pytest.approx(value, rel=1e-4)
    assert sam.stable == all(v <= 1 for v in expected.values())


def test_closed_form_linear_regression():
    """Squared loss of a linear model: H = 2/n [X 1]^T [X 1] exactly."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(40, 3)).astype("float32") * np.array(
        [1.0, 2.0, 0.5], "float32"
    )
    y = rng.normal(size=(40, 1)).astype("float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.01), "mse")
    xb = np.concatenate([x, np.ones((40, 1))], axis=1).astype(np.float64)
    h = 2 * xb.T @ xb / 40  # weights in (kernel, bias) order
    data = (x, y)
    top = np.linalg.eigvalsh(h)[-1]
    # The default stops at a 1e-3 error bound; a tight tol to 1e-5.
    assert hessian.sharpness(model, data) == pytest.approx(top, rel=1e-3)
    assert hessian.sharpness(model, data, tol=1e-8) == pytest.approx(top, rel=1e-5)
    assert hessian.trace(model, data, method="exact") == pytest.approx(
        np.trace(h), rel=1e-5
    )
    # Per-example Hessians 2 x_i x_i^T: M2 = mean 4 |x_i|^2 x_i x_i^T.
    m2 = np.mean([4 * (r @ r) * np.outer(r, r) for r in xb], axis=0)
    expected = np.sqrt(np.linalg.eigvalsh(m2 - h @ h)[-1])
    assert hessian.non_uniformity(model, data) == pytest.approx(expected, rel=1e-4)


def test_spectral_density_nodes_are_eigenvalues(regressor):
    c = regressor
    result = hessian.spectral_density(c.model, (c.x, c.y), num_steps=c.dim, seed=1)
    exact = np.linalg.eigvalsh(c.h)
    nodes = result.nodes[0][np.isfinite(result.nodes[0])]
    # Every Ritz value of a full-length run is an eigenvalue.
    assert (
        np.abs(nodes[:, None] - exact[None, :]).min(axis=1).max() < 1e-4 * exact.max()
    )
    assert np.nansum(result.weights[0]) == pytest.approx(1.0)
    grid, density = result.density()
    assert grid.shape == density.shape


@pytest.mark.parametrize("batch_size", [None, 5])
def test_gradient_start_is_the_mean_loss_gradient(case, batch_size, monkeypatch):
    """The default start is built from the gradient (on one batch the one
    the shared products compute, on several `op.gradient()`), which is not
    counted as a product; the result still matches the dense Hessian."""
    sent = []
    original = measures.gradient_start

    def spy(gradient, seed=0):
        sent.append(np.array(gradient))
        return original(gradient, seed)

    monkeypatch.setattr(measures, "gradient_start", spy)
    op = CurvatureOperator(case.model, (case.x, case.y), batch_size=batch_size)
    result = hessian.sharpness_estimate(op, tol=1e-6)
    expected = references.gradient(case.model, case.x, case.y, case.loss_fn)
    assert len(sent) == 1
    np.testing.assert_allclose(sent[0], expected, rtol=1e-4, atol=1e-6)
    assert op.num_products == result.iterations
    top = np.linalg.eigvalsh(case.h)[-1]
    assert result.eigenvalues[0] == pytest.approx(top, rel=1e-4)


def test_gradient_start_vector():
    rng = np.random.default_rng(0)
    g = rng.normal(size=50)
    v = measures.gradient_start(g, seed=3)
    # g / |g| plus a unit Rademacher vector: entries +-1/sqrt(50) apart.
    np.testing.assert_allclose(np.abs(v - g / np.linalg.norm(g)), 50**-0.5)
    for degenerate in (np.zeros(50), np.full(50, np.nan)):
        z = measures.gradient_start(degenerate, seed=3)
        np.testing.assert_allclose(np.abs(z), 50**-0.5)
        np.testing.assert_allclose(z, v - g / np.linalg.norm(g))


def test_random_start_is_lanczos_with_its_seed(regressor):
    c = regressor
    op = CurvatureOperator(c.model, (c.x, c.y))
    got = hessian.sharpness_estimate(op, start="random", seed=4)
    expected = hessian.solvers.lanczos(op.matvec, op.dim, seed=4)
    assert got.iterations == expected.iterations
    np.testing.assert_allclose(got.eigenvalues, expected.eigenvalues, rtol=1e-12)


def test_operator_can_be_shared(regressor):
    c = regressor
    op = CurvatureOperator(c.model, (c.x, c.y))
    top = np.linalg.eigvalsh(c.h)[-1]
    assert hessian.sharpness(op, tol=1e-6) == pytest.approx(top, rel=1e-4)
    with pytest.raises(ValueError, match="`data`"):
        hessian.sharpness(op, (c.x, c.y))


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda m, d: hessian.non_uniformity(m, d, order=5), "order"),
        (lambda m, d: hessian.non_uniformity(m, d, order=True), "order"),
        (lambda m, d: hessian.trace(m, d, method="exactly"), "method"),
        (lambda m, d: hessian.stability_margins(m, d, lr=-1.0), "lr"),
        (lambda m, d: hessian.stability_margins(m, d, lr=0.1, rho="0"), "rho"),
        (lambda m, d: hessian.sharpness(m, d, tol=0), "tol"),
        (lambda m, d: hessian.sharpness(m, d, start="gradients"), "start"),
        (lambda m, d: hessian.non_uniformity(m, d, start="gradient"), "start"),
        (lambda m, d: hessian.sharpness(m, d, training="no"), "training"),
        (lambda m, d: hessian.spectral_density(m, d, num_steps=0), "num_steps"),
    ],
)
def test_bad_arguments(regressor, call, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        call(regressor.model, (regressor.x, regressor.y))


FLOAT_AND_RESULT_FORMS = [
    (hessian.sharpness, hessian.sharpness_estimate),
    (hessian.trace, hessian.trace_estimate),
    (hessian.non_uniformity, hessian.non_uniformity_estimate),
]


@pytest.mark.parametrize("float_form, result_form", FLOAT_AND_RESULT_FORMS)
def test_float_and_result_forms_share_explicit_arguments(float_form, result_form):
    # The naming rule: ``X`` -> float, ``X_estimate`` -> result, with the
    # same arguments (``k`` aside), every one of them explicit.
    assert result_form.__name__ == float_form.__name__ + "_estimate"
    floats = inspect.signature(float_form).parameters
    results = inspect.signature(result_form).parameters
    assert set(results) - set(floats) <= {"k"}
    assert set(floats) <= set(results)
    for measure in (float_form, result_form):
        kinds = {p.kind for p in inspect.signature(measure).parameters.values()}
        assert inspect.Parameter.VAR_KEYWORD not in kinds
        assert "Returns:" in measure.__doc__ and "Raises:" in measure.__doc__


@pytest.mark.parametrize(
    "measure",
    [
        hessian.sharpness,
        hessian.sharpness_estimate,
        hessian.trace,
        hessian.trace_estimate,
        hessian.non_uniformity,
        hessian.non_uniformity_estimate,
        hessian.spectral_density,
        hessian.stability_margins,
    ],
)
def test_measures_take_every_operator_option(measure):
    parameters = inspect.signature(measure).parameters
    operator = inspect.signature(CurvatureOperator).parameters
    for name, default in measures._OPERATOR_DEFAULTS.items():
        assert parameters[name].default is default is operator[name].default


def test_float_forms_equal_their_result_forms(regressor):
    c = regressor
    op = CurvatureOperator(c.model, (c.x, c.y))
    result = hessian.sharpness_estimate(op, tol=1e-6)
    assert hessian.sharpness(op, tol=1e-6) == result.eigenvalues[0]
    gap = hessian.non_uniformity_estimate(op, order=3, seed=2).eigenvalues[0]
    s3 = hessian.non_uniformity(op, order=3, seed=2)
    assert s3 == pytest.approx(np.sign(gap) * abs(gap) ** (1 / 3), rel=1e-12)
    trace = hessian.trace_estimate(op, num_samples=12, rtol=None).estimate
    assert hessian.trace(op, num_samples=12, rtol=None) == trace


@pytest.mark.parametrize(
    "old, new, kwargs",
    [
        ("top_eigenvalues", "sharpness_estimate", {"k": 2, "tol": 1e-6}),
        ("non_uniformity_eigen", "non_uniformity_estimate", {"order": 2}),
    ],
)
def test_former_names_warn_and_give_the_new_result(regressor, old, new, kwargs):
    c = regressor
    op = CurvatureOperator(c.model, (c.x, c.y))
    with pytest.warns(DeprecationWarning, match=f"use `keras_sam.hessian.{new}`"):
        got = getattr(hessian, old)(op, **kwargs)
    expected = getattr(hessian, new)(op, **kwargs)
    np.testing.assert_array_equal(got.eigenvalues, expected.eigenvalues)
    assert old in hessian.__all__


def test_operator_options_are_refused_with_an_operator(regressor):
    c = regressor
    op = CurvatureOperator(c.model, (c.x, c.y))
    with pytest.raises(ValueError, match=r"\['training'\] must keep their defaults"):
        hessian.sharpness(op, training=True)
    with pytest.raises(ValueError, match="`data` must be None"):
        hessian.trace_estimate(op, (c.x, c.y))
    # A default given explicitly, as a string built at run time, is no change.
    built = "".join(["hess", "ian"])
    assert hessian.sharpness(op, curvature=built) == hessian.sharpness(op)
    with pytest.raises(ValueError, match=r"\['curvature'\] must keep"):
        hessian.sharpness(op, curvature="ggn")

"""Solvers against np.linalg on explicit matrices (no Keras)."""

import numpy as np
import pytest

from keras_sam.hessian import solvers


def random_symmetric(dim, seed, psd=False):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(dim, dim))
    return a @ a.T / dim if psd else (a + a.T) / 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lanczos_top_algebraic_eigenvalues(seed):
    a = random_symmetric(60, seed)  # indefinite
    exact = np.linalg.eigvalsh(a)[::-1]
    result = solvers.lanczos(lambda v: a @ v, 60, k=3, tol=1e-10, max_iter=60)
    np.testing.assert_allclose(result.eigenvalues, exact[:3], rtol=1e-8)
    true_res = np.linalg.norm(
        a @ result.eigenvectors - result.eigenvectors * result.eigenvalues, axis=0
    )
    np.testing.assert_allclose(result.residuals, true_res, atol=1e-8)
    assert result.converged


def test_lanczos_reports_residual_when_stopped_early():
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.normal(size=(400, 400)))
    eig = np.concatenate([[10.0, 9.0], rng.uniform(-1, 1, 398)])
    a = (q * eig) @ q.T
    result = solvers.lanczos(lambda v: a @ v, 400, tol=1e-6)
    v = result.eigenvectors[:, 0]
    assert result.iterations < 100 and result.converged
    true_res = np.linalg.norm(a @ v - result.eigenvalues[0] * v)
    np.testing.assert_allclose(result.residuals[0], true_res, rtol=1e-4, atol=1e-10)
    assert abs(result.eigenvalues[0] - 10.0) <= result.residuals[0]


@pytest.mark.parametrize("seed", range(5))
def test_lanczos_default_stop_meets_its_accuracy(seed):
    """The default rule (error bound <= 1e-3 once the Ritz values settle)
    gives eigenvalues within 1e-3, bounded by the reported error_bounds,
    in far fewer steps than a 1e-8 residual."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(300, 300)))
    eig = np.concatenate([[5.0, 4.0, 3.5], rng.exponential(0.3, 297)])
    a = (q * eig) @ q.T
    result = solvers.lanczos(lambda v: a @ v, 300, seed=seed)
    error = abs(result.eigenvalues[0] - 5.0)
    assert result.converged and error <= 1e-3 * 5.0
    assert error <= result.error_bounds[0] + 1e-12
    tight = solvers.lanczos(lambda v: a @ v, 300, tol=1e-8, seed=seed)
    assert result.iterations < tight.iterations


def test_lanczos_warm_start_converges_at_once():
    a = random_symmetric(50, 4)
    w, vecs = np.linalg.eigh(a)
    result = solvers.lanczos(lambda v: a @ v, 50, v0=vecs[:, -1], tol=1e-8)
    assert result.iterations == 1
    np.testing.assert_allclose(result.eigenvalues[0], w[-1], rtol=1e-10)


def test_power_iteration_matches_largest_magnitude():
    a = random_symmetric(40, 5, psd=True)
    result = solvers.power_iteration(lambda v: a @ v, 40, tol=1e-9, max_iter=5000)
    np.testing.assert_allclose(
        result.eigenvalues[0], np.linalg.eigvalsh(a)[-1], rtol=1e-5
    )


def test_hutchinson_within_error_and_stderr_shrinks():
    a = random_symmetric(80, 6, psd=True) + np.diag(np.linspace(0, 3, 80))
    few = solvers.hutchinson(lambda v: a @ v, 80, 30, seed=1)
    many = solvers.hutchinson(lambda v: a @ v, 80, 600, seed=1)
    exact = np.trace(a)
    assert abs(few.estimate - exact) <= 4 * few.stderr
    assert abs(many.estimate - exact) <= 4 * many.stderr
    assert many.stderr < few.stderr
    # Rademacher probes: the diagonal contributes exactly, so a diagonal
    # matrix has zero variance.
    d = np.diag(np.arange(5.0))
    exact_diag = solvers.hutchinson(lambda v: d @ v, 5, 7)
    assert exact_diag.estimate == pytest.approx(10.0) and exact_diag.stderr == 0


def test_hutchinson_stops_on_relative_standard_error():
    a = random_symmetric(80, 6, psd=True) + np.diag(np.linspace(0, 3, 80))
    result = solvers.hutchinson(lambda v: a @ v, 80, 2000, rtol=0.004, seed=1)
    assert 10 < result.matvecs < 2000
    assert result.stderr <= 0.004 * abs(result.estimate)
    # One probe fewer had not reached the target.
    fewer = solvers.hutchinson(lambda v: a @ v, 80, result.matvecs - 1, seed=1)
    assert fewer.stderr > 0.004 * abs(fewer.estimate)
    assert abs(result.estimate - np.trace(a)) <= 4 * result.stderr


def test_hutchpp_exact_on_low_rank_and_within_error():
    rng = np.random.default_rng(7)
    u = rng.normal(size=(100, 5))
    low_rank = u @ u.T
    result = solvers.hutchpp(lambda v: low_rank @ v, 100, 30)
    np.testing.assert_allclose(result.estimate, np.trace(low_rank), rtol=1e-8)
    a = low_rank + random_symmetric(100, 8, psd=True)
    result = solvers.hutchpp(lambda v: a @ v, 100, 60)
    assert result.matvecs == 60
    assert abs(result.estimate - np.trace(a)) <= 4 * result.stderr


def test_slq_full_steps_recovers_spectrum_and_moments():
    a = random_symmetric(30, 9)
    result = solvers.slq(lambda v: a @ v, 30, num_probes=3, num_steps=30, seed=2)
    exact = np.linalg.eigvalsh(a)
    for p in range(3):
        np.testing.assert_allclose(np.sort(result.nodes[p]), exact, atol=1e-8)
        np.testing.assert_allclose(result.weights[p].sum(), 1.0)
    # Quadrature of x -> x is z^T A z / z^T z with the probes drawn by slq.
    grid, density = result.density(num=4000)
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-3)
    mean = np.nansum(result.nodes * result.weights) / 3
    assert mean == pytest.approx(np.trace(a) / 30, abs=3 * np.abs(exact).max() / 5)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: solvers.lanczos(lambda v: v, 5, k=0), "k"),
        (lambda: solvers.lanczos(lambda v: v, 5, k=6), "k"),
        (lambda: solvers.lanczos(lambda v: v, 5, tol=-1), "tol"),
        (lambda: solvers.lanczos(lambda v: v, 5, v0=np.zeros(4)), "v0"),
        (lambda: solvers.power_iteration(lambda v: v, 0), "dim"),
        (
            lambda: solvers.hutchinson(lambda v: v, 5, distribution="normal"),
            "distribution",
        ),
        (lambda: solvers.hutchpp(lambda v: v, 5, 2), "num_matvecs"),
        (lambda: solvers.hutchpp(lambda v: v, 5, distribution="n"), "distribution"),
        (lambda: solvers.hutchinson(lambda v: v, 5, min_samples=1), "min_samples"),
        (lambda: solvers.slq(lambda v: v, 5, num_steps=1.5), "num_steps"),
    ],
)
def test_bad_arguments(call, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        call()


def test_borrowed_buffers_are_reused_and_distinct(monkeypatch):
    monkeypatch.setattr(solvers, "_spare", [])
    first = solvers._borrow(1000)
    solvers._give_back(first[:10].reshape(2, 5))  # a view returns its base
    again = solvers._borrow(800)
    assert again.base is first
    other = solvers._borrow(800)  # lent out: a new one
    assert not np.shares_memory(again, other)
    solvers._give_back(again)
    solvers._give_back(other)


def test_lanczos_after_a_larger_run_reuses_its_buffer_correctly():
    # Runs of different sizes in turn (the buffer grown past its first 16
    # rows, then lent again with stale contents) give exact results.
    for dim in (60, 20, 60):
        a = random_symmetric(dim, dim)
        result = solvers.lanczos(a.__matmul__, dim, k=2, tol=1e-10, max_iter=dim)
        np.testing.assert_allclose(
            result.eigenvalues, np.linalg.eigvalsh(a)[::-1][:2], rtol=1e-8
        )

"""Eigenvalue, trace and spectral-density solvers for symmetric operators.

Every solver takes ``matvec``, any callable mapping a flat float64 NumPy
vector of length ``dim`` to ``A @ v`` for a symmetric ``A``, and knows nothing
of Keras. All arithmetic here is float64.

```python
import numpy as np
from keras_sam.hessian import solvers

a = np.diag(np.arange(10.0))
result = solvers.lanczos(lambda v: a @ v, dim=10)
result.eigenvalues[0]  # 9.0
```

Each solver is a generator of steps (``w = yield v``: it yields the vector
it wants multiplied and is sent the product) run by `run`. A ``matvec`` with
a ``drive(steps)`` method (`keras_sam.hessian.CurvatureOperator.matvec`)
runs the whole generator itself: there every product of one call shares one
forward and first backward pass.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Generator

import numpy as np

from keras_sam._validation import int_at_least, one_of, positive_float, positive_int

Matvec = Callable[[np.ndarray], np.ndarray]
#: A solver's steps: yields a vector, is sent its product, returns the result.
Steps = Generator[np.ndarray, np.ndarray, object]

__all__ = [
    "EigenResult",
    "SLQResult",
    "TraceResult",
    "hutchinson",
    "hutchpp",
    "lanczos",
    "power_iteration",
    "run",
    "slq",
]


@dataclasses.dataclass
class EigenResult:
    """Top eigenpairs of a symmetric operator.

    Attributes:
        eigenvalues: largest algebraic eigenvalues, in decreasing order.
        eigenvectors: unit eigenvectors as columns, shape ``(dim, k)``.
        residuals: ``||A v - lambda v||`` for each pair.
        iterations: number of products with ``A`` used.
        converged: whether every pair met the tolerance.
        error_bounds: bounds on ``|lambda - theta|`` for each eigenvalue
            (Lanczos: ``min(r, r^2 / gap)``; power iteration: the residual).
    """

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    residuals: np.ndarray
    iterations: int
    converged: bool
    error_bounds: np.ndarray | None = None


@dataclasses.dataclass
class TraceResult:
    """A stochastic trace estimate with its standard error.

    Attributes:
        estimate: the trace estimate.
        stderr: its standard error (0 when the estimate is exact).
        matvecs: number of products with the operator used.
    """

    estimate: float
    stderr: float
    matvecs: int


@dataclasses.dataclass
class SLQResult:
    """Stochastic Lanczos quadrature nodes and weights, one row per probe.

    Attributes:
        nodes: Ritz values, shape ``(num_probes, steps)`` (NaN-padded when a
            probe's Krylov space closed early).
        weights: quadrature weights, same shape, each row summing to 1.
        dim: dimension of the operator (the density integrates to ``dim``
            when multiplied by it).
    """

    nodes: np.ndarray
    weights: np.ndarray
    dim: int

    def density(
        self, grid: np.ndarray | None = None, sigma: float | None = None, num=1000
    ) -> tuple[np.ndarray, np.ndarray]:
        """Gaussian-smoothed spectral density ``(grid, density)`` (integral 1)."""
        nodes = self.nodes[np.isfinite(self.nodes)]
        weights = self.weights[np.isfinite(self.nodes)] / self.nodes.shape[0]
        lo, hi = float(nodes.min()), float(nodes.max())
        span = max(hi - lo, 1e-12 * max(abs(lo), abs(hi), 1.0))
        if sigma is None:
            sigma = 0.01 * span
        if grid is None:
            grid = np.linspace(lo - 3 * sigma, hi + 3 * sigma, num)
        diff = (grid[:, None] - nodes[None, :]) / sigma
        kernel = np.exp(-0.5 * diff**2) / (sigma * np.sqrt(2 * np.pi))
        return grid, kernel @ weights


def _start_vector(dim: int, v0, rng: np.random.Generator) -> np.ndarray:
    if v0 is None:
        v = rng.standard_normal(dim)
    else:
        v = np.asarray(v0, dtype=np.float64).reshape(-1)
        if v.shape != (dim,):
            raise ValueError(f"`v0` must have shape ({dim},), got {v.shape}.")
        if not _norm(v) > 0:
            raise ValueError("`v0` must be a nonzero vector.")
    return v / _norm(v)


# Vector arithmetic by einsum, not BLAS: multithreaded BLAS on vectors of a
# few hundred thousand entries, beside TensorFlow's busy thread pool, was up to
# 30x slower (14 ms for one dot product on 2 cores) than one thread.
def _dot(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.einsum("i,i->", a, b))


def _norm(a: np.ndarray) -> float:
    return float(np.sqrt(_dot(a, a)))


def _reorthogonalize(basis: np.ndarray, w: np.ndarray, scratch: np.ndarray):
    """``w -= Q^T (Q w)`` in place for the rows Q of ``basis``; returns
    the coefficients ``Q w``."""
    coefficients = np.einsum("ij,j->i", basis, w)
    np.einsum("i,ij->j", coefficients, basis, out=scratch)
    np.subtract(w, scratch, out=w)
    return coefficients


# Float64 buffers lent to one solver at a time and kept for the next call:
# first touching fresh memory (page faults; on a VM, up to milliseconds per
# megabyte, varying from process to process) cost more than the Lanczos
# arithmetic on it, and each call of a solver needs the same buffers again.
_SPARE_LIMIT_BYTES = 256 * 2**20
_SPARE_COUNT = 4
_spare: list[np.ndarray] = []
_spare_lock = threading.Lock()


def _borrow(size: int) -> np.ndarray:
    """A flat float64 buffer of at least ``size`` entries (contents
    undefined), the smallest spare one that fits, else a new one."""
    with _spare_lock:
        fitting = [i for i, a in enumerate(_spare) if a.size >= size]
        if fitting:
            return _spare.pop(min(fitting, key=lambda i: _spare[i].size))[:size]
    return np.empty(size)


def _give_back(buffer: np.ndarray) -> None:
    """Returns a buffer from `_borrow` (or a view of one) to the spares; the
    caller keeps no reference to it."""
    while buffer.base is not None:
        buffer = buffer.base
    if buffer.dtype != np.float64 or buffer.nbytes > _SPARE_LIMIT_BYTES:
        return
    with _spare_lock:
        if any(a is buffer for a in _spare):
            return
        _spare.append(buffer.reshape(-1))
        _spare.sort(key=lambda a: a.size, reverse=True)
        del _spare[_SPARE_COUNT:]


def _apply(matvec: Matvec, v: np.ndarray) -> np.ndarray:
    return np.asarray(matvec(v), dtype=np.float64).reshape(-1)


def _product(w) -> np.ndarray:
    return np.asarray(w, dtype=np.float64).reshape(-1)


def run(steps: Steps, matvec: Matvec):
    """Runs a solver's ``steps`` with ``matvec`` and returns its result:
    ``matvec.drive(steps)`` where ``matvec`` has one, else one ``matvec``
    call per step."""
    drive = getattr(matvec, "drive", None)
    if drive is not None:
        return drive(steps)
    try:
        v = next(steps)
        while True:
            # A copy: Lanczos yields rows of a buffer the next solver call
            # reuses, which a matvec keeping its argument must not see change.
            v = steps.send(_apply(matvec, np.array(v)))
    except StopIteration as stop:
        return stop.value


_SQRT_EPS = float(np.sqrt(np.finfo(np.float64).eps))
_INITIAL_ROWS = 16


def _lanczos_buffers(rows: int, dim: int):
    """Views of one borrowed buffer: ``rows`` basis rows, w, scratch."""
    store = _borrow((rows + 2) * dim)
    basis = store[: rows * dim].reshape(rows, dim)
    return basis, store[rows * dim : (rows + 1) * dim], store[(rows + 1) * dim :]


def _lanczos_basis(
    matvec: Matvec,
    v: np.ndarray,
    steps: int,
    stop: Callable[[np.ndarray, np.ndarray], bool] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """`_lanczos_basis_steps` run with ``matvec``."""
    return run(_lanczos_basis_steps(v, steps, stop), matvec)


def _lanczos_basis_steps(
    v: np.ndarray,
    steps: int,
    stop: Callable[[np.ndarray, np.ndarray], bool] | None = None,
) -> Steps:
    """Lanczos with full reorthogonalization from unit vector ``v``.

    Returns the basis ``Q`` (m x dim, one Lanczos vector per row), the
    diagonal ``alpha`` and off-diagonal ``beta`` of the tridiagonal T (len m
    and m), where beta[m-1] is the norm of the last residual, and the scale
    used for breakdown detection. ``stop(alpha, beta)`` is asked after each
    step.
    """
    dim = v.shape[0]
    steps = min(steps, dim)
    # Row-major and filled as it goes: the reorthogonalization reads the
    # first m rows as one contiguous block. The vector arithmetic is in place
    # on borrowed buffers (see `_borrow`): the basis rows, then w and a
    # scratch vector, in one; grown (copied) when the rows run out.
    rows = min(steps, _INITIAL_ROWS)
    basis, w, scratch = _lanczos_buffers(rows, dim)
    alpha = np.zeros(steps)
    beta = np.zeros(steps)
    basis[0] = v
    scale = 0.0
    m = 0
    for j in range(steps):
        m = j + 1
        np.copyto(w, _product((yield basis[j])))
        product_norm = _norm(w)
        # The three-term recurrence and the full reorthogonalization in one:
        # classical Gram-Schmidt against the whole basis (alpha_j = q_j . w
        # is its coefficient). One pass leaves w orthogonal to the basis up
        # to about eps |A q_j| / beta_j; a second pass runs only where that
        # exceeds sqrt(eps): semi-orthogonality keeps the Ritz values
        # accurate to eps (Simon 1984), and it is the cancellation case
        # where "twice is enough".
        alpha[j] = _reorthogonalize(basis[:m], w, scratch)[j]
        beta[j] = _norm(w)
        if beta[j] < _SQRT_EPS * product_norm:
            alpha[j] += _reorthogonalize(basis[:m], w, scratch)[j]
            beta[j] = _norm(w)
        scale = max(scale, abs(alpha[j]), beta[j])
        if stop is not None and stop(alpha[:m], beta[:m]):
            break
        if beta[j] <= 1e-10 * max(scale, 1e-300) or j + 1 == steps:
            break
        if m == rows:
            rows = min(2 * rows, steps)
            grown, grown_w, scratch = _lanczos_buffers(rows, dim)
            grown[:m] = basis[:m]
            np.copyto(grown_w, w)
            _give_back(basis)
            basis, w = grown, grown_w
        np.divide(w, beta[j], out=basis[j + 1])
    return basis[:m], alpha[:m], beta[:m], scale


def _tridiag_eigh(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m = alpha.shape[0]
    t = np.diag(alpha)
    if m > 1:
        t += np.diag(beta[: m - 1], 1) + np.diag(beta[: m - 1], -1)
    return np.linalg.eigh(t)


def _error_bounds(theta, s, beta, k) -> tuple[np.ndarray, np.ndarray]:
    """Residuals ``||A y - theta y|| = beta_m |s_m|`` of the top ``k`` Ritz
    pairs (exact for a fully reorthogonalized basis) and the eigenvalue error
    bounds ``min(r, r^2 / gap)`` (Saad, Numerical Methods for Large
    Eigenvalue Problems, Thm 3.9), gap a conservative distance to the rest
    of the spectrum: to each other Ritz value less that value's own residual
    (an eigenvalue lies within it), not to the Ritz value itself, which
    certified too little on the tests' zoo (1.4e-3 actual against 0.8e-3
    bounds at tol 1e-3)."""
    top = np.arange(theta.shape[0] - 1, theta.shape[0] - 1 - k, -1)
    all_residuals = np.abs(beta[-1] * s[-1, :])
    residuals = all_residuals[top]
    bounds = residuals.copy()
    if theta.shape[0] > 1:
        for i, j in enumerate(top):
            others = np.delete(np.arange(theta.shape[0]), j)
            gap = np.min(np.abs(theta[others] - theta[j]) - all_residuals[others])
            if gap > 0:
                bounds[i] = min(bounds[i], residuals[i] ** 2 / gap)
    return residuals, bounds


def lanczos(
    matvec: Matvec,
    dim: int,
    k: int = 1,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    v0: np.ndarray | None = None,
    seed: int | None = 0,
) -> EigenResult:
    """Largest algebraic eigenvalues of a symmetric operator by Lanczos.

    Uses full reorthogonalization. After each product it stops when, for
    every one of the ``k`` top Ritz values theta:

    - the error bound ``min(r, r^2 / gap)`` is at most ``tol * |theta_1|``
      (r the Ritz pair's residual norm, gap the distance to the nearest
      other Ritz value less that value's residual), and
    - theta moved by at most ``tol * |theta_1|`` in the last step (Lanczos
      converges about geometrically, so the step's change bounds the error
      still to come where the gap estimate is too optimistic: on the
      tests' zoo, the bound alone stopped at up to 1.3e-3 relative error
      for tol 1e-3; with both, at most 4.4e-4 over 100 random starts each,
      for about one product more);

    or when the Krylov space is exhausted, or after ``max_iter`` products.
    ``tol`` is thus the relative accuracy of the eigenvalues (default 1e-3;
    the reached bound is in ``error_bounds``). As for any Krylov method, a
    start nearly orthogonal to the top eigenvector can converge to the next
    one (1 in 600 random starts on the zoo); the gradient start of
    `keras_sam.hessian.sharpness` makes that unlikely.

    ```python
    result = lanczos(matvec, dim, k=2, v0=previous_vector)
    result.eigenvalues, result.error_bounds, result.iterations
    ```

    Args:
        matvec: ``v -> A v`` on float64 vectors of length ``dim``.
        dim: dimension of the operator.
        k: number of top eigenpairs.
        max_iter: most products with ``A``.
        tol: relative accuracy of the eigenvalues.
        v0: start vector (warm start, e.g. a previous top eigenvector).
        seed: seed of the random start vector when ``v0`` is None.
    """
    dim, k, max_iter, tol = _lanczos_options(dim, k, max_iter, tol)
    v = _start_vector(dim, v0, np.random.default_rng(seed))
    return run(_lanczos_steps(dim, k, max_iter, tol, v), matvec)


def _lanczos_options(dim, k, max_iter, tol) -> tuple[int, int, int, float]:
    dim = positive_int(dim, "dim")
    k = positive_int(k, "k")
    max_iter = positive_int(max_iter, "max_iter")
    tol = positive_float(tol, "tol")
    if k > dim:
        raise ValueError(f"`k` must be <= dim={dim}, got k={k}.")
    return dim, k, max_iter, tol


def _lanczos_steps(dim, k, max_iter, tol, v) -> Steps:
    tiny = np.finfo(np.float64).tiny
    previous: list[np.ndarray] = []

    def stop(alpha, beta):
        if alpha.shape[0] < k:
            return False
        theta, s = _tridiag_eigh(alpha, beta)
        values = theta[::-1][:k]
        scale = max(abs(values[0]), tiny)
        _, bounds = _error_bounds(theta, s, beta, k)
        settled = bool(previous) and previous[-1].shape[0] == k
        if settled:
            settled = np.all(np.abs(values - previous[-1]) <= tol * scale)
        previous.append(values)
        return bool(settled and np.all(bounds <= tol * scale))

    basis, alpha, beta, _ = yield from _lanczos_basis_steps(v, max(max_iter, k), stop)
    theta, s = _tridiag_eigh(alpha, beta)
    order = np.argsort(theta)[::-1][:k]
    vectors = np.einsum("ij,ik->jk", basis, s[:, order])
    _give_back(basis)
    vectors /= np.sqrt(np.einsum("ij,ij->j", vectors, vectors))
    residuals, bounds = _error_bounds(theta, s, beta, k)
    scale = max(abs(theta[order[0]]), tiny)
    exhausted = alpha.shape[0] == dim
    return EigenResult(
        eigenvalues=theta[order],
        eigenvectors=vectors,
        residuals=residuals,
        iterations=int(alpha.shape[0]),
        converged=bool(exhausted or np.all(bounds <= tol * scale)),
        error_bounds=np.zeros(k) if exhausted else bounds,
    )


def power_iteration(
    matvec: Matvec,
    dim: int,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    v0: np.ndarray | None = None,
    seed: int | None = 0,
) -> EigenResult:
    """Eigenvalue of largest magnitude by power iteration (PyHessian's rule).

    Stops when the Rayleigh quotient changes by less than
    ``tol * (|lambda| + 1e-6)`` between iterations (PyHessian defaults:
    100 iterations, tol 1e-3). The residual of the final pair is reported
    from the last product, so no extra product is spent.
    """
    dim = positive_int(dim, "dim")
    max_iter = positive_int(max_iter, "max_iter")
    tol = positive_float(tol, "tol")
    v = _start_vector(dim, v0, np.random.default_rng(seed))
    return run(_power_steps(v, max_iter, tol), matvec)


def _power_steps(v, max_iter, tol) -> Steps:
    eigenvalue = None
    residual = np.inf
    converged = False
    iterations = 0
    for _ in range(max_iter):
        w = _product((yield v))
        iterations += 1
        value = _dot(v, w)
        residual = _norm(w - value * v)
        if eigenvalue is not None and abs(value - eigenvalue) < tol * (
            abs(eigenvalue) + 1e-6
        ):
            eigenvalue = value
            converged = True
            break
        eigenvalue = value
        norm = _norm(w)
        if norm == 0:
            converged = True
            break
        v = w / norm
    return EigenResult(
        eigenvalues=np.array([eigenvalue]),
        eigenvectors=v[:, None],
        residuals=np.array([residual]),
        iterations=iterations,
        converged=converged,
        error_bounds=np.array([residual]),
    )


_DISTRIBUTIONS = ("rademacher", "gaussian")


def _probes(rng: np.random.Generator, dim: int, count: int, distribution: str):
    if one_of(distribution, "distribution", _DISTRIBUTIONS) == "rademacher":
        return rng.choice(np.array([-1.0, 1.0]), size=(dim, count))
    return rng.standard_normal((dim, count))


def hutchinson(
    matvec: Matvec,
    dim: int,
    num_samples: int = 100,
    *,
    rtol: float | None = None,
    min_samples: int = 10,
    distribution: str = "rademacher",
    seed: int | None = 0,
) -> TraceResult:
    """Hutchinson's trace estimate ``mean_j z_j^T A z_j`` with its standard
    error ``std_j / sqrt(m)`` over the m probes used.

    With ``rtol``, probes are drawn until the standard error is at most
    ``rtol * |estimate|`` (after at least ``min_samples``), or
    ``num_samples`` probes; without it, exactly ``num_samples``.

    ```python
    result = hutchinson(matvec, dim, num_samples=1000, rtol=0.01)
    result.estimate, result.stderr, result.matvecs
    ```
    """
    dim = positive_int(dim, "dim")
    num_samples = positive_int(num_samples, "num_samples")
    min_samples = int_at_least(min_samples, "min_samples", 2)
    if rtol is not None:
        rtol = positive_float(rtol, "rtol")
    one_of(distribution, "distribution", _DISTRIBUTIONS)
    steps = _hutchinson_steps(
        dim, num_samples, rtol, min_samples, distribution, np.random.default_rng(seed)
    )
    return run(steps, matvec)


def _hutchinson_steps(dim, num_samples, rtol, min_samples, distribution, rng) -> Steps:
    samples = []
    for j in range(num_samples):
        z = _probes(rng, dim, 1, distribution)[:, 0]
        samples.append(_dot(z, _product((yield z))))
        m = j + 1
        if rtol is not None and m >= min_samples:
            values = np.asarray(samples)
            stderr = values.std(ddof=1) / np.sqrt(m)
            if stderr <= rtol * abs(values.mean()):
                break
    values = np.asarray(samples)
    m = values.shape[0]
    stderr = values.std(ddof=1) / np.sqrt(m) if m > 1 else np.inf
    return TraceResult(float(values.mean()), float(stderr), m)


def hutchpp(
    matvec: Matvec,
    dim: int,
    num_matvecs: int = 102,
    *,
    distribution: str = "rademacher",
    seed: int | None = 0,
) -> TraceResult:
    """Hutch++ (Meyer et al. 2021): exact trace on a sketched top subspace
    plus Hutchinson on the rest. ``num_matvecs`` (>= 3) is split in thirds;
    the standard error is that of the Hutchinson part."""
    dim = positive_int(dim, "dim")
    num_matvecs = int_at_least(num_matvecs, "num_matvecs", 3)
    one_of(distribution, "distribution", _DISTRIBUTIONS)
    steps = _hutchpp_steps(dim, num_matvecs, distribution, np.random.default_rng(seed))
    return run(steps, matvec)


def _hutchpp_steps(dim, num_matvecs, distribution, rng) -> Steps:
    m = num_matvecs // 3
    sketch = _probes(rng, dim, min(m, dim), distribution)
    a_sketch = np.empty_like(sketch)
    for j in range(sketch.shape[1]):
        a_sketch[:, j] = _product((yield sketch[:, j]))
    q, _ = np.linalg.qr(a_sketch)
    aq = np.empty_like(q)
    for j in range(q.shape[1]):
        aq[:, j] = _product((yield np.ascontiguousarray(q[:, j])))
    top = float(np.trace(q.T @ aq))
    used = sketch.shape[1] + q.shape[1]
    rest = num_matvecs - used
    if q.shape[1] == dim:
        return TraceResult(top, 0.0, used)
    if rest < 1:
        return TraceResult(top, float("inf"), used)
    g = _probes(rng, dim, rest, distribution)
    g -= q @ (q.T @ g)
    samples = np.empty(rest)
    for j in range(rest):
        z = np.ascontiguousarray(g[:, j])
        samples[j] = z @ _product((yield z))
    stderr = samples.std(ddof=1) / np.sqrt(rest) if rest > 1 else np.inf
    return TraceResult(top + float(samples.mean()), float(stderr), num_matvecs)


def slq(
    matvec: Matvec,
    dim: int,
    num_probes: int = 1,
    num_steps: int = 100,
    *,
    seed: int | None = 0,
) -> SLQResult:
    """Stochastic Lanczos quadrature (PyHessian's spectral density).

    For each Rademacher probe, ``num_steps`` Lanczos steps (full
    reorthogonalization) give Ritz values (nodes) and the squared first
    components of the Ritz vectors (weights).
    """
    dim = positive_int(dim, "dim")
    num_probes = positive_int(num_probes, "num_probes")
    num_steps = positive_int(num_steps, "num_steps")
    return run(
        _slq_steps(dim, num_probes, num_steps, np.random.default_rng(seed)), matvec
    )


def _slq_steps(dim, num_probes, num_steps, rng) -> Steps:
    width = min(num_steps, dim)
    nodes = np.full((num_probes, width), np.nan)
    weights = np.full((num_probes, width), np.nan)
    for p in range(num_probes):
        z = _probes(rng, dim, 1, "rademacher")[:, 0]
        basis, alpha, beta, _ = yield from _lanczos_basis_steps(z / _norm(z), num_steps)
        _give_back(basis)
        theta, s = _tridiag_eigh(alpha, beta)
        nodes[p, : theta.shape[0]] = theta
        weights[p, : theta.shape[0]] = s[0, :] ** 2
    return SLQResult(nodes, weights, dim)

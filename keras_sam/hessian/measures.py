"""Curvature measures: operators from ``_operators`` fed to ``solvers``."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import keras
import numpy as np

from keras_sam._validation import non_negative_float, one_of, positive_float
from keras_sam.hessian import solvers
from keras_sam.hessian._operators import GRADIENT, CurvatureOperator

ORDERS = (2, 3, 4)
TRACE_METHODS = ("hutchinson", "hutchpp", "exact")
START_VECTORS = ("gradient", "random")
MOMENT_START_VECTORS = ("hessian", "random")

_OPERATOR_OPTIONS = (
    "loss",
    "loss_weights",
    "regularization",
    "class_weight",
    "training",
    "batch_size",
    "chunk_size",
    "vectorize",
    "jit_compile",
    "masked",
    "forward_over_reverse",
    "curvature",
)


def _operator(model, data, options: dict) -> CurvatureOperator:
    if isinstance(model, CurvatureOperator):
        if data is not None:
            raise ValueError("`data` must be None when `model` is a CurvatureOperator.")
        if options:
            raise ValueError(
                f"operator options {sorted(options)} must be None when `model` is "
                "a CurvatureOperator (they were fixed when it was built)."
            )
        return model
    return CurvatureOperator(model, data, **options)


def _split_options(options: dict) -> tuple[dict, dict]:
    op = {k: options.pop(k) for k in list(options) if k in _OPERATOR_OPTIONS}
    return op, options


def _check_order(order: Any) -> int:
    return int(one_of(order, "order", ORDERS))


def gradient_start(gradient: np.ndarray, seed: int | None = 0) -> np.ndarray:
    """Lanczos start vector ``g / |g| + z / |z|``: the mean-loss gradient g
    plus a random sign vector z (Rademacher) of equal norm.

    The gradient lies mostly in the top eigenspace of the Hessian (Gur-Ari,
    Roberts & Dyer 2018, "Gradient descent happens in a tiny subspace"), so
    Lanczos reaches the top eigenvalue in fewer products (LeNet-300-100 after
    training: 4 instead of 5-7); the random half keeps every direction
    present, so a gradient orthogonal to the top eigenvector costs no more
    than a random start. A zero or non-finite gradient gives z alone.

    ```python
    _, g = op.gradient()
    result = solvers.lanczos(op.matvec, op.dim, v0=gradient_start(g))
    ```
    """
    gradient = np.asarray(gradient, np.float64).reshape(-1)
    # Rademacher: isotropic enough for a start, and drawn 5x faster than a
    # Gaussian (2.5 ms for 0.27m entries).
    v = np.random.default_rng(seed).integers(0, 2, gradient.shape[0], np.int8)
    v = v.astype(np.float64)
    v *= 2.0
    v -= 1.0
    norm = float(np.sqrt(np.einsum("i,i->", gradient, gradient)))
    if not (np.isfinite(norm) and norm > 0):
        norm, gradient = 1.0, 0.0
    # In place, |g| (z / |z| + g / |g|): no temporaries of the vector's size.
    v *= norm / np.sqrt(np.einsum("i,i->", v, v))
    v += gradient
    v /= norm
    return v


def hessian_start(
    vector: np.ndarray, seed: int | None = 0, weight: float = 0.3
) -> np.ndarray:
    """Start vector of the moments' Lanczos: the Hessian's top eigenvector
    ``u`` (unit) plus a random Gaussian vector of norm ``weight``.

    The top eigenvector of ``M_k - H^k`` lies close to the Hessian's: from
    it, Lanczos on ``M_2 - H^2`` met the default tolerance in 4 products
    against 10-11 from a random or gradient start (LeNet-300-100 after two
    epochs, 100 examples; see docs/curvature.md); each of those products
    costs many Hessian products, the start one `sharpness` call. The random
    part keeps every direction present, as in `gradient_start`.

    ```python
    top = keras_sam.hessian.top_eigenvalues(op)
    r = keras_sam.hessian.non_uniformity_eigen(
        op, order=2, v0=hessian_start(top.eigenvectors[:, 0]))
    ```
    """
    vector = np.asarray(vector, np.float64).reshape(-1)
    norm = float(np.sqrt(np.einsum("i,i->", vector, vector)))
    z = np.random.default_rng(seed).standard_normal(vector.shape[0])
    z *= weight / np.sqrt(np.einsum("i,i->", z, z))
    if np.isfinite(norm) and norm > 0:
        z += vector / norm
    return z


def _lanczos_from_gradient(dim, k, max_iter, tol, seed) -> solvers.Steps:
    # Sent the gradient the products share (`CurvatureOperator.drive`).
    gradient = yield GRADIENT
    v = solvers._start_vector(dim, gradient_start(gradient, seed), None)
    return (yield from solvers._lanczos_steps(dim, k, max_iter, tol, v))


def top_eigenvalues(
    model: keras.Model | CurvatureOperator,
    data: Any = None,
    k: int = 1,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    v0: np.ndarray | None = None,
    start: str = "gradient",
    seed: int | None = 0,
    **operator_options: Any,
) -> solvers.EigenResult:
    """Top-``k`` eigenpairs of the mean-loss Hessian H by Lanczos, with
    residuals and iteration count (see `keras_sam.hessian.sharpness`)."""
    start = one_of(start, "start", START_VECTORS)
    op = _operator(model, data, operator_options)
    if v0 is not None or start == "random":
        return solvers.lanczos(
            op.matvec, op.dim, k, max_iter=max_iter, tol=tol, v0=v0, seed=seed
        )
    options = solvers._lanczos_options(op.dim, k, max_iter, tol)
    return solvers.run(_lanczos_from_gradient(*options, seed), op.matvec)


def sharpness(
    model: keras.Model | CurvatureOperator, data: Any = None, **options
) -> float:
    """Top eigenvalue ``lambda_max(H)`` of the Hessian of the mean loss.

    ```python
    a = keras_sam.hessian.sharpness(model, (x, y))        # compiled loss
    a = keras_sam.hessian.sharpness(model, dataset, loss="mse", tol=1e-5)
    ```

    Lanczos stops once the eigenvalue's error bound is below ``tol``
    (default 1e-3) relative to it (see `keras_sam.hessian.solvers.lanczos`).

    Options: ``loss``, ``regularization`` (False), ``training`` (False),
    ``batch_size``, ``class_weight`` for the operator (see
    `CurvatureOperator`); ``max_iter`` (100), ``tol`` (1e-3, relative
    accuracy), ``v0`` (warm start), ``start`` (where there is no ``v0``:
    ``"gradient"``, the default, the gradient plus a random vector (see
    `gradient_start`), or ``"random"``), ``seed`` for Lanczos. Use
    `top_eigenvalues` for error bounds and iteration counts.
    """
    return float(top_eigenvalues(model, data, **options).eigenvalues[0])


def trace_estimate(
    model: keras.Model | CurvatureOperator,
    data: Any = None,
    *,
    method: str = "hutchinson",
    rtol: float | None = 0.01,
    num_samples: int = 1000,
    seed: int | None = 0,
    **operator_options: Any,
) -> solvers.TraceResult:
    """Trace of H with its standard error (see `keras_sam.hessian.trace`)."""
    method = one_of(method, "method", TRACE_METHODS)
    op = _operator(model, data, operator_options)
    if method == "hutchinson":
        return solvers.hutchinson(op.matvec, op.dim, num_samples, rtol=rtol, seed=seed)
    if method == "hutchpp":
        return solvers.hutchpp(op.matvec, op.dim, num_samples, seed=seed)
    eye = np.eye(op.dim)
    total = sum(op.hvp(eye[:, j])[j] for j in range(op.dim))
    return solvers.TraceResult(float(total), 0.0, op.dim)


def trace(model: keras.Model | CurvatureOperator, data: Any = None, **options) -> float:
    """Trace of the Hessian of the mean loss (Hutchinson by default).

    ```python
    t = keras_sam.hessian.trace(model, (x, y))               # 1% std. error
    r = keras_sam.hessian.trace_estimate(model, (x, y), rtol=0.05)
    r.estimate, r.stderr, r.matvecs
    ```

    ``method``: ``"hutchinson"`` (Rademacher probes, drawn until the
    standard error is at most ``rtol`` (default 0.01) of the estimate, at
    most ``num_samples`` (1000); ``rtol=None``: exactly ``num_samples``),
    ``"hutchpp"`` (``num_samples`` products in all) or ``"exact"`` (dim
    products). Use `trace_estimate` for the standard error.
    """
    return trace_estimate(model, data, **options).estimate


def non_uniformity_eigen(
    model: keras.Model | CurvatureOperator,
    data: Any = None,
    order: int = 2,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    v0: np.ndarray | None = None,
    start: str = "hessian",
    seed: int | None = 0,
    **operator_options: Any,
) -> solvers.EigenResult:
    """Top algebraic eigenpair of ``M_k - H^k`` (k = ``order``) by Lanczos.

    Without ``v0``, ``start="hessian"`` (default) starts from the Hessian's
    top eigenvector (`hessian_start`; one `sharpness` call more, several
    moment products fewer), ``"random"`` from a random vector. The result's
    ``iterations`` counts the moment products only.
    """
    order = _check_order(order)
    start = one_of(start, "start", MOMENT_START_VECTORS)
    op = _operator(model, data, operator_options)
    if v0 is None and start == "hessian":
        top = top_eigenvalues(op, max_iter=max_iter, tol=tol, seed=seed)
        v0 = hessian_start(top.eigenvectors[:, 0], seed)
    return solvers.lanczos(
        lambda v: op.moment_gap(v, order),
        op.dim,
        1,
        max_iter=max_iter,
        tol=tol,
        v0=v0,
        seed=seed,
    )


def root(value: float, order: int) -> float:
    """Signed real k-th root: ``sign(x) |x|^(1/k)``."""
    return math.copysign(abs(value) ** (1.0 / order), value)


def non_uniformity(
    model: keras.Model | CurvatureOperator, data: Any = None, order: int = 2, **options
) -> float:
    """Non-uniformity ``s_k = lambda_max(M_k - H^k)^(1/k)``, k = 2, 3, 4.

    ``M_k`` is the mean of the per-example Hessians' k-th powers. ``M_3 -
    H^3`` (and in general ``M_4 - H^4``) is indefinite: the top algebraic
    eigenvalue is taken and a negative one gives a negative ``s_k`` (signed
    root). ``s_2`` is Wu, Ma & E's per-example Hessian covariance.

    ```python
    s2 = keras_sam.hessian.non_uniformity(model, (x[:1000], y[:1000]), order=2)
    ```

    Options as for `sharpness`, plus ``chunk_size`` (examples vectorized
    together; default: by the model's size, see `CurvatureOperator`);
    ``start``: ``"hessian"`` (default: from the Hessian's top eigenvector,
    see `hessian_start`) or ``"random"``.
    """
    order = _check_order(order)
    result = non_uniformity_eigen(model, data, order, **options)
    return root(float(result.eigenvalues[0]), order)


def spectral_density(
    model: keras.Model | CurvatureOperator,
    data: Any = None,
    *,
    num_probes: int = 1,
    num_steps: int = 100,
    seed: int | None = 0,
    **operator_options: Any,
) -> solvers.SLQResult:
    """Spectral density of H by stochastic Lanczos quadrature.

    ```python
    result = keras_sam.hessian.spectral_density(model, (x, y), num_steps=80)
    grid, density = result.density()        # Gaussian-smoothed, integral 1
    result.nodes, result.weights            # quadrature per probe
    ```
    """
    op = _operator(model, data, operator_options)
    return solvers.slq(op.matvec, op.dim, num_probes, num_steps, seed=seed)


def stability_ratios(
    lr: float,
    rho: float,
    sharpness: float,
    s2: float | None = None,
    s3: float | None = None,
    s4: float | None = None,
) -> dict[str, float]:
    """Necessary linear-stability conditions of stochastic SAM (batch 1,
    Theorem 6.3) as ratios ``lhs / bound``; a ratio > 1 means unstable.

    - ``"sharpness"``: ``a (1 + rho a) lr / 2``   (``a <= 2/lr`` for SGD)
    - ``"s2"``: ``s2^2 lr (lr - 2 rho)``   (<= 0: vacuous when lr <= 2 rho)
    - ``"s3"``: ``s3^3 2 lr^2 rho``   (0 for SGD)
    - ``"s4"``: ``s4^4 lr^2 rho^2``   (0 for SGD)

    With rho = 0 these are SGD's conditions ``a <= 2/lr`` and ``s2 <= 1/lr``.
    Orders given as None are left out.
    """
    lr = positive_float(lr, "lr")
    rho = non_negative_float(rho, "rho")
    ratios = {"sharpness": sharpness * (1 + rho * sharpness) * lr / 2}
    if s2 is not None:
        ratios["s2"] = s2**2 * lr * (lr - 2 * rho)
    if s3 is not None:
        ratios["s3"] = s3**3 * 2 * lr**2 * rho
    if s4 is not None:
        ratios["s4"] = s4**4 * lr**2 * rho**2
    return ratios


@dataclasses.dataclass
class StabilityMargins:
    """Measured curvature and the stability ratios (> 1 means unstable).

    Attributes:
        lr, rho: the step size and SAM radius the bounds use.
        sharpness: ``lambda_max(H)``.
        non_uniformity: ``{k: s_k}`` for the orders measured.
        ratios: ``{"sharpness": ..., "s2": ..., ...}`` (see `stability_ratios`).
    """

    lr: float
    rho: float
    sharpness: float
    non_uniformity: dict[int, float]
    ratios: dict[str, float]

    @property
    def stable(self) -> bool:
        """Whether every necessary condition holds (all ratios <= 1)."""
        return all(r <= 1 for r in self.ratios.values())


def current_learning_rate(model: keras.Model) -> float:
    """The compiled optimizer's current learning rate (schedules evaluated)."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        raise ValueError("`lr` must be given when the model has no optimizer.")
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def stability_margins(
    model: keras.Model | CurvatureOperator,
    data: Any = None,
    *,
    lr: float | None = None,
    rho: float | None = None,
    orders: tuple[int, ...] | None = None,
    **options: Any,
) -> StabilityMargins:
    """Theorem 6.3's necessary stability conditions for SGD (rho = 0) or SAM.

    ```python
    m = keras_sam.hessian.stability_margins(model, (x, y), lr=0.1, rho=0.05)
    m.ratios   # {"sharpness": 0.8, "s2": 0.3, "s3": 0.01, "s4": 0.002}
    ```

    ``lr`` defaults to the optimizer's current learning rate, ``rho`` to
    ``model.rho`` (0 for a model without one). ``orders`` defaults to
    ``(2,)`` for rho = 0 and ``(2, 3, 4)`` otherwise (s3, s4 do not enter
    SGD's conditions). Other options as for `sharpness` / `non_uniformity`.
    The theorem analyses unnormalized SAM (eps = rho g); for normalized SAM
    the ratios are indicative only.
    """
    source = model.model if isinstance(model, CurvatureOperator) else model
    if lr is None:
        lr = current_learning_rate(source)
    if rho is None:
        rho = float(getattr(source, "rho", 0.0))
    lr = positive_float(lr, "lr")
    rho = non_negative_float(rho, "rho")
    if orders is None:
        orders = (2,) if rho == 0 else ORDERS
    orders = tuple(_check_order(k) for k in orders)
    op_options, solver_options = _split_options(dict(options))
    op = _operator(model, data, op_options)
    top = top_eigenvalues(op, **solver_options)
    a = float(top.eigenvalues[0])
    moment_options = dict(solver_options)
    moment_options.pop("start", None)
    if moment_options.get("v0") is None:
        moment_options["v0"] = hessian_start(
            top.eigenvectors[:, 0], moment_options.get("seed", 0)
        )
    s = {k: non_uniformity(op, order=k, **moment_options) for k in orders}
    ratios = stability_ratios(lr, rho, a, *(s.get(k) for k in ORDERS))
    return StabilityMargins(lr, rho, a, s, ratios)

"""Curvature measures: operators from ``_operators`` fed to ``solvers``.

The naming rule: a measure's float form is named after the quantity
(`sharpness`, `trace`, `non_uniformity`) and returns a float; its result
form appends ``_estimate`` (`sharpness_estimate`, `trace_estimate`,
`non_uniformity_estimate`) and returns the estimate with its error (bound
or standard error), its cost in products and, for eigenvalues, the
eigenvectors. Both take the same arguments, listed in full (no hidden
``**options``). `spectral_density` and `stability_margins` have no single
number: they return results only.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from typing import Any

import keras
import numpy as np

from keras_sam._validation import non_negative_float, one_of, positive_float
from keras_sam.hessian import solvers
from keras_sam.hessian._operators import GRADIENT, CurvatureOperator

__all__ = [
    "StabilityMargins",
    "current_learning_rate",
    "gradient_start",
    "hessian_start",
    "non_uniformity",
    "non_uniformity_eigen",
    "non_uniformity_estimate",
    "root",
    "sharpness",
    "sharpness_estimate",
    "spectral_density",
    "stability_margins",
    "stability_ratios",
    "top_eigenvalues",
    "trace",
    "trace_estimate",
]

ORDERS = (2, 3, 4)
TRACE_METHODS = ("hutchinson", "hutchpp", "exact")
START_VECTORS = ("gradient", "random")
MOMENT_START_VECTORS = ("hessian", "random")

#: The arguments every measure passes to `CurvatureOperator`, with the
#: defaults they must keep when a built operator is passed instead.
_OPERATOR_DEFAULTS = {
    "loss": None,
    "loss_weights": None,
    "regularization": False,
    "class_weight": None,
    "training": False,
    "batch_size": None,
    "chunk_size": None,
    "vectorize": None,
    "jit_compile": False,
    "masked": True,
    "forward_over_reverse": False,
    "curvature": "hessian",
}


def _operator_options(arguments: dict) -> dict:
    """The operator's arguments among a measure's (its ``locals()``)."""
    return {name: arguments[name] for name in _OPERATOR_DEFAULTS}


def _is_default(value, default) -> bool:
    # Identity for None and booleans; equality for strings, which a caller may
    # build at run time (arrays or dicts never equal a default here).
    if isinstance(default, str):
        return isinstance(value, str) and value == default
    return value is default


def _operator(model, data, options: dict) -> CurvatureOperator:
    if isinstance(model, CurvatureOperator):
        if data is not None:
            raise ValueError("`data` must be None when `model` is a CurvatureOperator.")
        changed = sorted(
            name
            for name, value in options.items()
            if not _is_default(value, _OPERATOR_DEFAULTS[name])
        )
        if changed:
            raise ValueError(
                f"operator options {changed} must keep their defaults when `model` "
                "is a CurvatureOperator (they were fixed when it was built)."
            )
        return model
    return CurvatureOperator(model, data, **options)


def _deprecated(old: str, new):
    """``new`` under its former name ``old``, warning on each call."""

    @functools.wraps(new)
    def alias(*args, **kwargs):
        warnings.warn(
            f"`keras_sam.hessian.{old}` is deprecated; use "
            f"`keras_sam.hessian.{new.__name__}` (same arguments).",
            DeprecationWarning,
            stacklevel=2,
        )
        return new(*args, **kwargs)

    alias.__name__ = alias.__qualname__ = old
    alias.__doc__ = f"Deprecated alias of `{new.__name__}` (same arguments)."
    return alias


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
    top = keras_sam.hessian.sharpness_estimate(op)
    r = keras_sam.hessian.non_uniformity_estimate(
        op, order=2, v0=hessian_start(top.eigenvectors[:, 0]))
    ```

    Args:
        vector: the Hessian's top eigenvector (any norm; zero or non-finite:
            the random part alone).
        seed: seed of the random part.
        weight: norm of the random part.

    Returns:
        The start vector, float64, of ``vector``'s length.
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


def sharpness_estimate(
    model: keras.Model | CurvatureOperator,
    data: Any = None,
    k: int = 1,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    v0: np.ndarray | None = None,
    start: str = "gradient",
    seed: int | None = 0,
    loss: Any = None,
    loss_weights: Any = None,
    regularization: bool = False,
    class_weight: dict | None = None,
    training: bool = False,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    vectorize: bool | None = None,
    jit_compile: bool = False,
    masked: bool = True,
    forward_over_reverse: bool = False,
    curvature: str = "hessian",
) -> solvers.EigenResult:
    """`sharpness` with its error bound and cost: the top-``k`` eigenpairs
    of the mean-loss Hessian H by Lanczos.

    ```python
    r = keras_sam.hessian.sharpness_estimate(model, (x, y))
    r.eigenvalues[0], r.error_bounds[0], r.iterations   # lambda_max, bound, products
    r = keras_sam.hessian.sharpness_estimate(model, (x, y), k=3)   # top 3
    ```

    Args:
        model: a built Keras model, or a `CurvatureOperator` (then ``data``
            is None and the operator options keep their defaults).
        data: ``(x, y)`` or ``(x, y, sample_weight)`` arrays, or a
            `tf.data.Dataset` of such batches.
        k: number of top eigenpairs (the first is the sharpness).
        max_iter: most Lanczos steps (one Hessian product each).
        tol: Lanczos stops once every eigenvalue's error bound is below
            ``tol`` relative to it (see `keras_sam.hessian.solvers.lanczos`).
        v0: start vector (a warm start), else ``start`` decides.
        start: ``"gradient"`` (the mean-loss gradient plus a random vector,
            see `gradient_start`) or ``"random"``.
        seed: seed of the random start vector.

    The operator's arguments (``loss``, ``loss_weights``, ``regularization``,
    ``class_weight``, ``training``, ``batch_size``, ``chunk_size``,
    ``vectorize``, ``jit_compile``, ``masked``, ``forward_over_reverse``,
    ``curvature``)
    are `CurvatureOperator`'s; with a built operator as ``model`` they
    keep their defaults.

    Returns:
        A `keras_sam.hessian.solvers.EigenResult`: ``eigenvalues``
        (decreasing), ``eigenvectors``, ``residuals``, ``error_bounds``,
        ``iterations`` (products) and ``converged``.

    Raises:
        ValueError: a bad argument (named in the message), ``data`` or a
            changed operator option given with a `CurvatureOperator`.
    """
    start = one_of(start, "start", START_VECTORS)
    op = _operator(model, data, _operator_options(locals()))
    if v0 is not None or start == "random":
        return solvers.lanczos(
            op.matvec, op.dim, k, max_iter=max_iter, tol=tol, v0=v0, seed=seed
        )
    options = solvers._lanczos_options(op.dim, k, max_iter, tol)
    return solvers.run(_lanczos_from_gradient(*options, seed), op.matvec)


def sharpness(
    model: keras.Model | CurvatureOperator,
    data: Any = None,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    v0: np.ndarray | None = None,
    start: str = "gradient",
    seed: int | None = 0,
    loss: Any = None,
    loss_weights: Any = None,
    regularization: bool = False,
    class_weight: dict | None = None,
    training: bool = False,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    vectorize: bool | None = None,
    jit_compile: bool = False,
    masked: bool = True,
    forward_over_reverse: bool = False,
    curvature: str = "hessian",
) -> float:
    """Top eigenvalue ``lambda_max(H)`` of the Hessian of the mean loss.

    ```python
    a = keras_sam.hessian.sharpness(model, (x, y))        # compiled loss
    a = keras_sam.hessian.sharpness(model, dataset, loss="mse", tol=1e-5)
    ```

    Lanczos stops once the eigenvalue's error bound is below ``tol``
    (default 1e-3) relative to it. Arguments as for `sharpness_estimate`
    (``k`` aside), which also returns the error bound, the number of
    products and the eigenvector.

    Returns:
        ``lambda_max(H)`` as a float.

    Raises:
        ValueError: as `sharpness_estimate`.
    """
    options = {**_operator_options(locals()), "max_iter": max_iter, "tol": tol}
    result = sharpness_estimate(model, data, v0=v0, start=start, seed=seed, **options)
    return float(result.eigenvalues[0])


def trace_estimate(
    model: keras.Model | CurvatureOperator,
    data: Any = None,
    *,
    method: str = "hutchinson",
    rtol: float | None = 0.01,
    num_samples: int = 1000,
    seed: int | None = 0,
    loss: Any = None,
    loss_weights: Any = None,
    regularization: bool = False,
    class_weight: dict | None = None,
    training: bool = False,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    vectorize: bool | None = None,
    jit_compile: bool = False,
    masked: bool = True,
    forward_over_reverse: bool = False,
    curvature: str = "hessian",
) -> solvers.TraceResult:
    """`trace` with its standard error and cost.

    ```python
    r = keras_sam.hessian.trace_estimate(model, (x, y), rtol=0.05)
    r.estimate, r.stderr, r.matvecs
    ```

    Args:
        model: as for `sharpness_estimate`.
        data: as for `sharpness_estimate`.
        method: ``"hutchinson"`` (Rademacher probes, drawn until the
            standard error is at most ``rtol`` of the estimate, at most
            ``num_samples``), ``"hutchpp"`` (Hutch++, ``num_samples``
            products in all) or ``"exact"`` (one product per weight).
        rtol: Hutchinson's relative standard error (None: exactly
            ``num_samples`` probes).
        num_samples: most products (probes).
        seed: seed of the probes.

    The operator's arguments (``loss``, ``loss_weights``, ``regularization``,
    ``class_weight``, ``training``, ``batch_size``, ``chunk_size``,
    ``vectorize``, ``jit_compile``, ``masked``, ``forward_over_reverse``,
    ``curvature``)
    are `CurvatureOperator`'s; with a built operator as ``model`` they
    keep their defaults.

    Returns:
        A `keras_sam.hessian.solvers.TraceResult`: ``estimate``,
        ``stderr`` (0 when exact) and ``matvecs`` (products).

    Raises:
        ValueError: a bad argument (named in the message), ``data`` or a
            changed operator option given with a `CurvatureOperator`.
    """
    method = one_of(method, "method", TRACE_METHODS)
    op = _operator(model, data, _operator_options(locals()))
    if method == "hutchinson":
        return solvers.hutchinson(op.matvec, op.dim, num_samples, rtol=rtol, seed=seed)
    if method == "hutchpp":
        return solvers.hutchpp(op.matvec, op.dim, num_samples, seed=seed)
    eye = np.eye(op.dim)
    total = sum(op.hvp(eye[:, j])[j] for j in range(op.dim))
    return solvers.TraceResult(float(total), 0.0, op.dim)


def trace(
    model: keras.Model | CurvatureOperator,
    data: Any = None,
    *,
    method: str = "hutchinson",
    rtol: float | None = 0.01,
    num_samples: int = 1000,
    seed: int | None = 0,
    loss: Any = None,
    loss_weights: Any = None,
    regularization: bool = False,
    class_weight: dict | None = None,
    training: bool = False,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    vectorize: bool | None = None,
    jit_compile: bool = False,
    masked: bool = True,
    forward_over_reverse: bool = False,
    curvature: str = "hessian",
) -> float:
    """Trace of the Hessian of the mean loss (Hutchinson by default).

    ```python
    t = keras_sam.hessian.trace(model, (x, y))               # 1% std. error
    t = keras_sam.hessian.trace(model, (x, y), method="exact")
    ```

    Arguments as for `trace_estimate`, which also returns the standard
    error and the number of products.

    Returns:
        The trace estimate as a float.

    Raises:
        ValueError: as `trace_estimate`.
    """
    options = _operator_options(locals())
    return trace_estimate(
        model,
        data,
        method=method,
        rtol=rtol,
        num_samples=num_samples,
        seed=seed,
        **options,
    ).estimate


def non_uniformity_estimate(
    model: keras.Model | CurvatureOperator,
    data: Any = None,
    order: int = 2,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    v0: np.ndarray | None = None,
    start: str = "hessian",
    seed: int | None = 0,
    loss: Any = None,
    loss_weights: Any = None,
    regularization: bool = False,
    class_weight: dict | None = None,
    training: bool = False,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    vectorize: bool | None = None,
    jit_compile: bool = False,
    masked: bool = True,
    forward_over_reverse: bool = False,
    curvature: str = "hessian",
) -> solvers.EigenResult:
    """`non_uniformity` before the root, with its error bound and cost: the
    top algebraic eigenpair of ``M_k - H^k`` (k = ``order``) by Lanczos.

    ```python
    r = keras_sam.hessian.non_uniformity_estimate(model, (x, y), order=2)
    r.eigenvalues[0]                     # lambda_max(M_2 - H^2) = s_2 ** 2
    r.error_bounds[0], r.iterations      # its error bound, products
    ```

    Args:
        model: as for `sharpness_estimate`.
        data: as for `sharpness_estimate`.
        order: k, 2, 3 or 4.
        max_iter: most Lanczos steps (products with ``M_k - H^k``).
        tol: relative accuracy, as for `sharpness_estimate`.
        v0: start vector (default: see ``start``).
        start: without ``v0``: ``"hessian"`` (default) from the Hessian's
            top eigenvector (`hessian_start`; one `sharpness` call more,
            about half the moment products), or ``"random"``.
        seed: seed of the random start vector.

    The operator's arguments (``loss``, ``loss_weights``, ``regularization``,
    ``class_weight``, ``training``, ``batch_size``, ``chunk_size``,
    ``vectorize``, ``jit_compile``, ``masked``, ``forward_over_reverse``,
    ``curvature``)
    are `CurvatureOperator`'s (``chunk_size`` and ``vectorize`` set up the
    per-example products); with a built operator as ``model`` they keep
    their defaults.

    Returns:
        A `keras_sam.hessian.solvers.EigenResult` of ``M_k - H^k`` (one
        pair; ``iterations`` counts products with ``M_k - H^k``, each k
        per-example and k batch products, for k = 2 one batch product
        where the examples' Hessians average to H, none where the backend
        also runs the steps in one call (JAX, PyTorch; see
        `CurvatureOperator.drive_moment_gap`); not the start's).

    Raises:
        ValueError: a bad ``order`` or other argument (named in the
            message), ``data`` or a changed operator option given with a
            `CurvatureOperator`.
    """
    order = _check_order(order)
    start = one_of(start, "start", MOMENT_START_VECTORS)
    op = _operator(model, data, _operator_options(locals()))
    if v0 is None and start == "hessian":
        top = sharpness_estimate(op, max_iter=max_iter, tol=tol, seed=seed)
        v0 = hessian_start(top.eigenvectors[:, 0], seed)
    return solvers.lanczos(
        op.moment_gaps(order),
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
    model: keras.Model | CurvatureOperator,
    data: Any = None,
    order: int = 2,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    v0: np.ndarray | None = None,
    start: str = "hessian",
    seed: int | None = 0,
    loss: Any = None,
    loss_weights: Any = None,
    regularization: bool = False,
    class_weight: dict | None = None,
    training: bool = False,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    vectorize: bool | None = None,
    jit_compile: bool = False,
    masked: bool = True,
    forward_over_reverse: bool = False,
    curvature: str = "hessian",
) -> float:
    """Non-uniformity ``s_k = lambda_max(M_k - H^k)^(1/k)``, k = 2, 3, 4.

    ``M_k`` is the mean of the per-example Hessians' k-th powers. ``M_3 -
    H^3`` (and in general ``M_4 - H^4``) is indefinite: the top algebraic
    eigenvalue is taken and a negative one gives a negative ``s_k`` (signed
    root). ``s_2`` is Wu, Ma & E's per-example Hessian covariance.

    ```python
    s2 = keras_sam.hessian.non_uniformity(model, (x[:1000], y[:1000]), order=2)
    ```

    Arguments as for `non_uniformity_estimate`, which also returns the
    error bound, the number of products and the eigenvector.

    Returns:
        ``s_k`` as a float.

    Raises:
        ValueError: as `non_uniformity_estimate`.
    """
    options = {**_operator_options(locals()), "max_iter": max_iter, "tol": tol}
    result = non_uniformity_estimate(
        model, data, order, v0=v0, start=start, seed=seed, **options
    )
    return root(float(result.eigenvalues[0]), _check_order(order))


def spectral_density(
    model: keras.Model | CurvatureOperator,
    data: Any = None,
    *,
    num_probes: int = 1,
    num_steps: int = 100,
    seed: int | None = 0,
    loss: Any = None,
    loss_weights: Any = None,
    regularization: bool = False,
    class_weight: dict | None = None,
    training: bool = False,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    vectorize: bool | None = None,
    jit_compile: bool = False,
    masked: bool = True,
    forward_over_reverse: bool = False,
    curvature: str = "hessian",
) -> solvers.SLQResult:
    """Spectral density of H by stochastic Lanczos quadrature.

    ```python
    result = keras_sam.hessian.spectral_density(model, (x, y), num_steps=80)
    grid, density = result.density()        # Gaussian-smoothed, integral 1
    result.nodes, result.weights            # quadrature per probe
    ```

    Args:
        model: as for `sharpness_estimate`.
        data: as for `sharpness_estimate`.
        num_probes: random start vectors (one Lanczos run each).
        num_steps: Lanczos steps (products) per probe.
        seed: seed of the probes.

    The operator's arguments (``loss``, ``loss_weights``, ``regularization``,
    ``class_weight``, ``training``, ``batch_size``, ``chunk_size``,
    ``vectorize``, ``jit_compile``, ``masked``, ``forward_over_reverse``,
    ``curvature``)
    are `CurvatureOperator`'s; with a built operator as ``model`` they
    keep their defaults.

    Returns:
        A `keras_sam.hessian.solvers.SLQResult` (``nodes``, ``weights``,
        ``density()``).

    Raises:
        ValueError: a bad argument (named in the message), ``data`` or a
            changed operator option given with a `CurvatureOperator`.
    """
    op = _operator(model, data, _operator_options(locals()))
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
    max_iter: int = 100,
    tol: float = 1e-3,
    seed: int | None = 0,
    loss: Any = None,
    loss_weights: Any = None,
    regularization: bool = False,
    class_weight: dict | None = None,
    training: bool = False,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    vectorize: bool | None = None,
    jit_compile: bool = False,
    masked: bool = True,
    forward_over_reverse: bool = False,
    curvature: str = "hessian",
) -> StabilityMargins:
    """Theorem 6.3's necessary stability conditions for SGD (rho = 0) or SAM.

    ```python
    m = keras_sam.hessian.stability_margins(model, (x, y), lr=0.1, rho=0.05)
    m.ratios   # {"sharpness": 0.8, "s2": 0.3, "s3": 0.01, "s4": 0.002}
    ```

    The theorem analyses unnormalized SAM (eps = rho g); for normalized SAM
    the ratios are indicative only.

    Args:
        model: as for `sharpness_estimate`.
        data: as for `sharpness_estimate`.
        lr: step size (default: the optimizer's current learning rate).
        rho: SAM radius (default: ``model.rho``, 0 for a model without one).
        orders: the s_k measured (default ``(2,)`` for rho = 0, whose
            conditions have no s3, s4, else ``(2, 3, 4)``).
        max_iter: most Lanczos steps, for `sharpness` and `non_uniformity`.
        tol: their relative accuracy.
        seed: their random start's seed.

    The operator's arguments (``loss``, ``loss_weights``, ``regularization``,
    ``class_weight``, ``training``, ``batch_size``, ``chunk_size``,
    ``vectorize``, ``jit_compile``, ``masked``, ``forward_over_reverse``,
    ``curvature``)
    are `CurvatureOperator`'s (one operator serves every measure); with a
    built operator as ``model`` they keep their defaults.

    Returns:
        `StabilityMargins`: the measured sharpness and s_k and their ratios
        (> 1: unstable).

    Raises:
        ValueError: a bad ``lr``, ``rho``, an order or another argument
            (named in the message), or no ``lr`` and no optimizer.
    """
    options = _operator_options(locals())
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
    op = _operator(model, data, options)
    solver = {"max_iter": max_iter, "tol": tol, "seed": seed}
    top = sharpness_estimate(op, **solver)
    a = float(top.eigenvalues[0])
    start = hessian_start(top.eigenvectors[:, 0], seed)
    s = {k: non_uniformity(op, order=k, v0=start, **solver) for k in orders}
    ratios = stability_ratios(lr, rho, a, *(s.get(k) for k in ORDERS))
    return StabilityMargins(lr, rho, a, s, ratios)


top_eigenvalues = _deprecated("top_eigenvalues", sharpness_estimate)
"""Deprecated: `sharpness_estimate` (same arguments; warns)."""

non_uniformity_eigen = _deprecated("non_uniformity_eigen", non_uniformity_estimate)
"""Deprecated: `non_uniformity_estimate` (same arguments; warns)."""

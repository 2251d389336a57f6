"""Global dot products and norms, and elementwise list arithmetic, over lists
of gradient tensors in `keras.ops`, with hooks for a backend's faster
kernels.

The perturbation rules (`keras_sam.perturbations`), the variants
(`keras_sam.variants`) and the step (`keras_sam.sam_step`) take their norms,
dot products, scalings and sums here. A backend's step may put in place
implementations with the same formula and fewer passes over memory or fewer
dispatched ops (`kernels`): the TensorFlow step's `dot`
(`keras_sam.backend.tensorflow.gradient_math`), PyTorch's `dot`, `scale` and
`add` (`keras_sam.backend.torch.gradient_math`), so the rules stay
backend-neutral.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import Any

from keras import ops


class _Kernels(threading.local):
    """The implementations a backend's step put in place (per thread:
    `tf.distribute` traces each replica's step in its own); None: the
    `keras.ops` form."""

    dot: Callable[[Sequence[Any], Sequence[Any]], Any] | None = None
    scale: Callable[[Sequence[Any], Any], list] | None = None
    add: Callable[[Sequence[Any], Sequence[Any]], list] | None = None


_KERNELS = _Kernels()


@contextlib.contextmanager
def kernels(
    *,
    dot: Callable[[Sequence[Any], Sequence[Any]], Any] | None = None,
    scale: Callable[[Sequence[Any], Any], list] | None = None,
    add: Callable[[Sequence[Any], Sequence[Any]], list] | None = None,
):
    """Within, `dot` (and `norm`), `scale` and `add` call the given
    implementations instead of their `keras.ops` form (those not given stay
    as they are): a backend's step supplies ones with the same formula.

    ```python
    with kernels(dot=fast_dot, scale=fast_scale):
        eps = model.perturbation(grads, weights, rho)
    ```
    """
    given = {"dot": dot, "scale": scale, "add": add}
    given = {name: f for name, f in given.items() if f is not None}
    previous = {name: getattr(_KERNELS, name) for name in given}
    for name, implementation in given.items():
        setattr(_KERNELS, name, implementation)
    try:
        yield
    finally:
        for name, implementation in previous.items():
            setattr(_KERNELS, name, implementation)


def dot_kernel(implementation: Callable[[Sequence[Any], Sequence[Any]], Any]):
    """Within, `dot` and `norm` call `implementation(a, b)` instead of their
    `keras.ops` form: a backend's step supplies one with the same formula and
    fewer passes over memory (TensorFlow: `keras_sam.backend.tensorflow.
    gradient_math.dot`).

    ```python
    with dot_kernel(fast_dot):
        d, state = variant.combine(g, gs, state, step, run)
    ```
    """
    return kernels(dot=implementation)


def dot(a: Sequence[Any], b: Sequence[Any]) -> Any:
    """Global dot product of two gradient lists (float32 scalar)."""
    if _KERNELS.dot is not None:
        return _KERNELS.dot(a, b)
    return sum(
        ops.sum(ops.cast(x, "float32") * ops.cast(y, "float32")) for x, y in zip(a, b)
    )


def norm(a: Sequence[Any]) -> Any:
    """Global L2 norm of a gradient list (float32 scalar)."""
    return ops.sqrt(dot(a, a))


def scale(tensors: Sequence[Any], factor: Any) -> list:
    """Each tensor times the scalar `factor`, cast to the tensor's dtype
    first (a list as long as `tensors`)."""
    if _KERNELS.scale is not None:
        return _KERNELS.scale(tensors, factor)
    # ops.multiply, not `*`: the tensors may be NumPy arrays, which a torch
    # tensor does not multiply.
    return [ops.multiply(t, ops.cast(factor, t.dtype)) for t in tensors]


def add(a: Sequence[Any], b: Sequence[Any]) -> list:
    """x + y for each pair, y cast to x's dtype first (a list as long as
    `a`)."""
    if _KERNELS.add is not None:
        return _KERNELS.add(a, b)
    return [x + ops.cast(y, x.dtype) for x, y in zip(a, b)]

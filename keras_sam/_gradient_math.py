"""Global dot products and norms over lists of gradient tensors, in
`keras.ops`, with a hook for a backend's faster kernel.

The perturbation rules (`keras_sam.perturbations`) and the variants
(`keras_sam.variants`) take their norms and dot products here. A backend's
step may put in place an implementation with the same formula and fewer
passes over memory (`dot_kernel`); the TensorFlow step does
(`keras_sam.backend.tensorflow.gradient_math.dot`), so the rules stay
backend-neutral.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import Any

from keras import ops


class _Kernels(threading.local):
    """The global-dot implementation a backend's step put in place (per
    thread: `tf.distribute` traces each replica's step in its own)."""

    dot: Callable[[Sequence[Any], Sequence[Any]], Any] | None = None


_KERNELS = _Kernels()


@contextlib.contextmanager
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
    previous, _KERNELS.dot = _KERNELS.dot, implementation
    try:
        yield
    finally:
        _KERNELS.dot = previous


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

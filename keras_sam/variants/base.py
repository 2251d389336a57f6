"""`Variant`: the base class, the registry and the global tensor helpers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
from keras import ops

from keras_sam import _registry

# The rules' global dot products and norms (shared with the perturbation rules).
from keras_sam._gradient_math import dot as dot
from keras_sam._gradient_math import dot_kernel as dot_kernel
from keras_sam._gradient_math import norm as norm

__all__ = [
    "Variant",
    "axpy",
    "check_number",
    "dot",
    "dot_kernel",
    "every_kth",
    "get",
    "linear_combination",
    "names",
    "norm",
    "register",
    "safe_ratio",
    "serialize",
]


def register(*names: str) -> Callable[[type[Variant]], type[Variant]]:
    """Class decorator: makes a `Variant` subclass available by its `names`
    and serializable with Keras (package ``keras_sam``).

    Returns:
        The decorator, which returns the class unchanged.

    Raises:
        TypeError: when the decorated class is not a `Variant` subclass.
    """
    return _VARIANTS.register(*names)


class Variant(_registry.Configurable):
    """How a SAM step turns g (clean gradient) and gs (gradient at w + eps)
    into the direction d handed to the optimizer, and on which steps the
    second pass runs. The base class is plain SAM (d = gs, every step).

    Every method is a pure function of tensors written with `keras.ops`;
    state lives in the model's Keras variables and is passed in and returned.
    See the package docstring for the order a training step calls them in.
    """

    #: True when `needs_second_pass` can say no (the step must branch).
    skips_second_pass: bool = False
    #: True when `combine` is not `(gs, state)` (the step must keep g).
    combines: bool = False
    #: True when `perturbation` draws random numbers (the step passes a
    #: `keras.random.SeedGenerator`).
    random: bool = False
    #: True when eps is formed before any gradient, from the optimizer's
    #: state (`optimizer_direction`): the step then takes one pass, at
    #: w + eps, with the model's state updates, and d = that gradient.
    single_pass: bool = False

    def state_shapes(self, weights: Sequence[Any]) -> list[tuple[tuple, str]]:
        """(shape, dtype) of each state tensor; all start at zero."""
        return []

    def weight_selection(self, model: keras.Model) -> list[bool] | None:
        """Which trainable variables eps may move (None: all of them)."""
        return None

    def optimizer_direction(self, optimizer, trainable_variables):
        """For `single_pass` variants: (optimizer variables, one per trainable
        variable, sign) such that sign * their values point uphill, as g
        does; `perturbation` gets those signed values as its `gradients`."""
        raise NotImplementedError(f"{type(self).__name__} is not single-pass.")

    def needs_second_pass(self, step: Any, gradients: Sequence[Any], state: list):
        """Whether step `step` runs the perturbed pass: a Python bool or a
        boolean scalar tensor. `gradients` is the g that eps is formed from."""
        return True

    def perturbation(self, rule, gradients, weights, rho, state, step, seed=None):
        """eps for this step; by default the perturbation rule's."""
        return rule(gradients, weights, rho)

    def combine(self, gradients, perturbed_gradients, state, step, second_pass):
        """(d, new state). On steps without a second pass the step passes
        gs = g, and `second_pass` is False."""
        return list(perturbed_gradients), list(state)


_VARIANTS = _registry.Registry(
    Variant, "variant", "keras_sam.variants.Variant", allow_none=True
)


def get(identifier: str | Variant | dict[str, Any] | None) -> Variant | None:
    """A variant from a registered name (the paper's default options), an
    instance, a serialized config, or None (plain SAM).

    Returns:
        A `Variant`, or None.

    Raises:
        ValueError: for an unknown name or a bad identifier, naming the
            registered variants.
    """
    return _VARIANTS.get(identifier)


def serialize(variant: Variant | None) -> dict[str, Any] | None:
    """Keras serialization config of `variant`, accepted by `get`.

    Returns:
        A JSON-serializable dict, or None for None.
    """
    return None if variant is None else keras.saving.serialize_keras_object(variant)


def names() -> list[str]:
    """Registered variant names.

    Returns:
        A sorted list of names accepted by `get`.
    """
    return _VARIANTS.names()


def safe_ratio(numerator: Any, denominator: Any) -> Any:
    """numerator / denominator, and 0 where the denominator is not positive
    (never NaN, never inf)."""
    positive = denominator > 0
    return ops.where(positive, numerator / ops.where(positive, denominator, 1.0), 0.0)


def axpy(a: Any, x: Sequence[Any], y: Sequence[Any]) -> list[Any]:
    """a * x + y for gradient lists, with the scalar a cast to each dtype."""
    return [ops.cast(a, yi.dtype) * xi + yi for xi, yi in zip(x, y)]


def linear_combination(a: Any, x: Sequence[Any], b: Any, y: Sequence[Any]):
    """a * x + b * y for gradient lists and scalars a, b."""
    return [
        ops.cast(a, xi.dtype) * xi + ops.cast(b, yi.dtype) * yi for xi, yi in zip(x, y)
    ]


def check_number(name: str, value: Any, low: float, high: float) -> float:
    """`value` as a float in [low, high].

    Returns:
        ``float(value)``.

    Raises:
        ValueError: naming `name`, for a bool, a non-number or a number
            outside [low, high].
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        ok = False
    else:
        ok = low <= value <= high
    if not ok:
        raise ValueError(
            f"`{name}` must be a number in [{low}, {high}], got {name}={value!r}."
        )
    return float(value)


def every_kth(step: Any, every: int) -> Any:
    """True on steps 0, k, 2k, ... (a Python True when k == 1)."""
    if every == 1:
        return True
    return ops.equal(ops.mod(ops.cast(step, "int"), every), 0)

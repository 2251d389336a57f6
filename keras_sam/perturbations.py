"""Perturbation rules: how SAM's ascent step eps is formed.

A rule is a small, pure, backend-agnostic function of the gradients, the
current weights and the radius ``rho``, written with ``keras.ops``. It knows
nothing about tapes, distribution strategies or optimizers, so new rules can be
added without touching any training step:

```python
@keras_sam.perturbations.register("sign")
class SignSAM(keras_sam.perturbations.Perturbation):
    def __call__(self, gradients, weights, rho):
        return [rho * keras.ops.sign(g) for g in gradients]

model = keras_sam.sam(model, perturbation="sign")
```
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
from keras import ops

from keras_sam import _gradient_math, _registry, _validation

__all__ = [
    "ASAM",
    "Perturbation",
    "SAM",
    "USAM",
    "get",
    "global_norm",
    "names",
    "register",
    "serialize",
]

#: Added to norms in denominators so that a zero gradient gives eps = 0.
TINY = 1e-12


def register(name: str) -> Callable[[type[Perturbation]], type[Perturbation]]:
    """Class decorator: makes a `Perturbation` subclass available by `name`.

    The class is also registered with Keras serialization (package
    ``keras_sam``), so models using it can be saved and loaded.

    Returns:
        The decorator, which returns the class unchanged.

    Raises:
        TypeError: when the decorated class is not a `Perturbation`
            subclass.
    """
    return _RULES.register(name)


def global_norm(tensors: Sequence[Any]) -> Any:
    """L2 norm of all `tensors` taken together (inside a SAM step on
    TensorFlow: one `tf.nn.l2_loss` kernel per tensor).

    Returns:
        A float32 scalar tensor.
    """
    return _gradient_math.norm(list(tensors))


class Perturbation(_registry.Configurable):
    """Base class of perturbation rules.

    Subclasses implement `__call__(gradients, weights, rho) -> eps`, returning
    one tensor per weight, and `get_config` if they take options.
    """

    def __call__(
        self, gradients: Sequence[Any], weights: Sequence[Any], rho: Any
    ) -> list[Any]:
        """eps from the gradients g (one per trainable weight), the weights
        w and the radius rho (a scalar tensor).

        Returns:
            eps, one tensor per weight.
        """
        raise NotImplementedError


_RULES = _registry.Registry(
    Perturbation, "perturbation", "keras_sam.perturbations.Perturbation"
)


@register("sam")
class SAM(Perturbation):
    """Normalized SAM (Foret, Kleiner, Mobahi, Neyshabur 2021, arXiv
    2010.01412): eps = rho * g / (||g|| + tiny).

    ``||g||`` is the global L2 norm over all trainable weights.
    """

    def __call__(self, gradients, weights, rho):
        scale = rho / (global_norm(gradients) + TINY)
        return _gradient_math.scale(gradients, scale)


@register("usam")
class USAM(Perturbation):
    """Unnormalized SAM: eps = rho * g, the form the convergence theory of
    Shin, Lee, Andriushchenko, Lee (2023, arXiv 2311.17539) analyses."""

    def __call__(self, gradients, weights, rho):
        return _gradient_math.scale(gradients, rho)


@register("asam")
class ASAM(Perturbation):
    """Adaptive SAM (Kwon, Kim, Park, Choi 2021, arXiv 2102.11600):
    eps = rho * T^2 g / ||T g||, T = |w| + eta.

    As in the authors' code, the adaptive scale T applies to weight matrices
    and kernels (rank >= 2); vectors such as biases and normalization
    parameters use T = 1 unless `adapt_vectors=True`.

    Args:
        eta: positive offset that keeps T away from zero.
        adapt_vectors: also scale rank-0/1 weights by |w| + eta.

    Raises:
        ValueError: for an `eta` that is not a positive number or an
            `adapt_vectors` that is not a bool.

    ```python
    model = keras_sam.sam(model, rho=1.0, perturbation=ASAM(eta=0.01))
    ```
    """

    def __init__(self, eta: float = 0.01, adapt_vectors: bool = False):
        self.eta = _validation.positive_float(eta, "eta")
        self.adapt_vectors = _validation.boolean(adapt_vectors, "adapt_vectors")

    def _scale(self, weight):
        if len(weight.shape) >= 2 or self.adapt_vectors:
            return ops.abs(weight) + ops.cast(self.eta, weight.dtype)
        return None

    def __call__(self, gradients, weights, rho):
        scales = [self._scale(w) for w in weights]
        scales = [
            None if t is None else ops.cast(t, g.dtype)
            for t, g in zip(scales, gradients)
        ]
        # ops.multiply, not `*`: the gradients may be NumPy arrays, which a
        # torch tensor does not multiply.
        gradients = [ops.convert_to_tensor(g) for g in gradients]
        scaled = [
            g if t is None else ops.multiply(t, g) for g, t in zip(gradients, scales)
        ]
        factor = rho / (global_norm(scaled) + TINY)
        twice = [
            tg if t is None else ops.multiply(t, tg) for tg, t in zip(scaled, scales)
        ]
        return _gradient_math.scale(twice, factor)

    def get_config(self):
        return {"eta": self.eta, "adapt_vectors": self.adapt_vectors}


def get(identifier: str | Perturbation | dict[str, Any]) -> Perturbation:
    """Returns a rule from a name (``"sam"``, ``"usam"``, ``"asam"``, or any
    registered name), a `Perturbation` instance, or a serialized config.

    Returns:
        A `Perturbation` instance.

    Raises:
        ValueError: for an unknown name or a bad identifier, naming the
            registered rules.
    """
    return _RULES.get(identifier)


def serialize(rule: Perturbation) -> dict[str, Any]:
    """Keras serialization config of `rule`, accepted by `get`.

    Returns:
        A JSON-serializable dict.
    """
    return keras.saving.serialize_keras_object(rule)


def names() -> list[str]:
    """Registered rule names.

    Returns:
        A sorted list of names accepted by `get`.
    """
    return _RULES.names()

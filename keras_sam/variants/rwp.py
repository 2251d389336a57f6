"""RWP (Li et al., 2022, arXiv 2211.11489): random weight perturbation mixed with
the clean gradient."""

import keras
from keras import ops

from keras_sam import _validation
from keras_sam.variants.base import (
    Variant,
    check_number,
    linear_combination,
    register,
)

__all__ = ["RWP", "filter_norms"]


def filter_norms(weight):
    """|w| per output filter (all axes but the last) for kernels, the whole
    tensor's norm for vectors, broadcast to the weight's shape."""
    w = ops.cast(weight, "float32")
    if len(weight.shape) >= 2:
        axes = tuple(range(len(weight.shape) - 1))
        return ops.sqrt(ops.sum(ops.square(w), axis=axes, keepdims=True))
    return ops.sqrt(ops.sum(ops.square(w)))


@register("rwp")
class RWP(Variant):
    """eps ~ N(0, (sigma |w_f|)^2) per element, |w_f| the norm of the output
    filter the element belongs to (the whole tensor for vectors);
    d = mix gs + (1 - mix) g.

    eps is random and ignores the gradient, `rho` and the `perturbation`
    rule. Draws come from a seed generator saved with the model, so a
    resumed run draws what an uninterrupted one would.

    ```python
    model = keras_sam.sam(model, variant=RWP(sigma=0.01, mix=0.5))
    ```

    Args:
        sigma: noise scale relative to the filter norm (>= 0).
        mix: weight of the perturbed gradient, in [0, 1].
        seed: seed of the noise (None: drawn by Keras).

    Raises:
        ValueError: for a negative `sigma`, a `mix` outside [0, 1] or a
            `seed` that is not None or an integer.
    """

    combines = True
    random = True

    def __init__(self, sigma: float = 0.01, mix: float = 0.5, seed: int | None = None):
        self.sigma = _validation.non_negative_float(sigma, "sigma")
        self.mix = check_number("mix", mix, 0.0, 1.0)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"`seed` must be None or an integer, got seed={seed!r}.")
        self.seed = seed

    def perturbation(self, rule, gradients, weights, rho, state, step, seed=None):
        eps = []
        for g, w in zip(gradients, weights):
            noise = keras.random.normal(tuple(w.shape), seed=seed)
            eps.append(ops.cast(self.sigma * filter_norms(w) * noise, g.dtype))
        return eps

    def combine(self, gradients, perturbed_gradients, state, step, second_pass):
        d = linear_combination(self.mix, perturbed_gradients, 1.0 - self.mix, gradients)
        return d, list(state)

    def get_config(self):
        return {"sigma": self.sigma, "mix": self.mix, "seed": self.seed}

"""GSAM (Zhuang et al., ICLR 2022, arXiv 2203.08065): surrogate gap guided SAM."""

from keras import ops

from keras_sam import _validation
from keras_sam.variants.base import (
    Variant,
    dot,
    linear_combination,
    register,
    safe_ratio,
)

__all__ = ["GSAM"]


@register("gsam")
class GSAM(Variant):
    """d = gs - alpha g_perp, where g_perp = g - (g.gs / gs.gs) gs is the part
    of g orthogonal to gs. A zero gs falls back to d = g.

    GSAM's rho schedule (rho proportional to the learning rate) is
    `keras_sam.variants.ProportionalRho`.

    ```python
    model = keras_sam.sam(model, rho=0.05, variant=GSAM(alpha=0.4))
    ```

    Args:
        alpha: weight of the ascent along g_perp (0 is plain SAM).

    Raises:
        ValueError: for a negative `alpha`.
    """

    combines = True

    def __init__(self, alpha: float = 0.4):
        self.alpha = _validation.non_negative_float(alpha, "alpha")

    def combine(self, gradients, perturbed_gradients, state, step, second_pass):
        g, gs = list(gradients), list(perturbed_gradients)
        # d = (1 + alpha p) gs - alpha g with p = g.gs / gs.gs: two scalars,
        # one pass over the weights; gs = 0 gives d = g.
        gs_squared = dot(gs, gs)
        projection = safe_ratio(dot(g, gs), gs_squared)
        on_gs = 1.0 + self.alpha * projection
        on_g = ops.where(gs_squared > 0, -self.alpha, 1.0)
        return linear_combination(on_gs, gs, on_g, g), list(state)

    def get_config(self):
        return {"alpha": self.alpha}

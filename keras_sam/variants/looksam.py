"""LookSAM (Liu et al., CVPR 2022, arXiv 2203.02714): reuse the SAM gradient's
extra component."""

from keras import ops

from keras_sam import _validation
from keras_sam.variants.base import (
    Variant,
    axpy,
    dot,
    every_kth,
    norm,
    register,
    safe_ratio,
)

__all__ = ["LookSAM"]


@register("looksam")
class LookSAM(Variant):
    """Every k-th step a SAM step that stores the part of gs orthogonal to g;
    the steps in between add that stored part to g, with one pass.

    On step i % k == 0: d = gs, and gv = gs - (gs.g / g.g) g is stored.
    Otherwise: d = g + alpha (|g| / |gv|) gv, Liu et al.'s rule: the added
    part is alpha |g| long, whatever rho is. A zero g or gv contributes
    nothing (d falls back to gs or g), never NaN.

    alpha defaults to 0.2, not the paper's 0.7: with momentum SGD or Adam
    the stored direction, the same vector for k - 1 steps, adds up in the
    optimizer's momentum, and 0.7 |g| along it stalled or diverged training
    where SAM's own orthogonal part is a few percent of |g| (the README's
    MLP, self-attention; docs/variants.md). With alpha < 1, d is always a
    descent direction of the current batch (d.g >= (1 - alpha) |g|^2).

    ```python
    model = keras_sam.sam(model, rho=0.05, variant=LookSAM(every=5))
    paper = LookSAM(every=5, alpha=0.7)  # the paper's value
    ```

    Args:
        every: period k of the SAM steps (1 is plain SAM).
        alpha: weight of the reused component, relative to |g|.

    Raises:
        ValueError: `every` not a positive integer or `alpha` negative,
            naming it.
    """

    skips_second_pass = True
    combines = True

    def __init__(self, every: int = 5, alpha: float = 0.2):
        self.every = _validation.positive_int(every, "every")
        self.alpha = _validation.non_negative_float(alpha, "alpha")

    def state_shapes(self, weights):
        # gv, one tensor per weight, then |gv| (so that the cheap steps read
        # it instead of computing it).
        return [(tuple(w.shape), "float32") for w in weights] + [((), "float32")]

    def needs_second_pass(self, step, gradients, state):
        return every_kth(step, self.every)

    def combine(self, gradients, perturbed_gradients, state, step, second_pass):
        # A Python bool computes one side only (the step may branch first).
        if second_pass is True:
            return self._store(gradients, perturbed_gradients)
        if second_pass is False:
            return self._reuse(gradients, state)
        fresh_d, fresh_state = self._store(gradients, perturbed_gradients)
        reused_d, kept = self._reuse(gradients, state)
        d = [ops.where(second_pass, a, b) for a, b in zip(fresh_d, reused_d)]
        state = [ops.where(second_pass, a, b) for a, b in zip(fresh_state, kept)]
        return d, state

    def _store(self, g, gs):
        projection = safe_ratio(dot(gs, g), dot(g, g))
        gv = [
            ops.cast(s, "float32") - projection * ops.cast(c, "float32")
            for s, c in zip(gs, g)
        ]
        return list(gs), gv + [norm(gv)]

    def _reuse(self, g, state):
        *gv, gv_norm = state
        scale = self.alpha * safe_ratio(norm(g), gv_norm)
        return axpy(scale, gv, g), list(state)

    def get_config(self):
        return {"every": self.every, "alpha": self.alpha}

"""WSAM (Yue et al., KDD 2023, arXiv 2305.15817): sharpness as a weighted
regularizer."""

from keras_sam import _validation
from keras_sam.variants.base import Variant, linear_combination, register

__all__ = ["WSAM"]


@register("wsam")
class WSAM(Variant):
    """d = g + gamma / (1 - gamma) (gs - g).

    gamma = 0.5 is plain SAM, gamma = 0 is the base optimizer's gradient.

    ```python
    model = keras_sam.sam(model, rho=0.05, variant=WSAM(gamma=0.9))
    ```

    Args:
        gamma: weight of the sharpness term, in [0, 1).
    """

    combines = True

    def __init__(self, gamma: float = 0.9):
        self.gamma = _validation.fraction(gamma, "gamma")

    def combine(self, gradients, perturbed_gradients, state, step, second_pass):
        weight = self.gamma / (1.0 - self.gamma)
        d = linear_combination(weight, perturbed_gradients, 1.0 - weight, gradients)
        return d, list(state)

    def get_config(self):
        return {"gamma": self.gamma}

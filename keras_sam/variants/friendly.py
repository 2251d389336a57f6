"""F-SAM / FriendlySAM (Li et al., CVPR 2024, arXiv 2403.12350): eps without
the full-batch gradient component."""

from keras_sam import _validation
from keras_sam.variants.base import Variant, linear_combination, register

__all__ = ["FriendlySAM"]


@register("fsam")
class FriendlySAM(Variant):
    """eps = rule(g - sigma m), with m an exponential moving average of the
    clean gradients: m <- lmbda m + (1 - lmbda) g (updated with the current
    g before eps is formed). d = gs.

    m estimates the full-batch gradient; removing it leaves the batch-specific
    part of g to form eps. Under micro-batches each micro-batch's eps uses
    its own g and the m of the step start; m is updated once per step with
    the batch gradient.

    ```python
    model = keras_sam.sam(model, rho=0.05, variant=FriendlySAM(sigma=1.0, lmbda=0.9))
    ```

    Args:
        sigma: weight of m subtracted from g (0 is plain SAM).
        lmbda: EMA decay of m, in [0, 1).

    Raises:
        ValueError: for a negative `sigma` or an `lmbda` outside [0, 1).
    """

    combines = True

    def __init__(self, sigma: float = 1.0, lmbda: float = 0.9):
        self.sigma = _validation.non_negative_float(sigma, "sigma")
        self.lmbda = _validation.fraction(lmbda, "lmbda")

    def state_shapes(self, weights):
        return [(tuple(w.shape), "float32") for w in weights]

    def _momentum(self, gradients, state):
        return linear_combination(self.lmbda, state, 1.0 - self.lmbda, gradients)

    def perturbation(self, rule, gradients, weights, rho, state, step, seed=None):
        # g - sigma (lmbda m + (1 - lmbda) g), as one linear combination.
        on_g = 1.0 - self.sigma * (1.0 - self.lmbda)
        friendly = linear_combination(on_g, gradients, -self.sigma * self.lmbda, state)
        return rule(friendly, weights, rho)

    def combine(self, gradients, perturbed_gradients, state, step, second_pass):
        return list(perturbed_gradients), self._momentum(gradients, state)

    def get_config(self):
        return {"sigma": self.sigma, "lmbda": self.lmbda}

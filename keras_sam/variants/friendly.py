"""F-SAM / FriendlySAM (Li et al., CVPR 2024): eps without the full-batch
gradient component."""

from keras import ops

from keras_sam import _validation
from keras_sam.variants.base import Variant, register


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
    """

    combines = True

    def __init__(self, sigma: float = 1.0, lmbda: float = 0.9):
        self.sigma = _validation.non_negative_float(sigma, "sigma")
        self.lmbda = _validation.fraction(lmbda, "lmbda")

    def state_shapes(self, weights):
        return [(tuple(w.shape), "float32") for w in weights]

    def _momentum(self, gradients, state):
        return [
            self.lmbda * m + (1.0 - self.lmbda) * ops.cast(g, "float32")
            for g, m in zip(gradients, state)
        ]

    def perturbation(self, rule, gradients, weights, rho, state, step, seed=None):
        momentum = self._momentum(gradients, state)
        friendly = [
            g - ops.cast(self.sigma * m, g.dtype) for g, m in zip(gradients, momentum)
        ]
        return rule(friendly, weights, rho)

    def combine(self, gradients, perturbed_gradients, state, step, second_pass):
        return list(perturbed_gradients), self._momentum(gradients, state)

    def get_config(self):
        return {"sigma": self.sigma, "lmbda": self.lmbda}

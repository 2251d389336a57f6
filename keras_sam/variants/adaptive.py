"""AE-SAM (Jiang, Yang, Zhang, Kwok, ICLR 2023, arXiv 2304.14647): SAM only
where the gradient is large."""

from keras import ops

from keras_sam import _validation
from keras_sam.variants.base import Variant, check_number, dot, register

__all__ = ["AESAM"]


@register("aesam")
class AESAM(Variant):
    """Runs the SAM step when ||g||^2 >= mean + threshold * std, where mean
    and variance are exponential moving averages of ||g||^2 (decay
    `momentum`, updated with the current g first); otherwise d = g with one
    pass.

    Under micro-batches each micro-batch decides on its own ||g||^2 against
    the statistics of the batch gradients.

    ```python
    model = keras_sam.sam(model, rho=0.05, variant=AESAM(threshold=0.0))
    ```

    Args:
        threshold: c, in standard deviations above the mean (a finite
            number; very negative values give SAM on every step).
        momentum: EMA decay, in [0, 1).

    Raises:
        ValueError: for a `threshold` that is not a finite number or a
            `momentum` outside [0, 1).
    """

    skips_second_pass = True
    combines = True

    def __init__(self, threshold: float = 0.0, momentum: float = 0.9):
        self.threshold = check_number("threshold", threshold, -1e30, 1e30)
        self.momentum = _validation.fraction(momentum, "momentum")

    def state_shapes(self, weights):
        return [((), "float32"), ((), "float32")]

    def _statistics(self, gradients, state):
        mean, variance = state
        squared = dot(gradients, gradients)
        mean = self.momentum * mean + (1.0 - self.momentum) * squared
        variance = self.momentum * variance + (1.0 - self.momentum) * ops.square(
            squared - mean
        )
        return squared, mean, variance

    def needs_second_pass(self, step, gradients, state):
        squared, mean, variance = self._statistics(gradients, state)
        return squared >= mean + self.threshold * ops.sqrt(variance)

    def combine(self, gradients, perturbed_gradients, state, step, second_pass):
        _, mean, variance = self._statistics(gradients, state)
        return list(perturbed_gradients), [mean, variance]

    def get_config(self):
        return {"threshold": self.threshold, "momentum": self.momentum}

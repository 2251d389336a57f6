"""Lazy SAM: the SAM step on every k-th step, plain steps in between."""

from keras_sam import _validation
from keras_sam.variants.base import Variant, every_kth, register

__all__ = ["LazySAM"]


@register("lazysam")
class LazySAM(Variant):
    """d = gs when step % every == 0, else d = g.

    The steps in between run one forward-backward pass, not two.

    ```python
    model = keras_sam.sam(model, rho=0.05, variant=LazySAM(every=5))
    ```

    Args:
        every: period k of the SAM steps (1 is plain SAM).

    Raises:
        ValueError: for an `every` that is not a positive integer.
    """

    skips_second_pass = True

    def __init__(self, every: int = 5):
        self.every = _validation.positive_int(every, "every")

    def needs_second_pass(self, step, gradients, state):
        return every_kth(step, self.every)

    def get_config(self):
        return {"every": self.every}

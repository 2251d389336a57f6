"""WSAM (Yue et al., KDD 2023, arXiv 2305.15817): sharpness as a weighted
regularizer."""

from keras import ops

from keras_sam import _validation
from keras_sam.variants.base import Variant, linear_combination, register

__all__ = ["WSAM"]


@register("wsam")
class WSAM(Variant):
    """The loss plus gamma / (1 - gamma) times SAM's sharpness, with the
    sharpness term applied apart from the optimizer, as the paper does.

    Decoupled (the default, the paper's form): the optimizer takes the clean
    gradient g, and after its update the weights move by
    -lr * gamma / (1 - gamma) * (gs - g), lr the optimizer's learning rate at
    the step, like AdamW's weight decay. The 9x-weighted term (gamma 0.9)
    never enters the optimizer's momentum or second moments.

    Coupled (``decoupled=False``): the optimizer takes
    d = g + gamma / (1 - gamma) (gs - g). With momentum the weighted term
    accumulates there: on the README's MLP with SGD(momentum=0.9) gamma 0.9
    cost 4.6 test points, and MNIST-1D diverged at SAM's rhos, where the
    decoupled form matches SAM's gain (docs/variants.md). With plain SGD the
    two forms are the same update. Neither is safe on self-attention with
    momentum SGD at lr 0.1, where SAM itself fails (the decoupled form
    diverges there).

    gamma = 0.5 is plain SAM's objective, gamma = 0 the base optimizer.

    ```python
    model = keras_sam.sam(model, rho=0.05, variant=WSAM(gamma=0.9))
    coupled = WSAM(gamma=0.9, decoupled=False)
    ```

    Args:
        gamma: weight of the sharpness term, in [0, 1).
        decoupled: apply the sharpness term after the optimizer's update
            (True) or hand it to the optimizer inside d (False).

    Raises:
        ValueError: `gamma` outside [0, 1) or `decoupled` not a bool, naming
            it.
    """

    combines = True

    def __init__(self, gamma: float = 0.9, decoupled: bool = True):
        self.gamma = _validation.fraction(gamma, "gamma")
        self.decoupled = _validation.boolean(decoupled, "decoupled")
        self.decouples = self.decoupled

    @property
    def weight(self) -> float:
        """gamma / (1 - gamma), the sharpness term's weight."""
        return self.gamma / (1.0 - self.gamma)

    def combine(self, gradients, perturbed_gradients, state, step, second_pass):
        if self.decoupled:
            return list(gradients), list(state)
        w = self.weight
        d = linear_combination(w, perturbed_gradients, 1.0 - w, gradients)
        return d, list(state)

    def decoupled_update(self, gradients, perturbed_gradients):
        w = self.weight
        return [
            ops.cast(w, g.dtype) * (ops.cast(s, g.dtype) - g)
            for g, s in zip(gradients, perturbed_gradients)
        ]

    def get_config(self):
        return {"gamma": self.gamma, "decoupled": self.decoupled}

    @classmethod
    def from_config(cls, config):
        # Configs saved before `decoupled` existed were trained coupled.
        return cls(**{"decoupled": False, **config})

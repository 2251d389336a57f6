"""Momentum-SAM (Becker, Altrock and Risse, 2024, arXiv 2401.12033): eps along
the optimizer's momentum, one forward-backward pass per step."""

from __future__ import annotations

import keras

from keras_sam import _compat, optimizers
from keras_sam.variants.base import Variant, register

__all__ = ["MomentumSAM", "momentum_buffers"]

#: How each known momentum buffer relates to the accumulated gradient v
#: (v <- mu v + g): +1 where the buffer is such an accumulation (Adam's
#: first moment, `L2SGD`'s buffer), -1 where it is Keras SGD's velocity
#: (m <- mu m - lr g, so m = -lr v at a constant learning rate).
_SIGNS = ((optimizers.L2SGD, 1.0), (keras.optimizers.SGD, -1.0))

_ACCEPTED = (
    "keras.optimizers.SGD(momentum > 0), keras_sam.optimizers.L2SGD(momentum "
    "> 0), Adam, AdamW, Nadam, Adamax or Lion"
)


def _inner(optimizer):
    # The loss-scale optimizer keeps its inner optimizer's slots there.
    return getattr(optimizer, "inner_optimizer", optimizer)


def momentum_buffers(optimizer, trainable_variables):
    """(the momentum buffer of each of `trainable_variables`, sign with which
    it points uphill); a ValueError for an optimizer without one."""
    optimizer = _inner(optimizer)
    if isinstance(optimizer, optimizers.L2SGD):
        buffers = list(getattr(optimizer, "buffers", []))
    else:
        buffers = _compat.momentum_slots(optimizer)
    if not buffers:
        name = type(optimizer).__name__
        if buffers is not None:
            name += " with momentum=0"
        raise ValueError(
            f"MomentumSAM perturbs along the optimizer's momentum buffer; the "
            f"compiled optimizer ({name}) keeps none. Use {_ACCEPTED}."
        )
    sign = next((s for cls, s in _SIGNS if isinstance(optimizer, cls)), 1.0)
    index = [
        _compat.optimizer_variable_index(optimizer, v) for v in trainable_variables
    ]
    return [buffers[i] for i in index], sign


@register("msam", "momentum_sam")
class MomentumSAM(Variant):
    """eps = rule(-v), v the optimizer's momentum (the running sum of past
    gradients): the weights move *against* it by rho, as in the paper
    (eps = -rho v / ||v|| for the default rule), and the step takes one
    forward-backward pass, at w + eps, whose gradient the optimizer applies
    at w. There is no clean pass: the logged loss and metrics are taken at
    w + eps, and the model's state updates (batch-norm statistics) happen in
    that pass.

    The paper's trick (Nesterov-like): v already averages past gradients, so
    no fresh gradient is needed for eps. v is zero before the first update,
    so the first step is a plain step.

    ```python
    model = keras_sam.sam(model, rho=0.3, variant="msam")
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), loss=...)
    ```

    The optimizer must keep a momentum buffer: Keras's SGD with momentum
    (its buffer is the velocity -lr v; only the direction matters here),
    `keras_sam.optimizers.L2SGD` with momentum, Adam, AdamW, Nadam, Adamax
    or Lion (their first moment). Others are refused when training starts.
    Its rho is not SAM's: eps follows a smoothed descent direction, so
    tune rho for it rather than reuse SAM's.
    """

    single_pass = True

    def optimizer_direction(self, optimizer, trainable_variables):
        return momentum_buffers(optimizer, trainable_variables)

    def perturbation(self, rule, gradients, weights, rho, state, step, seed=None):
        # `gradients` is the uphill momentum direction; MSAM moves downhill.
        return rule([-g for g in gradients], weights, rho)

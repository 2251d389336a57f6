"""Gradients of a loss with respect to variables, without state updates, on
every backend (for scorers such as SNIP, outside the training step)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras


def stateless_gradients(
    loss_fn: Callable[[], Any], variables: Sequence[keras.Variable]
) -> list[Any]:
    """The gradient of ``loss_fn()`` with respect to `variables`, one tensor
    per variable (zeros where the loss does not depend on it).

    ``loss_fn`` runs inside a `keras.StatelessScope`: batch-norm statistics,
    seeds and every other variable are left as they were.
    """
    variables = list(variables)
    name = keras.backend.backend()
    if name == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape, keras.StatelessScope():
            value = loss_fn()
        return tape.gradient(
            value, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
    if name == "jax":
        import jax

        def loss_of(values):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return loss_fn()

        return jax.grad(loss_of)([v.value for v in variables])
    if name == "torch":
        import torch

        leaves = [v.value.detach().clone().requires_grad_() for v in variables]
        with keras.StatelessScope(state_mapping=list(zip(variables, leaves))):
            value = loss_fn()
        grads = torch.autograd.grad(value, leaves, allow_unused=True)
        return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves)]
    raise NotImplementedError(f"No gradient for the Keras backend {name!r}.")

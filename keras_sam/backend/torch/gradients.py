"""Gradients without state updates on PyTorch (outside the SAM step)."""

from __future__ import annotations

import keras
import torch


def stateless_gradients(loss_fn, variables):
    """The gradient of ``loss_fn()`` with respect to `variables`, one tensor
    per variable (zeros where the loss does not depend on it); ``loss_fn``
    runs in a `keras.StatelessScope` (batch-norm statistics, seeds and every
    other variable are left as they were).

    Returns:
        A list of tensors, one per variable.
    """
    variables = list(variables)
    leaves = [v.value.detach().clone().requires_grad_() for v in variables]
    with keras.StatelessScope(state_mapping=list(zip(variables, leaves))):
        value = loss_fn()
    grads = torch.autograd.grad(value, leaves, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves)]

"""Gradients without state updates on JAX (outside the SAM step)."""

from __future__ import annotations

import jax
import keras


def stateless_gradients(loss_fn, variables):
    """The gradient of ``loss_fn()`` with respect to `variables`, one array
    per variable; ``loss_fn`` runs in a `keras.StatelessScope` (batch-norm
    statistics, seeds and every other variable are left as they were).

    Returns:
        A list of arrays, one per variable.
    """
    variables = list(variables)

    def loss_of(values):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return loss_fn()

    return jax.grad(loss_of)([v.value for v in variables])

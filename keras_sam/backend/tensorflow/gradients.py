"""Gradients without state updates on TensorFlow (outside the SAM step)."""

from __future__ import annotations

import keras
import tensorflow as tf


def stateless_gradients(loss_fn, variables):
    """The gradient of ``loss_fn()`` with respect to `variables`, one tensor
    per variable (zeros where the loss does not depend on it); ``loss_fn``
    runs in a `keras.StatelessScope` (batch-norm statistics, seeds and every
    other variable are left as they were). In a strategy's cross-replica
    context (where distributed variables cannot be differentiated) it runs
    on the first replica, with the whole batch.

    Returns:
        A list of tensors, one per variable.
    """
    variables = list(variables)
    if tf.distribute.has_strategy() and tf.distribute.in_cross_replica_context():
        strategy = tf.distribute.get_strategy()
        results = strategy.run(lambda: _gradients(loss_fn, variables))
        return [strategy.experimental_local_results(r)[0] for r in results]
    return _gradients(loss_fn, variables)


def _gradients(loss_fn, variables):
    with tf.GradientTape() as tape, keras.StatelessScope():
        value = loss_fn()
    return tape.gradient(
        value, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO
    )

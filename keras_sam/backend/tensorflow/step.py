"""The SAM training step on the TensorFlow backend: the passes of
`keras_sam.sam_step`, with tapes, a `tf.while_loop` over micro-batches and
the `tf.distribute` reductions (`replicas.py`).

The clean pass applies the model's state updates; the perturbed pass runs
inside a `keras.StatelessScope` that maps the trainable weights to w + eps
and the state to the clean pass's snapshot: the same function (same dropout
masks, same batch statistics, regularizers at w + eps) and no state change.
Under a multi-replica strategy Keras divides each replica's loss by the
number of replicas R and the optimizer sums the replicas' gradients.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_sam import _compat, _gradient_math, sam_step
from keras_sam.backend import PER_REPLICA, SYNCHRONIZED
from keras_sam.backend._common import build_before_step, forward
from keras_sam.backend.passes import Passes
from keras_sam.backend.tensorflow import gradient_math, micro_batches, replicas


def train_step(model, data):
    """`SAMModel.train_step` for TensorFlow: returns the logs dict."""
    x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
    build_before_step(model, x)
    # The rules' global norms and dot products as TensorFlow's own kernels.
    with _gradient_math.dot_kernel(gradient_math.dot):
        logs = sam_step.train_step(model, TensorFlowPasses(model), data)
    return replicas.logs_for_reduction(logs)


class TensorFlowPasses(Passes):
    """The passes, loop and replica reductions of `keras_sam.sam_step` on
    TensorFlow."""

    def __init__(self, model):
        super().__init__(model)
        self.replicas = replicas.num_replicas()
        # Set while tracing: variables that the perturbed pass's loss does
        # not reach get no gradient (None), as in Keras's own step.
        self.unconnected = [False] * len(model.trainable_variables)

    def weights(self):
        return [tf.identity(v.value) for v in self.model.trainable_variables]

    def clean(self, x, y, sample_weight):
        model = self.model
        self.state = [tf.identity(v.value) for v in model.non_trainable_variables]
        grads, y_pred, loss = _compiled(model, _clean_pass)(model, x, y, sample_weight)
        return grads, y_pred, replicas.unscale_for_replicas(loss)

    def perturbed(self, x, y, sample_weight, weights):
        model = self.model
        grads, loss = _compiled(model, _perturbed_pass)(
            model, x, y, sample_weight, weights, self.state
        )
        self.unconnected = [g is None for g in grads]
        grads = [
            tf.zeros_like(w) if g is None else tf.convert_to_tensor(g)
            for g, w in zip(grads, weights)
        ]
        return grads, replicas.unscale_for_replicas(loss)

    def single(self, x, y, sample_weight, weights):
        model = self.model
        grads, y_pred, loss, updates = _compiled(model, _single_pass)(
            model, x, y, sample_weight, weights
        )
        for variable, value in zip(model.non_trainable_variables, updates):
            if value is not None:
                variable.assign(value)
        return grads, y_pred, replicas.unscale_for_replicas(loss)

    def micro_batches(self, fn, data):
        return micro_batches.run(self.model, fn, data)

    def apply(self, grads):
        grads = [None if u else g for g, u in zip(grads, self.unconnected)]
        self.model.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))

    def eps_gradients(self, grads):
        model = self.model
        mode = PER_REPLICA if model.micro_batch_size else model.replica_eps
        return replicas.gradients_for_eps(grads, mode)

    def replica_mean(self, grads):
        # Each replica's gradient is g_r / R: their sum is the mean.
        if self.replicas == 1:
            return grads
        context = tf.distribute.get_replica_context()
        return context.all_reduce(tf.distribute.ReduceOp.SUM, grads)

    def replica_share(self, grads):
        # The optimizer sums the replicas' gradients.
        if self.replicas == 1:
            return grads
        return [g / tf.cast(self.replicas, g.dtype) for g in grads]

    def all_finite(self, tensors):
        return replicas.all_replicas_finite(tensors)

    def eps_batch_size(self, batch_size):
        if self.model.replica_eps == SYNCHRONIZED:
            return batch_size * self.replicas
        return batch_size


def _clean_pass(model, x, y, sample_weight):
    with tf.GradientTape() as tape:
        y_pred = forward(model, x)
        loss = _loss(model, x, y, y_pred, sample_weight)
        scaled_loss = model.optimizer.scale_loss(loss)
    grads = tape.gradient(
        scaled_loss,
        model.trainable_variables,
        unconnected_gradients=tf.UnconnectedGradients.ZERO,
    )
    return [tf.convert_to_tensor(g) for g in grads], y_pred, loss


def _perturbed_pass(model, x, y, sample_weight, perturbed_weights, state):
    with tf.GradientTape() as tape:
        tape.watch(perturbed_weights)
        mapping = list(zip(model.trainable_variables, perturbed_weights))
        mapping += list(zip(model.non_trainable_variables, state))
        with keras.StatelessScope(state_mapping=mapping, collect_losses=True):
            y_pred = forward(model, x)
            loss = _loss(model, x, y, y_pred, sample_weight)
            scaled_loss = model.optimizer.scale_loss(loss)
    return tape.gradient(scaled_loss, perturbed_weights), loss


def _single_pass(model, x, y, sample_weight, perturbed):
    with tf.GradientTape() as tape:
        tape.watch(perturbed)
        mapping = list(zip(model.trainable_variables, perturbed))
        with keras.StatelessScope(state_mapping=mapping, collect_losses=True) as scope:
            y_pred = forward(model, x)
            loss = _loss(model, x, y, y_pred, sample_weight)
            scaled_loss = model.optimizer.scale_loss(loss)
    grads = tape.gradient(
        scaled_loss, perturbed, unconnected_gradients=tf.UnconnectedGradients.ZERO
    )
    updates = [scope.get_current_value(v) for v in model.non_trainable_variables]
    return [tf.convert_to_tensor(g) for g in grads], y_pred, loss, updates


def _compiled(model, pass_fn):
    """`pass_fn` itself, or compiled with XLA per replica: under a
    multi-replica strategy Keras cannot compile the whole step
    (`trainer.prepare_train_function` then moves `jit_compile` here)."""
    if not getattr(model, "_jit_compile_per_replica", False):
        return pass_fn
    return tf.function(pass_fn, jit_compile=True, autograph=False)


def _loss(model, x, y, y_pred, sample_weight):
    return _compat.compute_loss(model, x, y, y_pred, sample_weight, training=True)

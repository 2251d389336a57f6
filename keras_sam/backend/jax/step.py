"""The SAM training step on the JAX backend: the passes of
`keras_sam.sam_step`, stateless like Keras's JAX trainer.

`train_step(model, state, data) -> (logs, state)` runs the backend-neutral
update inside a `keras.StatelessScope` over the state Keras's JAX trainer
carries (trainable, non-trainable, optimizer and metrics values), the way
Keras's `stateless_apply` runs `apply`: the update reads and writes the
model's variables, and the new state is read back from the scope.

Each pass is `jax.value_and_grad` over `model.compute_loss_and_updates`
(Keras's stateless forward and loss); the perturbed pass takes the clean
pass's input state, so the same dropout masks and batch statistics, and its
state output is dropped. Micro-batches run in a `jax.lax.scan`
(`micro_batches.py`).

Distribution: under `keras.distribution.DataParallel` the batch is sharded
and the step is one jitted program over the global batch, so g is the
global gradient and eps is synchronized. ``replica_eps="per_replica"`` with
several devices is refused (use ``micro_batch_size`` = the per-device batch
for the same m-sharpness).
"""

from __future__ import annotations

import jax
import keras

from keras_sam import sam_step
from keras_sam.backend import PER_REPLICA
from keras_sam.backend.jax import micro_batches
from keras_sam.backend.passes import Passes
from keras_sam.sparsity import kernel_masks
from keras_sam.sparsity._masks import mask_values


def train_step(model, state, data):
    """`SAMModel.train_step` for JAX: returns ``(logs, state)``."""
    _check_replica_eps(model)
    groups = _state_variables(model)
    mapping = [(v, value) for g, s in zip(groups, state) for v, value in zip(g, s)]
    with keras.StatelessScope(state_mapping=mapping) as scope:
        logs = sam_step.train_step(model, JaxPasses(model), data)
    state = tuple([scope.get_current_value(v) for v in group] for group in groups)
    return logs, state


class JaxPasses(Passes):
    """The passes and the micro-batch scan of `keras_sam.sam_step` on JAX
    (variables read and written inside the step's `StatelessScope`)."""

    def __init__(self, model):
        super().__init__(model)
        self.grad_fn = jax.value_and_grad(model.compute_loss_and_updates, has_aux=True)

    def _gradients(self, weights, non_trainable, x, y, sample_weight):
        model = self.model
        (_, aux), grads = self.grad_fn(
            weights,
            non_trainable,
            [v.value for v in model.metrics_variables],
            x,
            y,
            sample_weight,
            training=True,
            optimizer_variables=[v.value for v in model.optimizer.variables],
        )
        return grads, aux

    def clean(self, x, y, sample_weight):
        model = self.model
        self.state = [v.value for v in model.non_trainable_variables]
        grads, aux = self._gradients(self.weights(), self.state, x, y, sample_weight)
        loss, y_pred = aux[:2]
        self._write(aux)
        return grads, y_pred, loss

    def perturbed(self, x, y, sample_weight, weights):
        # The clean pass's input state (same seeds); its updates are dropped.
        grads, (loss, *_) = self._gradients(weights, self.state, x, y, sample_weight)
        return grads, loss

    def single(self, x, y, sample_weight, weights):
        state = [v.value for v in self.model.non_trainable_variables]
        grads, aux = self._gradients(weights, state, x, y, sample_weight)
        self._write(aux)
        return grads, aux[1], aux[0]

    def _write(self, aux):
        _, _, non_trainable, metrics = aux
        model = self.model
        for variable, value in zip(model.non_trainable_variables, non_trainable):
            variable.assign(value)
        for variable, value in zip(model.metrics_variables, metrics):
            variable.assign(value)

    def micro_batches(self, fn, data):
        return micro_batches.run(self.model, fn, data, _state_variables(self.model))

    def apply(self, grads):
        model = self.model
        optimizer = model.optimizer
        trainable = model.trainable_variables
        masks = kernel_masks(trainable)
        # `stateless_apply` maps only the weights and its own variables: the
        # mask constraints are told their values.
        with mask_values(masks, [None if m is None else m.value for m in masks]):
            weights, optimizer_values = optimizer.stateless_apply(
                [v.value for v in optimizer.variables],
                grads,
                [v.value for v in trainable],
            )
        for variable, value in zip(trainable, weights):
            variable.assign(value)
        for variable, value in zip(optimizer.variables, optimizer_values):
            variable.assign(value)


def _state_variables(model):
    """The variables of Keras's JAX state, in its order."""
    return (
        model.trainable_variables,
        model.non_trainable_variables,
        model.optimizer.variables,
        model.metrics_variables,
    )


def _check_replica_eps(model):
    if model.replica_eps != PER_REPLICA:
        return
    distribution = keras.distribution.distribution()
    devices = getattr(getattr(distribution, "device_mesh", None), "devices", None)
    if devices is not None and devices.size > 1:
        raise ValueError(
            'replica_eps="per_replica" is not supported on the JAX backend with '
            f"a keras.distribution over {devices.size} devices: the step is one "
            'program over the global batch. Use replica_eps="synchronized" '
            "(eps from the global gradient), or micro_batch_size=<per-device "
            "batch size> for eps from each device's share of the batch."
        )

"""The SAM training step on the PyTorch backend: the passes of
`keras_sam.sam_step`, stateful like Keras's torch trainer.

The clean pass runs the model with its state updates and takes
`torch.autograd.grad` at w. The perturbed pass is functional: inside a
`keras.StatelessScope` that maps the trainable weights to new leaf tensors
w + eps and the state to the clean pass's snapshot (what `stateless_call`
does), with torch's global generators replayed (`replayed_randomness`), so
the same dropout masks and batch statistics, regularizers at w + eps, and no
variable written. Micro-batches run in a Python loop.

Under the `DistributedDataParallel` wrapper of Keras 3.16's torch trainer the
step averages g (before eps) and gs over the replicas itself:
`torch.autograd.grad` does not fire DDP's all-reduce hooks (see
`_compat.ddp_process_group`).
"""

from __future__ import annotations

import contextlib
import functools

import keras
import torch
from keras import tree

from keras_sam import _compat, _gradient_math, sam_model, sam_step
from keras_sam.backend import SYNCHRONIZED
from keras_sam.backend._common import build_before_step, first_tensor, forward
from keras_sam.backend.passes import Passes
from keras_sam.backend.torch import gradient_math


def train_step(model, data):
    """`SAMModel.train_step` for PyTorch: returns the logs dict."""
    x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
    build_before_step(model, x)
    # The rules' norms, eps and w + eps in torch calls (eager: each
    # `keras.ops` call in their per-weight loops costs its dispatch).
    with _gradient_math.kernels(
        dot=gradient_math.dot, scale=gradient_math.scale, add=gradient_math.add
    ):
        return sam_step.train_step(model, TorchPasses(model), data)


class TorchPasses(Passes):
    """The passes, loop and DDP reductions of `keras_sam.sam_step` on torch."""

    def __init__(self, model):
        super().__init__(model)
        # Read once a step: each read walks the model's layers.
        self.trainable = model.trainable_variables
        self.non_trainable = model.non_trainable_variables
        self.group = _compat.ddp_process_group(model)
        self.network = _network(model) if self.group is None else model
        # Under DDP, eps from the all-reduced g, as on one device; micro-
        # batches and "per_replica" form it from this replica's examples.
        self.synchronized = (
            self.group is not None
            and model.micro_batch_size is None
            and model.replica_eps == SYNCHRONIZED
        )

    def weights(self):
        return [v.value.detach() for v in self.trainable]

    def clean(self, x, y, sample_weight):
        model = self.model
        self.state = [v.value.detach().clone() for v in self.non_trainable]
        self.randomness = global_randomness()
        weights = [v.value for v in self.trainable]
        y_pred = _forward(self.network, model, x)
        loss = _compat.compute_loss(model, x, y, y_pred, sample_weight)
        grads = _gradients(model.optimizer.scale_loss(loss), weights)
        return grads, _detach(y_pred), loss.detach()

    def perturbed(self, x, y, sample_weight, weights):
        model = self.model
        leaves = [w.detach().requires_grad_() for w in weights]
        mapping = list(zip(self.trainable, leaves))
        mapping += list(zip(self.non_trainable, self.state))
        with (
            replayed_randomness(self.randomness),
            _compat.stateless_scope(mapping, collect_losses=True),
        ):
            y_pred = _forward(self.network, model, x)
            loss = _compat.compute_loss(model, x, y, y_pred, sample_weight)
            scaled = model.optimizer.scale_loss(loss)
        return _gradients(scaled, leaves), loss.detach()

    def single(self, x, y, sample_weight, weights):
        model = self.model
        leaves = [w.detach().requires_grad_() for w in weights]
        mapping = list(zip(self.trainable, leaves))
        with _compat.stateless_scope(mapping, collect_losses=True) as scope:
            y_pred = _forward(self.network, model, x)
            loss = _compat.compute_loss(model, x, y, y_pred, sample_weight)
            scaled = model.optimizer.scale_loss(loss)
        for variable in self.non_trainable:
            value = scope.get_current_value(variable)
            if value is not None:
                variable.assign(value)
        return _gradients(scaled, leaves), _detach(y_pred), loss.detach()

    def micro_batches(self, fn, data):
        m = self.model.micro_batch_size
        n = first_tensor(data).shape[0]
        sums, preds = None, []
        for start in range(0, n, m):
            piece = tree.map_structure(
                lambda t, start=start: None if t is None else t[start : start + m],
                data,
            )
            terms, y_pred = fn(*piece)
            fraction = (min(start + m, n) - start) / n
            terms = tree.map_structure(lambda t, f=fraction: t * f, terms)
            sums = terms if sums is None else tree.map_structure(torch.add, sums, terms)
            preds.append(y_pred)
        return sums, tree.map_structure(lambda *parts: torch.cat(parts), *preds)

    def apply(self, grads):
        with torch.no_grad():
            self.model.optimizer.apply(grads, self.trainable)

    def eps_gradients(self, grads):
        return self.replica_mean(grads) if self.synchronized else grads

    def replica_mean(self, grads):
        """The mean of `grads` over the DDP process group, in one all-reduce."""
        if self.group is None:
            return grads
        dtype = functools.reduce(torch.promote_types, [t.dtype for t in grads])
        flat = torch.cat([t.reshape(-1).to(dtype) for t in grads])
        torch.distributed.all_reduce(flat, group=self.group)
        flat = flat / torch.distributed.get_world_size(self.group)
        parts = flat.split([t.numel() for t in grads])
        return [p.view_as(t).to(t.dtype) for p, t in zip(parts, grads)]

    def optimizer_gradients(self, grads):
        return self.replica_mean(grads)

    def eps_batch_size(self, batch_size):
        if not self.synchronized:
            return batch_size
        return batch_size * torch.distributed.get_world_size(self.group)


def _network(model):
    """What the passes call: the inner model of a `SAMWrapper` whose own
    layer call would pass the inputs on unchanged, else `model`.

    `SAMWrapper.call` is `self.model(inputs, training=training)`; with its
    `call` not overridden and no autocast scope of its own (compute dtype =
    variable dtype), the wrapper's `Layer.__call__` around it changes nothing
    but the depth of the Python stack (`_forward` also checks that it would
    cast no input). Inside `fit`, those ~10 frames more made CPython 3.11 map
    and unmap a frame-stack chunk ~60 times a ViT SAM step (~340 page faults,
    ~6 ms of a 48 ms step; the plain task's step stays inside one chunk).
    """
    inner = getattr(model, "model", None)
    if (
        isinstance(model, sam_model.SAMWrapper)
        and type(model).call is sam_model.SAMWrapper.call
        and isinstance(inner, keras.Model)
        and model.compute_dtype == model.variable_dtype
    ):
        return inner
    return model


def _forward(network, model, x):
    # `network` from `_network(model)`: the inner model gets `x` as the
    # wrapper's `SAMWrapper.call` would pass it, with `training=True`.
    if network is model or _casts_inputs(model, x):
        return forward(model, x)
    return network(x, training=True)


def _casts_inputs(model, x):
    # Whether `model`'s layer call could cast some of `x` (a floating input
    # not in its input dtype): then the passes call `model` itself.
    return any(
        t is not None
        and keras.backend.is_float_dtype(t.dtype)
        and keras.backend.standardize_dtype(t.dtype) != model.input_dtype
        for t in tree.flatten(x)
    )


def global_randomness():
    """torch's global generators' states (CPU, and each CUDA device once CUDA
    is initialized): what an unseeded layer draws from.

    Keras's seeded layers draw from their seed state, which the perturbed
    pass maps to the clean pass's; an unseeded `Dropout` takes Keras's fast
    path on torch's global generator instead. Replaying these states in the
    perturbed pass gives it the clean pass's masks.
    """
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
    return torch.get_rng_state(), cuda


@contextlib.contextmanager
def replayed_randomness(states):
    """Within, torch's global generators draw what they drew from `states`
    (see `global_randomness`); after, they continue where they were, so a
    step consumes the global stream once, as Keras's own step does."""
    cpu, cuda = states
    devices = list(range(len(cuda)))
    with torch.random.fork_rng(devices=devices):
        torch.set_rng_state(cpu)
        for device, state in zip(devices, cuda):
            torch.cuda.set_rng_state(state, device)
        yield


def _gradients(loss, tensors):
    grads = torch.autograd.grad(loss, tensors, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, tensors)]


def _detach(structure):
    return tree.map_structure(
        lambda t: t.detach() if torch.is_tensor(t) else t, structure
    )

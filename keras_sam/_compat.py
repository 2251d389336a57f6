"""The one module that touches private Keras and TensorFlow internals.

Everything here is outside Keras' public API and may move in any release.
Each item says why the public API does not suffice; `tests/test_compat.py`
checks each one against the installed Keras and fails with a message
naming the item when a release moves it. The tested Keras range is declared
in ``pyproject.toml`` (``dependencies``).
"""

from __future__ import annotations

import contextlib
from typing import Any

import keras

# Turns a plain loss function `fn(y_true, y_pred)` into a `keras.losses.Loss`
# with Keras' reduction and sample-weight handling. `keras.losses.get` returns
# bare functions for names such as "mse", and no public class wraps them.
from keras.src.losses import LossFunctionWrapper

# `keras.Model(inputs, outputs)` returns an instance of this class, which Keras
# does not export. `SAMModel(inputs, outputs)` must return a subclass of it
# (as `keras.Model` does) for functional models to build, save and load like
# Keras' own; no public name reaches it.
from keras.src.models.functional import Functional

__all__ = [
    "BUILD_HOOK",
    "SYMBOLIC_BUILD_HOOK",
    "Functional",
    "LossFunctionWrapper",
    "call_has_training_arg",
    "compile_arguments",
    "compute_loss",
    "ddp_process_group",
    "exact_tensorflow_moments",
    "flatten_layers",
    "in_multi_worker_mode",
    "loss_tracker",
    "momentum_slots",
    "multi_optimizer_index",
    "optimizer_variable_index",
    "own_trainable_variables",
    "routed_factor_calls",
    "stateless_scope",
    "unlocked_tracker",
    "vectorizable_tensorflow_einsum",
]

#: The `keras.Model` hook, called by `fit`, `evaluate` and `predict` (on
#: TensorFlow; on JAX too from Keras 3.16), that
#: builds the model, its metrics and optimizer from the first batch. There is
#: no public hook for this; `SAMModel` overrides it to build from a
#: worker-local batch under `MultiWorkerMirroredStrategy`
#: (keras-team/keras#20585).
SYMBOLIC_BUILD_HOOK = "_maybe_symbolic_build"

#: The `keras.Model` method that `SYMBOLIC_BUILD_HOOK` calls on TensorFlow and
#: that Keras's JAX trainer calls directly, before it gathers the stateless
#: state. No public hook runs at that point; `SAMModel` overrides it so that a
#: subclassed model's variant state exists before JAX collects its variables.
BUILD_HOOK = "_symbolic_build"


def compute_loss(model: keras.Model, x, y, y_pred, sample_weight, training=True):
    """`model.compute_loss(...)`, through Keras' dispatcher.

    The public `compute_loss` gained its `training` argument in Keras 3.3;
    Keras' own train steps call `_compute_loss`, which passes `training` only
    to user overrides that accept it. A custom train step must do the same to
    honour such overrides.
    """
    return model._compute_loss(
        x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training
    )


def loss_tracker(model: keras.Model) -> keras.metrics.Mean:
    """The `Mean` metric behind the logged ``loss`` of a compiled model.

    Keras' own train steps update it; a custom train step must too, or the
    logged loss stays at 0. The public `model.metrics` lists it, but only by
    its name ``"loss"``, which a user metric may share.
    """
    return model._loss_tracker


def call_has_training_arg(layer: keras.layers.Layer) -> bool:
    """Whether `layer.call` takes a ``training`` argument, as Keras itself
    decides it when it calls the layer (``inspect`` on `call` would miss
    Keras' own rules for ``**kwargs`` and wrapped calls)."""
    return layer._call_has_training_arg


def flatten_layers(model: keras.layers.Layer) -> list[keras.layers.Layer]:
    """`model` and all its sublayers, nested models included, each once.

    The public `model.layers` lists only the direct children of a model.
    """
    return model._flatten_layers(include_self=True, recursive=True)


def own_trainable_variables(layer: keras.layers.Layer) -> list[keras.Variable]:
    """The trainable variables a layer created itself, without its
    sublayers'. The public `trainable_variables` includes the sublayers'
    variables, so a walk over all layers would meet each variable several
    times and could not tell which layer's constraint governs it."""
    return list(layer._trainable_variables)


@contextlib.contextmanager
def unlocked_tracker(layer: keras.layers.Layer):
    """Lets a built layer take a new sublayer attribute (a `KernelMask` as a
    kernel constraint). Keras locks a layer's state tracker after `build` and
    has no public way to add state later."""
    tracker = layer._tracker
    locked = tracker.locked
    tracker.unlock()
    try:
        yield
    finally:
        if locked:
            tracker.lock()


def in_multi_worker_mode(strategy: Any) -> bool:
    """Whether a `tf.distribute` strategy spans several workers.

    TensorFlow has no public predicate that covers every multi-worker
    strategy (`MultiWorkerMirroredStrategy`, multi-host TPU); Keras' own
    trainer reads this same private method.
    """
    method = strategy.extended._in_multi_worker_mode
    return bool(method())


def compile_arguments(model: keras.Model) -> dict[str, Any] | None:
    """The arguments `model.compile` was last called with, as the objects
    the user passed (None if the model was never compiled).

    The public `get_compile_config()` serializes them, so reviving it would
    build a fresh optimizer (losing its state) and fail on unregistered
    custom losses and metrics; `keras_sam.sam` needs the objects themselves
    to compile the SAM model like the model it wraps.
    """
    if not model.compiled:
        return None
    return dict(model._compile_config.config)


def optimizer_variable_index(
    optimizer: keras.optimizers.Optimizer, variable: keras.Variable
) -> int:
    """The position of `variable` in the list the optimizer was built with,
    so a per-variable slot (a momentum buffer) can be found in `update_step`.

    Keras' own optimizers read this private index; the public API has no
    variable-to-slot lookup. Matching by identity or `variable.path` is not
    enough: under a `tf.distribute` strategy `update_step` receives a
    replica's variable, which the backend's private key maps back to the
    variable the optimizer was built with.
    """
    return optimizer._get_variable_index(variable)


#: Where each Keras optimizer keeps its first-moment (momentum) buffers, one
#: per variable in build order: SGD's public-looking but undocumented
#: `momentums`, and the private lists of the Adam family, Adamax and Lion.
#: No public API exposes an optimizer's slots by variable; Momentum-SAM
#: perturbs along them.
_MOMENTUM_ATTRIBUTES = (
    (keras.optimizers.SGD, "momentums"),
    (keras.optimizers.Adam, "_momentums"),  # and AdamW, its subclass
    (keras.optimizers.Nadam, "_momentums"),
    (keras.optimizers.Lion, "_momentums"),
    (keras.optimizers.Adamax, "_m"),
)


def momentum_slots(optimizer: keras.optimizers.Optimizer) -> list | None:
    """The built optimizer's momentum buffers in its build order, or None
    where its class keeps none that `_MOMENTUM_ATTRIBUTES` knows (an empty
    list: SGD with momentum=0)."""
    for cls, attribute in _MOMENTUM_ATTRIBUTES:
        if isinstance(optimizer, cls):
            return list(getattr(optimizer, attribute))
    return None


def ddp_process_group(model: keras.Model) -> Any | None:
    """The process group of the `DistributedDataParallel` wrapper that
    Keras's torch trainer puts around `model`, or None without one.

    From Keras 3.16 the torch trainer wraps the model when
    `torch.distributed` is initialized and keeps the wrapper in the private
    attribute ``ddp_model`` (Keras 3.15 has none). Its own step all-reduces
    the gradients through DDP's hooks on ``loss.backward()``; the SAM step
    takes its gradients with `torch.autograd.grad` (the perturbed pass
    differentiates leaves that are not the model's parameters), which those
    hooks never see, even through the wrapper. So the step all-reduces them
    itself, over the wrapper's group.
    """
    wrapper = getattr(model, "ddp_model", None)
    return None if wrapper is None else wrapper.process_group


def stateless_scope(mapping, collect_losses: bool = False) -> keras.StatelessScope:
    """A `keras.StatelessScope` that maps each variable of `mapping`
    (``(variable, value)`` pairs) to its value object itself.

    The public constructor converts and checks every value (one
    `convert_to_tensor` and a shape comparison per variable: 0.2 ms of a
    ViT's 26 ms eager PyTorch step with its 40 weights); the SAM step maps
    values it made from the variables' own, of their dtype and shape. The
    scope's `add_update`, which `Variable.assign` calls inside a scope,
    records a value as it is (Keras has no public way to skip the checks).
    """
    scope = keras.StatelessScope(collect_losses=collect_losses)
    for variable, value in mapping:
        scope.add_update((variable, value))
    return scope


def multi_optimizer_index(
    optimizer: keras.optimizers.MultiOptimizer, variable: keras.Variable
) -> int:
    """The position in ``optimizer.optimizers`` of the sub-optimizer that
    updates `variable` (a built `MultiOptimizer`).

    The public API lists the sub-optimizers but not which variables each
    one was given: the map may be a callable that returns a new optimizer
    per call, so only the assignment `build` recorded is the truth.
    `keras_sam.SAMModel(clip_eps_gradient=True)` needs it to clip each
    variable's gradient as its own sub-optimizer does.
    """
    return optimizer._var_to_optimizer_idx[optimizer._var_key(variable)]


#: Where Keras's TensorFlow backend computes the mean and variance behind
#: ``keras.ops.moments`` (LayerNormalization, BatchNormalization in training
#: mode, GroupNormalization): a module-level function its ``moments`` looks
#: up at call time.
_TF_MOMENTS_MODULE = "keras.src.backend.tensorflow.nn"
_TF_MOMENTS_FUNCTION = "_compute_moments"


#: Where Keras's TensorFlow backend implements ``keras.ops.einsum`` (looked
#: up at call time by the op).
_TF_NUMPY_MODULE = "keras.src.backend.tensorflow.numpy"


def _plain_einsum(subscripts, *operands, **kwargs):
    # Keras's own general branch (the one it takes for any subscripts it has
    # no reshape/matmul rewrite for): tf.einsum in the operands' result type
    # (integers computed in floatx), cast to that type.
    import tensorflow as tf

    result_dtype = keras.backend.result_type(*(x.dtype for x in operands))
    compute_dtype = keras.config.floatx() if "int" in result_dtype else result_dtype
    operands = [tf.cast(x, compute_dtype) for x in operands]
    return tf.cast(tf.einsum(subscripts, *operands, **kwargs), result_dtype)


@contextlib.contextmanager
def vectorizable_tensorflow_einsum():
    """``keras.ops.einsum`` as one ``tf.einsum`` while the context is active
    (a no-op on other backends; int8 operands keep Keras's op).

    Keras's TensorFlow einsum rewrites common subscripts (EinsumDense,
    MultiHeadAttention) as reshapes and matmuls; `tf.vectorized_map` (pfor)
    gets the per-example second derivatives of that rewrite wrong, and gets
    ``tf.einsum``'s right. No public hook replaces a backend op, so the
    vectorized per-example products trace inside this context (and only
    they). A swap of a module global: not thread-safe, like
    `exact_tensorflow_moments` (the same values either way).
    """
    if keras.backend.backend() != "tensorflow":
        yield
        return
    import importlib

    module = importlib.import_module(_TF_NUMPY_MODULE)
    keras_einsum = module.einsum

    def einsum(subscripts, *operands, **kwargs):
        operands = [keras.ops.convert_to_tensor(x) for x in operands]
        if all(keras.backend.standardize_dtype(x.dtype) == "int8" for x in operands):
            return keras_einsum(subscripts, *operands, **kwargs)
        return _plain_einsum(subscripts, *operands, **kwargs)

    module.einsum = einsum
    try:
        yield
    finally:
        module.einsum = keras_einsum


def _plain_moments(x, axes, keepdims):
    import tensorflow as tf

    mean = tf.reduce_mean(x, axes, keepdims=True)
    variance = tf.reduce_mean(tf.square(x - mean), axes, keepdims=True)
    if not keepdims:
        mean = tf.squeeze(mean, axes)
        variance = tf.squeeze(variance, axes)
    return mean, variance


@contextlib.contextmanager
def exact_tensorflow_moments():
    """Keras's TensorFlow ``moments`` with a plain variance while the
    context is active (a no-op on other backends).

    Keras's TensorFlow backend computes it with `tf.nn.moments`, whose
    variance is taken around ``stop_gradient(mean)``: exact in value and
    first derivative (training is unaffected), but its second derivative
    drops a term, so Hessian products through LayerNormalization (and
    BatchNormalization in training mode) are wrong by about 1e-2 relative.
    No public hook replaces a backend op, so the curvature products trace
    their functions inside this context (and only they: the user's training
    keeps Keras's op). The swap is of a module global, so it is not
    thread-safe: a model traced concurrently in another thread would see the
    plain variance too (the same values and gradients).
    """
    if keras.backend.backend() != "tensorflow":
        yield
        return
    import importlib

    module = importlib.import_module(_TF_MOMENTS_MODULE)
    previous = getattr(module, _TF_MOMENTS_FUNCTION)
    setattr(module, _TF_MOMENTS_FUNCTION, _plain_moments)
    try:
        yield
    finally:
        setattr(module, _TF_MOMENTS_FUNCTION, previous)


def _routed_dense_call(layer, hook, inputs, training=None):
    # `keras.layers.Dense.call` (Keras 3.15) with `hook` between the bias
    # and the activation.
    z = keras.ops.matmul(inputs, layer.kernel)
    if layer.bias is not None:
        z = keras.ops.add(z, layer.bias)
    z = hook(layer, inputs, z)
    if layer.activation is not None:
        z = layer.activation(z)
    return z


def _routed_einsum_dense_call(layer, hook, inputs, training=None):
    # `keras.layers.EinsumDense.call` (Keras 3.15) with `hook` between the
    # bias and the activation.
    z = keras.ops.einsum(layer.equation, inputs, layer.kernel)
    if layer.bias is not None:
        z = keras.ops.add(z, layer.bias)
    z = hook(layer, inputs, z)
    if layer.activation is not None:
        z = layer.activation(z)
    return z


def _routed_embedding_call(layer, hook, inputs):
    # `keras.layers.Embedding.call` (Keras 3.15) with `hook` on the gathered
    # rows (the layer's inputs: the token ids).
    if inputs.dtype != "int32" and inputs.dtype != "int64":
        inputs = keras.ops.cast(inputs, "int32")
    z = keras.ops.take(layer.embeddings, inputs, axis=0)
    z = hook(layer, inputs, z)
    return keras.ops.cast(z, dtype=layer.compute_dtype)


def _routed_layer_normalization_call(layer, hook, inputs):
    # `keras.layers.LayerNormalization.call` (Keras 3.15: the fused
    # `ops.layer_normalization`, no RMS scaling) written out over its axes,
    # with `hook(layer, normalized, z)` on ``z = normalized * gamma + beta``.
    axis = layer.axis
    mean = keras.ops.mean(inputs, axis=axis, keepdims=True)
    centered = keras.ops.subtract(inputs, mean)
    variance = keras.ops.mean(keras.ops.square(centered), axis=axis, keepdims=True)
    normalized = centered * keras.ops.rsqrt(variance + layer.epsilon)
    z = normalized
    if layer.gamma is not None:
        z = z * layer.gamma
    if layer.beta is not None:
        z = z + layer.beta
    z = hook(layer, normalized, z)
    return keras.ops.cast(z, layer.compute_dtype)


_ROUTED_CALLS = (
    (keras.layers.Dense, _routed_dense_call),
    (keras.layers.EinsumDense, _routed_einsum_dense_call),
    (keras.layers.Embedding, _routed_embedding_call),
    (keras.layers.LayerNormalization, _routed_layer_normalization_call),
)


@contextlib.contextmanager
def routed_factor_calls(layers, hook):
    """Calls of the given plain `Dense`, `EinsumDense`, `Embedding` and
    `LayerNormalization` layers (Keras's own ``call``, no LoRA, no
    quantization; LayerNormalization over its last axis, no RMS scaling) run
    ``hook(layer, inputs, z)`` while the context is active, and its result
    goes on through the rest of the call: ``z`` is the pre-activation of a
    Dense or EinsumDense (``inputs`` its inputs), the gathered rows of an
    Embedding (``inputs`` the int token ids) and ``normalized * gamma +
    beta`` of a LayerNormalization (``inputs`` the normalized inputs).

    The structured curvature products read these per-layer quantities and
    add a zero "probe" to ``z`` (whose gradient is the per-example
    backpropagated error of every example at once). No public hook reaches
    them, so each layer's ``call`` is replaced by an instance attribute that
    repeats Keras's call with the hook (`tests/test_compat.py` checks each
    against Keras's own output). Instance attributes set outside Keras's
    tracker (they are functions, not state), removed on exit; not
    thread-safe (another thread calling these layers meanwhile would run the
    hook too).
    """
    routed = []
    try:
        for layer in layers:
            body = next(f for kind, f in _ROUTED_CALLS if isinstance(layer, kind))
            if body in (_routed_dense_call, _routed_einsum_dense_call):
                call = lambda inputs, training=None, layer=layer, body=body: body(  # noqa: E731
                    layer, hook, inputs, training
                )
            else:
                call = lambda inputs, layer=layer, body=body: body(layer, hook, inputs)  # noqa: E731
            object.__setattr__(layer, "call", call)
            routed.append(layer)
        yield
    finally:
        for layer in routed:
            object.__delattr__(layer, "call")

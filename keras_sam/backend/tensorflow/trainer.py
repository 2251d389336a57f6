"""TensorFlow's part of `SAMModel`'s fit: what `tf.distribute` needs before
the step runs (the other backends take `_common`'s defaults)."""

from __future__ import annotations

from keras_sam import _compat
from keras_sam.backend.tensorflow import replicas


def prepare_train_function(model) -> None:
    """Before Keras makes the train function (at the start of every `fit` and
    `train_on_batch`).

    Keras cannot XLA-compile a whole multi-replica step on
    `MirroredStrategy` ("Trying to access resource ... replica_1"): each
    replica's passes are compiled instead (`step._compiled`).
    """
    if model.jit_compile and model.distribute_strategy.num_replicas_in_sync > 1:
        model._jit_compile_per_replica = True
        model.jit_compile = False
    build_optimizer_before_tracing(model)


def build_optimizer_before_tracing(model) -> None:
    """Builds the optimizer for the model's trainable variables before the
    step is traced, as Keras does for a model made under a tf.distribute
    strategy. Without one, Keras builds it inside the first trace, and the
    slot variables made there make `tf.function` trace the whole step a
    second time (twice the first `fit`'s tracing, for any optimizer with
    state: momentum, Adam, accumulation, EMA, loss scaling). Left to the
    trace while a layer is not built (a subclassed model before its first
    call), where the variables are not all known yet."""
    optimizer = model.optimizer
    if optimizer is None or optimizer.built:
        return
    if not all(layer.built for layer in _compat.flatten_layers(model)):
        return
    with model.distribute_strategy.scope():
        optimizer.build(model.trainable_variables)


def symbolic_build(model, build, iterator=None, data_batch=None):
    """Keras's `_maybe_symbolic_build` (`build`), from a worker-local batch
    under a multi-worker strategy; then the variant's state, in the
    strategy's scope.

    Returns:
        What `build` returns.
    """
    strategy = model.distribute_strategy
    if iterator is not None and replicas.is_multi_worker(strategy):
        data_batch = replicas.local_first_batch(strategy, iterator)
        iterator = None
    result = build(iterator=iterator, data_batch=data_batch)
    with strategy.scope():
        model._build_variant_state()
    return result

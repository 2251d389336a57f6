"""Scorers (random, SNIP, magnitude), pruning at initialization, gradual
pruning driven by schedules, and the lazy TF-MOT import."""

from __future__ import annotations

import contextlib
import os
import types
from collections.abc import Callable, Iterable
from typing import Any

import keras
import numpy as np
from keras import tree

from keras_sam import _compat, _validation, backend
from keras_sam.sparsity._masks import (
    Prunable,
    attach_masks,
    set_mask,
    validate_sparsity,
)

#: The scorers of `prune_at_init`: random scores or SNIP saliency.
METHODS = ("random", "snip")

#: A schedule: optimizer step -> (should_prune, sparsity), as TF-MOT's
#: `PolynomialDecay` and `ConstantSparsity` objects.
Schedule = Callable[[Any], tuple[Any, Any]]


def _keep_top(scores: np.ndarray, num_pruned: int) -> np.ndarray:
    """0/1 mask pruning the `num_pruned` lowest scores (ties: earlier first)."""
    mask = np.ones(scores.size, dtype="float32")
    order = np.argsort(scores.reshape(-1), kind="stable")
    mask[order[:num_pruned]] = 0.0
    return mask.reshape(scores.shape)


def _layerwise_masks(scores: list[np.ndarray], sparsity: float) -> list[np.ndarray]:
    return [_keep_top(s, int(round(sparsity * s.size))) for s in scores]


def _global_masks(scores: list[np.ndarray], sparsity: float) -> list[np.ndarray]:
    flat = np.concatenate([s.reshape(-1) for s in scores])
    mask = _keep_top(flat, int(round(sparsity * flat.size)))
    out, start = [], 0
    for s in scores:
        out.append(mask[start : start + s.size].reshape(s.shape))
        start += s.size
    return out


def m_by_n_mask(weights: np.ndarray, m: int, n: int) -> np.ndarray:
    """0/1 mask keeping the `m` largest |w| in each group of `n` consecutive
    weights along the input-channel axis (axis -2: Dense's input features,
    Conv's input channels). m=2, n=4 is the 2:4 pattern of sparse tensor
    cores.

    Returns:
        A float32 array of `weights`' shape.

    Raises:
        ValueError: when the input-channel axis is not a multiple of `n`.
    """
    moved = np.moveaxis(np.abs(weights), -2, -1)
    channels = moved.shape[-1]
    if channels % n:
        raise ValueError(
            f"m_by_n=({m}, {n}) needs the input-channel axis (size {channels}) "
            f"to be a multiple of {n}."
        )
    groups = moved.reshape(-1, n)
    order = np.argsort(-groups, axis=1, kind="stable")
    mask = np.zeros_like(groups, dtype="float32")
    np.put_along_axis(mask, order[:, :m], 1.0, axis=1)
    return np.moveaxis(mask.reshape(moved.shape), -1, -2)


def _validate_m_by_n(m_by_n: Any) -> tuple[int, int] | None:
    if m_by_n is None:
        return None
    try:
        m, n = (int(v) for v in m_by_n)
        valid = 0 < m < n and tuple(m_by_n) == (m, n)
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(
            "`m_by_n` must be None or a pair (m, n) of integers with 0 < m < n, "
            f"such as (2, 4); got m_by_n={m_by_n!r}."
        )
    return m, n


def _batches(data: Any) -> Iterable[Any]:
    if isinstance(data, tuple):
        return [data]
    return data


def _snip_scores(model, targets: list[Prunable], data, loss) -> list[np.ndarray]:
    if data is None:
        raise ValueError(
            'method="snip" needs `data`: an (x, y) batch or an iterable of '
            "batches, such as a tf.data.Dataset."
        )
    if loss is not None:
        loss_fn = keras.losses.get(loss)
        if not isinstance(loss_fn, keras.losses.Loss):
            loss_fn = _compat.LossFunctionWrapper(loss_fn)
    elif getattr(model, "compiled", False) and model.loss is not None:
        loss_fn = None
    else:
        raise ValueError(
            'method="snip" needs a loss: compile the model or pass `loss`.'
        )
    variables = [t.variable for t in targets]
    sums = [np.zeros(v.shape, "float64") for v in variables]
    count = 0

    def gradients(x, y, sample_weight):
        # Stateless: batch-norm statistics and seeds are left as they are.
        def loss_value():
            y_pred = model(x, training=True)
            if loss_fn is None:
                return model.compute_loss(
                    x=x, y=y, y_pred=y_pred, sample_weight=sample_weight
                )
            return loss_fn(y, y_pred, sample_weight=sample_weight)

        return backend.module().stateless_gradients(loss_value, variables)

    on_tensorflow = keras.backend.backend() == "tensorflow"
    for batch in _batches(data):
        if not on_tensorflow:  # tf.data batches hold TF tensors
            batch = tree.map_structure(
                lambda t: None if t is None else np.asarray(t), batch
            )
        grads = gradients(*keras.utils.unpack_x_y_sample_weight(batch))
        for total, g in zip(sums, grads):
            total += keras.ops.convert_to_numpy(g)
        count += 1
    if count == 0:
        raise ValueError('method="snip" got no batches in `data`.')
    return [np.abs(v.numpy() * s / count) for v, s in zip(variables, sums)]


def prune_at_init(
    model: keras.Model,
    sparsity: float,
    method: str = "random",
    data: Any = None,
    seed: int | None = None,
    loss: Any = None,
    rescale: bool = False,
) -> keras.Model:
    """Prunes the kernels of a built `model` in place and returns it.

    Each prunable kernel (see `prunable_weights`) gets a `KernelMask`: its
    pruned weights are zero now and stay zero in training (plain Keras or
    SAM), and are saved and loaded with the model.

    - ``"random"``: every kernel gets the same sparsity, a layer-wise cut of
      Gaussian scores;
    - ``"snip"`` (Lee, Ajanthan, Torr 2019, arXiv 1810.02340): scores
      |w * dL/dw| with the gradient
      averaged over the batches of `data`, one global cut across kernels.

    ```python
    model = keras_sam.sam(wide_model, rho=0.05)
    model.compile("sgd", loss)
    s = keras_sam.sparsity.sparsity_for_budget(small_model, model)
    keras_sam.sparsity.prune_at_init(model, s, method="snip", data=(x[:128], y[:128]))
    model.fit(x, y)
    ```

    Args:
        sparsity: fraction of prunable weights set to zero, in [0, 1); each
            cut prunes round(sparsity * count) weights.
        method: ``"random"`` or ``"snip"``.
        data: SNIP only: an ``(x, y[, sample_weight])`` tuple, or an iterable
            of them (a `tf.data.Dataset`, a list).
        seed: random only: seed of the scores.
        loss: SNIP only: a loss to use instead of the compiled one.
        rescale: multiply each kernel's kept weights by ``1 / sqrt(density)``
            (density = its kept fraction), so a unit's pre-activation keeps
            the variance its dense initializer gave it; without it a
            90%-sparse layer starts with about a third of the signal.

    Returns:
        `model`, pruned in place.

    Raises:
        ValueError: for a `sparsity` outside [0, 1), an unknown `method`, a
            non-bool `rescale`, a model without prunable kernels, or SNIP
            without `data`, without a loss, or with no batches in `data`.
    """
    sparsity = validate_sparsity(sparsity)
    _validation.boolean(rescale, "rescale")
    if isinstance(method, str):
        method = method.lower()
    _validation.one_of(method, "method", METHODS)
    targets = attach_masks(model)
    if not targets:
        raise ValueError(f"`model` {model.name!r} has no prunable kernels.")
    if method == "random":
        rng = np.random.default_rng(seed)
        scores = [rng.standard_normal(tuple(t.variable.shape)) for t in targets]
        masks = _layerwise_masks(scores, sparsity)
    else:
        scores = _snip_scores(model, targets, data, loss)
        masks = _global_masks(scores, sparsity)
    for target, mask in zip(targets, masks):
        set_mask(target, mask)
        density = float(np.mean(mask))
        if rescale and 0 < density < 1:
            target.variable.assign(target.variable.numpy() / np.sqrt(density))
    return model


def magnitude_masks(
    targets: list[Prunable], sparsity: float, m_by_n: tuple[int, int] | None = None
) -> list[np.ndarray]:
    """Layer-wise magnitude masks; pruned weights stay pruned.

    Returns:
        One 0/1 float32 array per target.
    """
    masks = []
    for target in targets:
        weights = target.variable.numpy()
        current = target.mask.mask.numpy() if target.mask is not None else 1.0
        if m_by_n is not None:
            masks.append(m_by_n_mask(weights * current, *m_by_n) * current)
            continue
        scores = np.where(current == 0, -1.0, np.abs(weights))
        masks.append(_keep_top(scores, int(round(sparsity * weights.size))))
    return masks


class GradualPruning(keras.callbacks.Callback):
    """Gradual magnitude pruning during `fit`, driven by a schedule.

    Before each training batch, with ``step = optimizer.iterations``, calls
    ``schedule(step) -> (should_prune, sparsity)``; when `should_prune`,
    every prunable kernel is cut to `sparsity` by weight magnitude (weights
    already pruned stay pruned). The schedule can be a TF-MOT object
    (`tfmot.sparsity.keras.PolynomialDecay`, `ConstantSparsity`; see
    `keras_sam.sparsity.tfmot_schedule`) or any callable with that contract.

    ```python
    schedule = keras_sam.sparsity.tfmot_schedule(
        "PolynomialDecay", initial_sparsity=0.0, final_sparsity=0.8,
        begin_step=0, end_step=1000, frequency=100)
    model.fit(x, y, callbacks=[keras_sam.sparsity.GradualPruning(schedule)])
    ```

    Args:
        schedule: step -> (should_prune, sparsity).
        m_by_n: e.g. ``(2, 4)``: structured m:n masks (m largest |w| of each n
            consecutive input channels) at the pruning steps instead of the
            schedule's unstructured sparsity.

    With ``steps_per_execution=k`` the schedule is consulted every k steps.

    Raises:
        ValueError: for a `schedule` that is not callable or an `m_by_n` that
            is not None or a pair of integers 0 < m < n.
    """

    def __init__(self, schedule: Schedule, m_by_n: tuple[int, int] | None = None):
        super().__init__()
        if not callable(schedule):
            raise ValueError(
                "`schedule` must be a callable step -> (should_prune, sparsity), "
                f"got {type(schedule).__name__}."
            )
        self.schedule = schedule
        self.m_by_n = _validate_m_by_n(m_by_n)
        self._targets: list[Prunable] = []

    def on_train_begin(self, logs=None):
        self._targets = attach_masks(self.model)
        # Masks made now must be in the function fit traces.
        self.model.make_train_function()

    def on_train_batch_begin(self, batch, logs=None):
        # `self.model` brings the JAX state back into the variables first;
        # the next step then reads the new masks.
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        should_prune, sparsity = self.schedule(_step_tensor(step))
        if not bool(np.asarray(should_prune)):
            return
        sparsity = validate_sparsity(float(np.asarray(sparsity)))
        for target, mask in zip(
            self._targets, magnitude_masks(self._targets, sparsity, self.m_by_n)
        ):
            set_mask(target, mask)
        _retrace_if_masks_are_constants(self.model)


def _retrace_if_masks_are_constants(model: keras.Model) -> None:
    # Keras's own JAX step reads the masks as constants of the compiled
    # function (see KernelMask.__call__): compile it again with the new ones.
    # A SAM step carries them in its state and needs no new function.
    from keras_sam.sam_model import SAMModel

    if keras.backend.backend() == "jax" and not isinstance(model, SAMModel):
        model.make_train_function(force=True)


def _step_tensor(step: int) -> Any:
    # TF-MOT schedules compute with TF ops: a TF tensor on TensorFlow, an
    # int64 NumPy scalar (which TF ops also take) on the other backends.
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.constant(step, tf.int64)
    return np.int64(step)


_TFMOT_SCHEDULES = ("PolynomialDecay", "ConstantSparsity")


@contextlib.contextmanager
def _preserved_keras_environment():
    # TF-MOT's import sets TF_USE_LEGACY_KERAS=1 and then reads `tf.keras`,
    # which would bind `tf.keras` to tf_keras for the rest of the process.
    # Resolve `tf.keras` first under the user's setting, restore the variable
    # after.
    import tensorflow as tf

    previous = os.environ.get("TF_USE_LEGACY_KERAS")
    getattr(tf.keras, "__name__", None)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TF_USE_LEGACY_KERAS", None)
        else:
            os.environ["TF_USE_LEGACY_KERAS"] = previous


def load_tfmot() -> types.ModuleType:
    """Imports `tensorflow_model_optimization` without leaving
    ``TF_USE_LEGACY_KERAS`` changed or `tf.keras` bound to tf_keras.

    Returns:
        The `tensorflow_model_optimization` module.

    Raises:
        ModuleNotFoundError: where it is not installed (with the pip extra
            that installs it).
    """
    with _preserved_keras_environment():
        try:
            import tensorflow_model_optimization as tfmot
        except ModuleNotFoundError as error:
            raise ModuleNotFoundError(
                "TF-MOT schedules need tensorflow-model-optimization: "
                "pip install 'keras-sam[tfmot]'.",
                name=error.name,
            ) from error
    return tfmot


def tfmot_schedule(name: str, **kwargs: Any) -> Schedule:
    """A TF-MOT pruning schedule, imported lazily: ``"PolynomialDecay"`` or
    ``"ConstantSparsity"`` with that class's arguments.

    ```python
    schedule = keras_sam.sparsity.tfmot_schedule(
        "ConstantSparsity", target_sparsity=0.5, begin_step=0, frequency=10)
    ```

    Returns:
        The schedule object, a `Schedule`.

    Raises:
        ValueError: for another `name`.
        ModuleNotFoundError: without tensorflow-model-optimization.
    """
    _validation.one_of(name, "name", _TFMOT_SCHEDULES)
    return getattr(load_tfmot().sparsity.keras, name)(**kwargs)

"""Masks on kernels: the `KernelMask` state, where it lives, reports, export."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_sam import _compat, _validation

#: Variable name -> the layer attributes that may hold that variable's
#: constraint (the first one the layer has), for the kernels pruned by default
#: (Dense, EinsumDense, Conv*, Conv*Transpose, DepthwiseConv*, SeparableConv*,
#: RNN cells). Biases, normalization parameters and embeddings are not in it.
PRUNABLE = {
    "kernel": ("kernel_constraint", "depthwise_constraint"),
    "depthwise_kernel": ("depthwise_constraint",),
    "pointwise_kernel": ("pointwise_constraint",),
    "recurrent_kernel": ("recurrent_constraint",),
}


#: id(mask variable) -> the value a stateless step holds for it (see
#: `mask_values`): read by `KernelMask.__call__` in place of the variable.
_MASK_VALUES: contextvars.ContextVar[dict[int, Any] | None] = contextvars.ContextVar(
    "keras_sam_mask_values", default=None
)


@contextlib.contextmanager
def mask_values(masks: Sequence[Any], values: Sequence[Any]) -> Iterator[None]:
    """Within the block, each `KernelMask` constraint reads its mask from
    `values` (one per mask variable in `masks`; None entries are skipped).

    A stateless step (JAX) carries the masks as values in its state, not in
    the variables; the optimizer's `stateless_apply` maps only the weights
    and its own variables, so the constraint must be told the mask values.
    """
    mapping = {id(m): v for m, v in zip(masks, values) if m is not None}
    token = _MASK_VALUES.set(mapping)
    try:
        yield
    finally:
        _MASK_VALUES.reset(token)


@keras.saving.register_keras_serializable(package="keras_sam")
class KernelMask(keras.layers.Layer):
    """A 0/1 mask on one kernel, used as that kernel's constraint.

    Holds the mask as a non-trainable variable (so it is saved with the
    model and restored by `keras.models.load_model`) and, as a constraint,
    zeroes the pruned weights after every optimizer update. A SAM step reads
    `mask` to mask the gradients and eps. Made by `prune_at_init` and
    `GradualPruning`; rarely built by hand.

    Args:
        shape: the kernel's shape.
        constraint: the kernel's previous constraint, applied before the mask.
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        constraint: Any = None,
        **kwargs: Any,
    ):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.shape = tuple(int(d) for d in shape)
        self.inner = keras.constraints.get(constraint)
        self.mask = self.add_weight(
            shape=self.shape,
            initializer="ones",
            trainable=False,
            dtype="float32",
            autocast=False,
            name="mask",
        )
        self._copy = np.ones(self.shape, "float32")
        self.built = True

    def refresh_copy(self) -> None:
        """Keeps the host copy of the mask in step with the variable (done
        by `set_mask` and on loading)."""
        self._copy = np.asarray(ops.convert_to_numpy(self.mask), "float32")

    def load_own_variables(self, store):
        super().load_own_variables(store)
        self.refresh_copy()

    def __call__(self, weight):
        # The constraint protocol, without `Layer.__call__`'s input casting.
        if self.inner is not None:
            weight = self.inner(weight)
        overrides = _MASK_VALUES.get()
        if overrides is not None and id(self.mask) in overrides:
            mask = overrides[id(self.mask)]
        else:
            try:
                mask = ops.convert_to_tensor(self.mask)
            except TypeError:
                # Keras's JAX trainer detaches the state from the variables
                # during `fit` (the variable then has no value to read), and
                # its own step hands constraints only the weights: use the
                # copy `set_mask` and loading keep.
                mask = self._copy
        return ops.multiply(weight, ops.cast(mask, weight.dtype))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            shape=self.shape, constraint=keras.constraints.serialize(self.inner)
        )
        return config


@dataclasses.dataclass(frozen=True)
class Prunable:
    """One prunable kernel: its layer, variable and constraint attribute."""

    layer: keras.layers.Layer
    variable: keras.Variable
    attribute: str

    @property
    def mask(self) -> KernelMask | None:
        constraint = getattr(self.layer, self.attribute, None)
        return constraint if isinstance(constraint, KernelMask) else None

    @property
    def path(self) -> str:
        return self.variable.path


def kernel_masks(variables: list) -> list:
    """The `KernelMask` 0/1 variable of each of `variables`: what a SAM step
    and the curvature operators read to stay on the unpruned weights.

    ```python
    masks = keras_sam.sparsity.kernel_masks(model.trainable_variables)
    ```

    Returns:
        A list as long as `variables`: the mask variable, or None where the
        variable has no `KernelMask` constraint.
    """
    return [getattr(getattr(v, "constraint", None), "mask", None) for v in variables]


def prunable_weights(model: keras.Model) -> list[Prunable]:
    """The kernels of `model` that pruning acts on, in layer order.

    A trainable variable of rank >= 2 named ``kernel``, ``depthwise_kernel``,
    ``pointwise_kernel`` or ``recurrent_kernel`` whose layer has a matching
    constraint attribute (`PRUNABLE`): the kernels of Dense, EinsumDense,
    Conv1D/2D/3D and their transposes, DepthwiseConv, SeparableConv and the
    RNN cells, in nested models and sublayers too.

    Returns:
        A list of `Prunable`.

    Raises:
        ValueError: for a model that is not built.
    """
    if not model.built:
        raise ValueError("`model` must be built before pruning.")
    found, seen = [], set()
    for layer in _compat.flatten_layers(model):
        if isinstance(layer, KernelMask):
            continue
        for variable in _compat.own_trainable_variables(layer):
            attribute = next(
                (a for a in PRUNABLE.get(variable.name, ()) if hasattr(layer, a)),
                None,
            )
            if (
                attribute is None
                or len(variable.shape) < 2
                or not variable.trainable
                or id(variable) in seen
            ):
                continue
            seen.add(id(variable))
            found.append(Prunable(layer, variable, attribute))
    return found


def attach_masks(model: keras.Model) -> list[Prunable]:
    """Gives every prunable kernel of `model` a `KernelMask` (all ones where
    new) and returns the prunable kernels. Existing masks are kept."""
    targets = prunable_weights(model)
    added = False
    for target in targets:
        if target.mask is not None:
            continue
        layer, variable = target.layer, target.variable
        mask = KernelMask(
            variable.shape,
            constraint=getattr(layer, target.attribute),
            name=f"{variable.name}_mask",
        )
        with _compat.unlocked_tracker(layer):
            setattr(layer, target.attribute, mask)
        variable.constraint = mask
        added = True
    if added:
        _retrace(model)
    return targets


def set_mask(target: Prunable, mask: np.ndarray) -> None:
    """Sets a kernel's mask and zeroes its pruned weights."""
    mask = np.asarray(mask, dtype="float32")
    target.mask.mask.assign(mask)
    target.mask.refresh_copy()
    target.variable.assign(target.variable.numpy() * mask.astype(target.variable.dtype))


def _retrace(model: keras.Model) -> None:
    # A traced train function read the constraints and masks that existed
    # when it was traced; make Keras trace a new one.
    model.train_function = None


def validate_sparsity(sparsity: Any, name: str = "sparsity") -> float:
    return _validation.fraction(
        sparsity, name, hint="0 = dense, 0.9 = 90% of the prunable weights zero"
    )


@dataclasses.dataclass(frozen=True)
class LayerSparsity:
    """Counts for one prunable kernel."""

    path: str
    size: int
    nonzero: int
    masked: bool

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzero / self.size if self.size else 0.0


@dataclasses.dataclass(frozen=True)
class SparsityReport:
    """Per-kernel and global sparsity of the prunable weights of a model.

    ``str(report)`` is a table. Counts are of exactly-zero weights, masked or
    not.
    """

    layers: tuple[LayerSparsity, ...]

    @property
    def size(self) -> int:
        return sum(layer.size for layer in self.layers)

    @property
    def nonzero(self) -> int:
        return sum(layer.nonzero for layer in self.layers)

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzero / self.size if self.size else 0.0

    def __str__(self) -> str:
        width = max([len(layer.path) for layer in self.layers] + [6])
        lines = [f"{'kernel':<{width}}  {'size':>10}  {'nonzero':>10}  sparsity"]
        for layer in self.layers:
            mark = "" if layer.masked else "  (no mask)"
            lines.append(
                f"{layer.path:<{width}}  {layer.size:>10}  {layer.nonzero:>10}  "
                f"{layer.sparsity:8.4f}{mark}"
            )
        lines.append(
            f"{'global':<{width}}  {self.size:>10}  {self.nonzero:>10}  "
            f"{self.sparsity:8.4f}"
        )
        return "\n".join(lines)


def sparsity_report(model: keras.Model) -> SparsityReport:
    """Per-kernel and global sparsity and non-zero counts of the prunable
    weights of `model`.

    ```python
    report = keras_sam.sparsity.sparsity_report(model)
    print(report)               # table, one row per kernel plus "global"
    report.sparsity, report.nonzero
    ```

    Returns:
        A `SparsityReport`.

    Raises:
        ValueError: for a model that is not built.
    """
    layers = []
    for target in prunable_weights(model):
        value = target.variable.numpy()
        layers.append(
            LayerSparsity(
                path=target.path,
                size=int(value.size),
                nonzero=int(np.count_nonzero(value)),
                masked=target.mask is not None,
            )
        )
    return SparsityReport(tuple(layers))


def sparsity_for_budget(reference: keras.Model | int, model: keras.Model) -> float:
    """The sparsity that gives `model` as many non-zero prunable weights as
    the dense `reference` has prunable weights.

    The fixed budget of Shin et al. (2023, arXiv 2311.17539): a wider model
    pruned back to the small model's count (16 -> 24/32/64 filters: about
    0.56/0.75/0.94).

    ```python
    s = keras_sam.sparsity.sparsity_for_budget(small_model, wide_model)
    keras_sam.sparsity.prune_at_init(wide_model, s, method="snip", data=(x, y))
    ```

    Args:
        reference: a built model (all its prunable weights count), or the
            budget as a number of weights.
        model: the built model to prune.

    Returns:
        The sparsity, a float in [0, 1).

    Raises:
        ValueError: for a `reference` that is neither a model nor a positive
            integer, or a budget larger than `model`'s prunable weights.
    """
    if isinstance(reference, keras.Model):
        budget = sum(
            int(np.prod(t.variable.shape)) for t in prunable_weights(reference)
        )
    else:
        budget = _validation.positive_int(
            reference, "reference", hint="a number of weights, or a keras.Model"
        )
    total = sum(int(np.prod(t.variable.shape)) for t in prunable_weights(model))
    if not 0 < budget <= total:
        raise ValueError(
            f"`model` has {total} prunable weights; the budget must be between "
            f"1 and that, got {budget} from `reference`."
        )
    return 1.0 - budget / total


def strip_masks(model: keras.Model) -> keras.Model:
    """A copy of `model` without masks: pruned weights are plain zeros.

    The copy has the same class and weights, the kernels' previous
    constraints, and no `KernelMask` state, so it loads and runs without
    keras_sam.sparsity (a `SAMModel` still needs keras_sam).

    ```python
    plain = keras_sam.sparsity.strip_masks(model)
    plain.save("model.keras")
    ```

    Returns:
        The copy; `model` keeps its masks.

    Raises:
        ValueError: for a model that is not built, or where the copy's
            weights cannot be matched with `model`'s.
    """
    for target in prunable_weights(model):
        if target.mask is not None:
            set_mask(target, target.mask.mask.numpy())
    config = _without_masks(keras.saving.serialize_keras_object(model))
    config.pop("compile_config", None)
    plain = keras.saving.deserialize_keras_object(config)
    masks = {id(v) for v in _mask_variables(model)}
    source = [v for v in model.weights if id(v) not in masks]
    if len(source) != len(plain.weights):
        raise ValueError(
            "strip_masks could not match the weights of the copy "
            f"({len(plain.weights)}) with those of `model` ({len(source)})."
        )
    for target, value in zip(plain.weights, source):
        target.assign(value.numpy())
    return plain


def _mask_variables(model: keras.Model) -> list[keras.Variable]:
    return [t.mask.mask for t in prunable_weights(model) if t.mask is not None]


def _without_masks(config: Any) -> Any:
    if isinstance(config, dict):
        if config.get("registered_name") == "keras_sam>KernelMask":
            return config["config"].get("constraint")
        return {k: _without_masks(v) for k, v in config.items()}
    if isinstance(config, list):
        return [_without_masks(v) for v in config]
    return config

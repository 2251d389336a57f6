"""The products a `CurvatureOperator` asks of a backend, on one base class.

`CurvatureFunctions` is the interface: each backend's
``keras_sam.backend.<name>.curvature.Functions`` subclasses it and implements
only the autodiff, its abstract methods (``hvp``, ``grad``, ``loss``,
``drive``, ``example_powers`` and ``tensors``). The base holds what no
backend differentiates: the model's variables and masks, flattening, the
mask projection, the loss as a function of the weights' values, the
solver's callback and the choice between the vectorized and the looped
per-example path. Products are flat float32 vectors of length ``dim``;
``x, y, sw`` are a batch as the backend's ``tensors`` made it.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import weakref
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import ops, tree

from keras_sam.hessian._layer_factors import LayerFactors
from keras_sam.sparsity._masks import kernel_masks

#: ``step(product) -> next vector (float32 NumPy) or None``: how a solver
#: is driven from inside a backend call (see `CurvatureFunctions.drive`).
Step = Callable[[np.ndarray], "np.ndarray | None"]


@dataclasses.dataclass(frozen=True)
class Settings:
    """The options a backend's products read (hashable: part of the key the
    operator caches them under).

    Attributes:
        training: call the model in training mode.
        masked: restrict the curvature to unpruned weights (``P H P``).
        weighted: some sample weight differs from 1, so Keras's loss is
            given the weights (else every sum is weighted outside it).
        per_token: the sample weights have rank > 1 (``(n, seq)``): they
            weight tokens inside each example's loss, and every example
            counts once in the per-example sums.
        jit_compile: TensorFlow: XLA-compile the products.
        forward_over_reverse: TensorFlow: ``H v`` forward over reverse.
    """

    training: bool = False
    masked: bool = True
    weighted: bool = False
    per_token: bool = False
    jit_compile: bool = False
    forward_over_reverse: bool = False


class CurvatureFunctions(abc.ABC):
    """Hessian products of one model / loss / input signature.

    Built by `keras_sam.hessian.CurvatureOperator` (never by users) as
    ``Functions(model, batch_loss, settings, x, y, sw)`` with one batch of
    NumPy arrays as the example of the input signature. H is the Hessian
    of ``sum_i sw_i f_i`` (`loss_sum`), H_i that of example i's loss.

    Attributes:
        dim: number of trainable weights (the vectors' length).
        vectorized: whether per-example products take the
            ``"vectorized"`` path (None: decided on the first chunk, see
            `decide`).
        paths: the per-example paths this backend has.
        pad_chunks: whether the operator must pad per-example chunks to one
            size (a backend that compiles per input shape).
    """

    paths = ("vectorized", "looped")
    pad_chunks = False
    #: What a failed vectorized trial raises (see `decide`).
    vectorize_errors: tuple[type[BaseException], ...] = (
        RuntimeError,
        ValueError,
        TypeError,
        NotImplementedError,
    )

    def __init__(
        self,
        model: keras.Model,
        batch_loss: Any,
        settings: Settings,
        x_example: Any,
        y_example: Any,
        sw_example: np.ndarray,
    ):
        self._model = weakref.ref(model)
        self._batch_loss = batch_loss
        self.settings = settings
        self._variables = list(model.trainable_variables)
        trainable = {id(v) for v in self._variables}
        self._others = [v for v in model.variables if id(v) not in trainable]
        self._masks = (
            kernel_masks(self._variables)
            if settings.masked
            else [None] * len(self._variables)
        )
        self._shapes = [tuple(v.shape) for v in self._variables]
        self._sizes = [int(np.prod(s)) for s in self._shapes]
        self.dim = int(sum(self._sizes))
        self._callback: Step | None = None
        self.vectorized: bool | None = None
        # Models whose weights all sit in factored layers (Dense, EinsumDense,
        # Embedding, LayerNormalization): the s_2 step from per-layer
        # factors (`LayerFactors`), no per-example weight-sized array. Not
        # with ``model.losses`` (a penalty's derivatives do not pass through
        # the layers' pre-activations).
        self._factors = (
            None
            if batch_loss.regularization
            else LayerFactors.find(model, self._variables, self._masks)
        )

    # -- the autodiff: one implementation per backend ---------------------

    @staticmethod
    @abc.abstractmethod
    def tensors(structure):
        """NumPy arrays (any nesting) as this backend's tensors."""

    @abc.abstractmethod
    def hvp(self, x, y, sw, v):
        """``(sum_i sw_i H_i v, sum_i sw_i f_i)``."""

    @abc.abstractmethod
    def grad(self, x, y, sw):
        """``(sum_i sw_i g_i, sum_i sw_i f_i)``, g_i example i's gradient."""

    @abc.abstractmethod
    def loss(self, x, y, sw):
        """``sum_i sw_i f_i``."""

    @abc.abstractmethod
    def drive(self, x, y, sw, v, step: Step) -> bool:
        """Products ``sum_i sw_i H_i v`` sharing one forward and backward
        pass: ``step(product) -> next v (float32 NumPy) or None``, starting
        from ``v`` (None: ``step`` is sent the gradient ``sum_i sw_i g_i``
        first and returns the first ``v``). False (no step taken) where the
        backend cannot run the loop: the operator then calls `hvp` per
        step."""

    @abc.abstractmethod
    def example_powers(self, k: int, path: str, x, y, sw, v):
        """``[H_i^k v for each example i]``, shape ``(n, dim)``, on
        ``path`` (``"vectorized"``: the backend's vectorizing map;
        ``"looped"``: one example at a time). Unweighted: per-token weights
        are inside each example's loss, per-example ones are applied by
        `power`."""

    def ggn(self, x, y, sw, v):
        """``(sum_i sw_i G_i v, sum_i sw_i f_i)``: G_i = J_i^T Q_i J_i, the
        generalized Gauss-Newton matrix of example i (J_i the Jacobian of
        the model's outputs in the weights, Q_i the Hessian of the loss in
        the outputs; the Hessian less the model's own second derivatives)."""
        raise NotImplementedError(
            f"{type(self).__name__} has no Gauss-Newton products."
        )

    # -- the neutral parts ------------------------------------------------

    def power(self, k: int, path: str) -> Callable:
        """``(x, y, sw, v) -> sum_i sw_i H_i^k v`` on ``path``."""
        return lambda x, y, sw, v: self.power_sum(k, path, x, y, sw, v)

    def power_sum(self, k: int, path: str, x, y, sw, v):
        """``sum_i sw_i H_i^k v`` (each example once where the weights are
        per token)."""
        rows = self.example_powers(k, path, x, y, sw, v)
        return ops.sum(rows * self._frequencies(sw)[:, None], axis=0)

    def square_gap(self, path: str) -> Callable:
        """``(x, y, sw, v, center) -> sum_i sw_i H_i (H_i v - center)``
        on ``path``: with ``center = H v`` and summed over the data, ``n
        (M_2 - H^2) v`` where the examples' Hessians average to H."""
        return lambda x, y, sw, v, center: self.square_gap_sum(
            path, x, y, sw, v, center
        )

    def square_gap_sum(self, path: str, x, y, sw, v, center):
        """``sum_i sw_i H_i (H_i v - center)`` (each example once where the
        weights are per token): the rows ``H_i v``, centered, then one
        product per example with its own vector (`example_products`)."""
        rows = self.example_powers(1, path, x, y, sw, v)
        rows = self.example_products(path, x, y, sw, rows - center[None, :])
        return ops.sum(rows * self._frequencies(sw)[:, None], axis=0)

    def drive_square_gap(self, chunks, v, scale: float, step: Step) -> bool:
        """s_2 steps ``sum_i c_i H_i (H_i v - center)`` summed over
        ``chunks`` (every example, as ``(x, y, sw)``), ``center = scale *
        sum_i c_i H_i v`` (the mean product, from the step's own rows: no
        batch product), sharing the work that does not depend on v:
        ``step(product) -> next v (float32 NumPy) or None``, starting from
        ``v``. False (no step taken) where the backend has no such loop for
        this model or these chunks: the operator then calls `square_gap`
        per step. A backend runs it only for the step it has already
        checked on the first chunk (the factored one)."""
        return False

    def example_products(self, path: str, x, y, sw, vs):
        """``[H_i vs_i for each example i]``: each example's own vector
        (rows of ``vs``), unweighted as in `example_powers`."""
        raise NotImplementedError(
            f"{type(self).__name__} has no per-example products with one "
            "vector per example."
        )

    def rows(self, path: str) -> Callable:
        """``(x, y, sw, v) -> [H_i v for each i]`` on ``path``."""
        return lambda x, y, sw, v: self.example_powers(1, path, x, y, sw, v)

    def decide(self, x, y, sw, v) -> bool:
        """Whether the vectorized path may be used: it must run and agree
        with the looped one on this chunk (one product each). Decided once;
        a backend that needs no check sets ``vectorized`` when built."""
        if self.vectorized is None:
            expected = self._trial("looped")(x, y, sw, v)

            def vectorized():
                with self._vectorized_trial():
                    return self._trial("vectorized")(x, y, sw, v)

            self.vectorized = self.trial_agrees(vectorized, expected)
        return self.vectorized

    def trial_agrees(self, trial: Callable[[], Any], expected, errors=()) -> bool:
        """Whether a faster path runs and agrees with ``expected`` (see
        `agrees`): ``trial()``'s result, False where it raises one of
        `vectorize_errors` or ``errors``. How every faster path (the
        vectorized one, each backend's fused or factored s_2 step) is
        checked once on the first chunk before it is kept."""
        try:
            got = trial()
        except (*self.vectorize_errors, *errors):
            return False
        return self.agrees(got, expected)

    @staticmethod
    def agrees(got, expected) -> bool:
        """Whether a faster path's result ``got`` equals ``expected`` to 1e-4
        relative to ``expected``'s largest entry (NaN or inf: False)."""
        expected = ops.convert_to_numpy(expected)
        scale = max(np.abs(expected).max(), np.finfo(np.float32).tiny)
        error = np.abs(ops.convert_to_numpy(got) - expected).max() / scale
        return bool(np.isfinite(error) and error <= 1e-4)

    def _trial(self, path: str) -> Callable:
        # The product `decide` compares on both paths.
        return self.rows(path)

    def _vectorized_trial(self):
        # The context the vectorized trial runs in.
        return contextlib.nullcontext()

    def _values(self) -> tuple[list, list, list]:
        """The values now of the trainable variables, the other variables
        and the masks (products see the state as it is when they start)."""
        return (
            [v.value for v in self._variables],
            self._state_values(),
            self._mask_values(),
        )

    def _state_values(self) -> list:
        return [v.value for v in self._others]

    def _mask_values(self) -> list:
        return [m.value for m in self._masks if m is not None]

    def _loss_context(self):
        # The context the model is called in, besides the stateless scope.
        return contextlib.nullcontext()

    def _loss_sum(self, params, state, x, y, sw):
        """``sum_i sw_i f_i = n * (Keras's batch loss)`` as a function of
        ``params`` (tensors standing for the trainable weights) and
        ``state`` (the other variables' values). The model runs in a
        `keras.StatelessScope` on them whose updates are dropped: batch-norm
        statistics are not updated and seeds not advanced, so every product
        sees the same function (the same dropout noise)."""
        mapping = list(zip(self._variables, params)) + list(zip(self._others, state))
        with (
            keras.StatelessScope(
                state_mapping=mapping, collect_losses=self._batch_loss.regularization
            ),
            self._loss_context(),
        ):
            y_pred = self._model()(x, training=self.settings.training)
            value = self._batch_loss(y, y_pred, sw if self.settings.weighted else None)
        if self.settings.weighted:
            n = ops.shape(tree.flatten(y_pred)[0])[0]
            return value * (n if isinstance(n, int) else ops.cast(n, value.dtype))
        # Unweighted data: the same sum, sample weights applied here.
        return value * ops.sum(sw)

    def _outputs(self, params, state, x):
        """The model's outputs as a function of ``params`` and ``state``
        (as in `_loss_sum`, without the loss)."""
        mapping = list(zip(self._variables, params)) + list(zip(self._others, state))
        with keras.StatelessScope(state_mapping=mapping), self._loss_context():
            return self._model()(x, training=self.settings.training)

    def _output_loss_sum(self, y, y_pred, sw):
        """``sum_i sw_i f_i`` as a function of the outputs ``y_pred`` (the
        data loss: Gauss-Newton products take no ``model.losses``)."""
        value = self._batch_loss(y, y_pred, sw if self.settings.weighted else None)
        if self.settings.weighted:
            n = ops.shape(tree.flatten(y_pred)[0])[0]
            return value * (n if isinstance(n, int) else ops.cast(n, value.dtype))
        return value * ops.sum(sw)

    def _flat(self, tensors):
        """One flat float32 vector (None, an unconnected gradient: zeros)."""
        return ops.concatenate(
            [
                ops.zeros([size], "float32")
                if t is None
                else ops.reshape(ops.cast(t, "float32"), [-1])
                for t, size in zip(tensors, self._sizes)
            ],
            axis=0,
        )

    def _unflat(self, vector) -> list:
        """A flat vector as one tensor per trainable variable."""
        parts, start = [], 0
        for shape, size in zip(self._shapes, self._sizes):
            parts.append(ops.reshape(vector[start : start + size], shape))
            start += size
        return parts

    def _project(self, tensors, mask_values) -> list:
        """``P t``: pruned coordinates (KernelMask zeros) set to zero;
        ``mask_values`` as `_mask_values` gives them."""
        values = iter(mask_values)
        projected = []
        for t, m in zip(tensors, self._masks):
            if m is not None:
                mask = next(values)
                if t is not None:
                    t = t * ops.cast(mask, t.dtype)
            projected.append(t)
        return projected

    def _frequencies(self, sw):
        """How often each example counts in the per-example sums: its
        weight, or once where the weights are per token (padded examples
        have zero weights inside their loss, so zero products)."""
        if self.settings.per_token:
            return ops.ones(ops.shape(sw)[:1], "float32")
        return sw

    def _step(self, product):
        """The solver's callback (see `drive`): ``(next v, done)``."""
        following = self._callback(np.asarray(product))
        if following is None:
            return np.zeros([self.dim], np.float32), np.bool_(True)
        return following, np.bool_(False)

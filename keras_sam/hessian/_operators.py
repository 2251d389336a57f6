"""Curvature operators of a Keras model's loss on a fixed data set.

``CurvatureOperator(model, data)`` maps flat float64 NumPy vectors to
``H v`` (H the Hessian of the mean loss w.r.t. the trainable weights),
``M_k v = mean_i H_i^k v`` (per-example Hessians, vectorized across examples)
and ``H^k v``. This module is backend-neutral: it holds the data (NumPy),
the chunking, the float64 sums, class weights and the checks. The products
themselves are computed in float32 by the active backend's
``keras_sam.backend.<name>.curvature.Functions``, a subclass of
`keras_sam.hessian._functions.CurvatureFunctions` (the interface), built
once per model / loss / settings / input signature and reused.
"""

from __future__ import annotations

import dataclasses
import sys
import weakref
from typing import Any

import keras
import numpy as np
from keras import tree

from keras_sam import backend
from keras_sam._validation import boolean, one_of, positive_int
from keras_sam.hessian._functions import CurvatureFunctions, Settings
from keras_sam.hessian._losses import BatchLoss
from keras_sam.sparsity._masks import kernel_masks

# model -> {key: backend functions}. The functions hold the model only
# through a weak reference, so the cache does not keep models alive.
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

_DATA_HELP = (
    "`data` must be a tuple (x, y) or (x, y, sample_weight) of arrays, or a "
    "tf.data.Dataset yielding such tuples as batches"
)

#: Keras backends with curvature products.
BACKENDS = ("tensorflow", "jax", "torch")
#: The curvature matrices an operator multiplies by.
CURVATURES = ("hessian", "ggn")


def _backend_functions():
    """The active backend's ``Functions`` class (imported on first use, so
    that importing `keras_sam.hessian` imports no other backend)."""
    name = keras.backend.backend()
    if name not in BACKENDS:
        raise NotImplementedError(
            f"keras_sam.hessian supports the Keras backends {list(BACKENDS)}; the "
            f"active one is {name!r}. Set KERAS_BACKEND to one of them."
        )
    return backend.module("curvature").Functions


def is_dataset(data) -> bool:
    """Whether ``data`` is a `tf.data.Dataset`."""
    # tf.data is only looked for when TensorFlow is already imported.
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(data, tf.data.Dataset)


def _to_numpy(value):
    return tree.map_structure(keras.ops.convert_to_numpy, value)


def _split(batch):
    if not isinstance(batch, tuple | list) or len(batch) not in (2, 3):
        raise ValueError(f"{_DATA_HELP}; got an element of type {type(batch)}.")
    x, y = batch[0], batch[1]
    sw = batch[2] if len(batch) == 3 else None
    try:
        x, y = _to_numpy(x), _to_numpy(y)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{_DATA_HELP}; could not convert it: {error}") from None
    leaves = tree.flatten(x) + tree.flatten(y)
    if any(
        not isinstance(t, np.ndarray) or t.dtype == object or t.ndim < 1 for t in leaves
    ):
        raise ValueError(
            f"{_DATA_HELP}; x and y need numeric arrays with a batch dimension."
        )
    n = leaves[0].shape[0]
    if any(t.shape[0] != n for t in leaves):
        raise ValueError(
            f"{_DATA_HELP}; x and y must have the same number of examples."
        )
    return x, y, _sample_weight(sw, n), n


def _sample_weight(sw, n: int) -> np.ndarray:
    """``sample_weight`` as float32: ``(n,)`` per example (``(n, 1)``
    too, as Keras reads it), or the per-token shape as given (``(n, seq)``,
    anything Keras broadcasts against an output's loss); all ones: ``(n,)``."""
    if sw is None:
        return np.ones([n], np.float32)
    try:
        sw = np.asarray(keras.ops.convert_to_numpy(sw), np.float32)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"`sample_weight` must be a numeric array, could not convert it: {error}"
        ) from None
    if sw.ndim == 0 or sw.shape[0] != n:
        raise ValueError(
            f"`sample_weight` must have one entry per example ({n}) along its "
            f"first axis (shape ({n},), or per token, e.g. ({n}, seq)), got shape "
            f"{tuple(sw.shape)}."
        )
    if sw.ndim == 2 and sw.shape[1] == 1:
        sw = sw[:, 0]
    if sw.ndim > 1 and np.all(sw == 1.0):
        return np.ones([n], np.float32)
    return sw


def _slice(structure, start: int, stop: int):
    return tree.map_structure(lambda t: t[start:stop], structure)


def as_batches(data: Any, batch_size: int | None = None) -> list[tuple]:
    """Materializes ``data`` as a list of ``(x, y, sample_weight, n)``
    batches of NumPy arrays."""
    batch_size = positive_int(batch_size, "batch_size", allow_none=True)
    if is_dataset(data):
        if batch_size is not None:
            raise ValueError(
                "`batch_size` must be None when `data` is a tf.data.Dataset "
                "(batch the dataset instead)."
            )
        batches = [_split(tuple(b) if isinstance(b, list) else b) for b in data]
    elif isinstance(data, tuple | list):
        x, y, sw, n = _split(tuple(data))
        if n == 0:
            raise ValueError("`data` must contain at least one example, got 0.")
        size = n if batch_size is None else batch_size
        batches = []
        for start in range(0, n, size):
            part = _slice((x, y, sw), start, start + size)
            batches.append((*part, part[2].shape[0]))
    else:
        raise ValueError(f"{_DATA_HELP}; got {type(data).__name__}.")
    batches = [b for b in batches if b[3] > 0]
    if not batches:
        raise ValueError("`data` must contain at least one example.")
    return batches


#: The memory a default chunk of per-example products may take, and the
#: float32 weight-sized vectors one example holds in it (per-example
#: gradient, tangents and their products, measured on JAX's vmap).
_CHUNK_BYTES = 2**30
_VECTORS_PER_EXAMPLE = 6


def default_chunk_size(dim: int) -> int:
    """Examples per chunk of per-example products for ``dim`` weights: a
    larger chunk runs faster per example (about 1.5x from 16 to 128 on the
    784-512-512-10 MLP) until memory runs out."""
    size = _CHUNK_BYTES // (4 * _VECTORS_PER_EXAMPLE * max(dim, 1))
    return int(min(max(size, 16), 256))


def _signature(array: np.ndarray) -> tuple:
    return (array.shape[1:], array.dtype.str)


def _functions(model, batch_loss, batch, settings: Settings) -> CurvatureFunctions:
    x, y, sw = batch[0], batch[1], batch[2]
    variables = model.trainable_variables
    if keras.backend.backend() != "tensorflow":
        # Options only TensorFlow's products read: one set of functions.
        settings = dataclasses.replace(
            settings, jit_compile=False, forward_over_reverse=False
        )
    key = (
        keras.backend.backend(),
        id(batch_loss.loss),
        repr(batch_loss.loss_weights),
        batch_loss.regularization,
        settings,
        tuple(id(v) for v in variables),
        tuple(id(m) for m in kernel_masks(variables)) if settings.masked else None,
        repr(tree.map_structure(_signature, x)),
        repr(tree.map_structure(_signature, y)),
        _signature(sw),
    )
    per_model = _CACHE.setdefault(model, {})
    if key not in per_model:
        functions = _backend_functions()(model, batch_loss, settings, x, y, sw)
        # Keep the loss alive so that its id stays unique.
        per_model[key] = (functions, batch_loss.loss)
    return per_model[key][0]


class CurvatureOperator:
    """Hessian products of ``model``'s mean loss over a fixed data set.

    ```python
    op = CurvatureOperator(model, (x, y))
    hv = op.hvp(v)                 # H v, v a float64 vector of length op.dim
    m2v = op.moment(v, 2)          # mean_i H_i^2 v
    gap = op.moment_gap(v, 2)      # (M_2 - H^2) v
    solvers.lanczos(op.matvec, op.dim)   # one backend call for all products
    ```

    The loss is ``sum_i w_i f_i / n`` over all n examples, f_i the compiled
    loss of example i as `fit` computes it (every output, ``loss_weights``,
    Keras' shape handling) and w_i its sample weight (times its class
    weight). Per-token sample weights (``(n, seq)``, any shape Keras
    broadcasts against the loss, e.g. a padding mask) weight the tokens
    inside each example's loss, exactly as Keras's compiled loss reduces
    them (the sum over the batch's tokens over their number); then every
    example counts once in the per-example moments, whose H_i is the
    Hessian of that weighted f_i. Each product sees the model state as it
    is when the product starts and changes none of it: batch-norm
    statistics are not updated and stochastic layers draw the same noise in
    every product.

    Args:
        model: a built Keras model (any `keras.Model`, `SAMModel` included).
        data: ``(x, y)`` or ``(x, y, sample_weight)`` arrays (x and y may be
            lists or dicts for several inputs and outputs), or a
            `tf.data.Dataset` of such batches.
        loss: loss object, function or name, or a list / dict of them per
            output; default the compiled loss (with its ``loss_weights``).
        loss_weights: per-output weights when ``loss`` is given.
        regularization: add ``model.losses`` (weight and activity
            regularizers, ``add_loss`` terms), as `fit` does (default False:
            the data loss only).
        class_weight: ``{class: weight}`` as in `fit` (single output).
        training: call the model in training mode (default False: batch
            norm in inference mode, no dropout).
        batch_size: examples per product call when ``data`` are arrays
            (default: all at once).
        chunk_size: examples vectorized together for per-example products
            (default None: as many as keep a chunk's per-example vectors,
            about 6 float32 copies of the weights each, under 1 GiB,
            between 16 and 256; the 784-512-512-10 MLP: 66).
        vectorize: per-example products: None (default) vectorizes where
            that is right for the model (TensorFlow: `tf.vectorized_map`,
            PyTorch: `torch.func.vmap`, where the layers allow it and the
            first chunk's result equals the looped one; JAX: `jax.vmap`,
            always; see docs/curvature.md), else loops over the examples;
            False always loops; True vectorizes without the check.
        jit_compile: TensorFlow: XLA-compile the products (off by default:
            XLA's second derivative of max pooling is wrong). JAX always
            jit-compiles; PyTorch runs eagerly.
        masked: on a pruned model (`keras_sam.sparsity`), restrict the
            curvature to the unpruned weights, the ones training moves:
            products are ``P H P v`` and ``mean_i (P H_i P)^k v`` with P
            zeroing the pruned coordinates (default True; no effect on a
            dense model).
        curvature: ``"hessian"`` (default) or ``"ggn"``: the generalized
            Gauss-Newton matrix ``G = sum_i w_i J_i^T Q_i J_i / n`` (J_i the
            Jacobian of example i's outputs in the weights, Q_i the Hessian
            of its loss in the outputs) instead of H. G is H less the
            model's own second derivatives (``sum_c dL/dz_c d2z_c``): a
            different quantity, positive semidefinite wherever the loss is
            convex in the outputs (cross-entropy, MSE), equal to H for a
            linear model. Its products (`hvp`, `matvec`: every eigenvalue,
            trace and density measure) cost about one forward and three
            backward passes; per-example moments (`moment`,
            `non_uniformity`) and ``regularization=True`` take the Hessian
            only.
        forward_over_reverse: TensorFlow: compute ``H v`` forward over
            reverse (``tf.autodiff.ForwardAccumulator`` on the gradient):
            about 30% faster per product on an MLP, but the first call
            traces for several seconds instead of about one (default False:
            reverse over reverse; per-example products are always reverse
            over reverse). JAX always differentiates forward over reverse
            (`jax.jvp` of `jax.grad`), PyTorch reverse over reverse (double
            backward); both accept the option and ignore it.
    """

    def __init__(
        self,
        model: keras.Model,
        data: Any,
        *,
        loss: Any = None,
        loss_weights: Any = None,
        regularization: bool = False,
        class_weight: dict | None = None,
        training: bool = False,
        batch_size: int | None = None,
        chunk_size: int | None = None,
        vectorize: bool | None = None,
        jit_compile: bool = False,
        masked: bool = True,
        forward_over_reverse: bool = False,
        curvature: str = "hessian",
    ):
        if not isinstance(model, keras.Model):
            raise ValueError(
                f"`model` must be a keras.Model, got {type(model).__name__}."
            )
        training = boolean(training, "training")
        regularization = boolean(regularization, "regularization")
        jit_compile = boolean(jit_compile, "jit_compile")
        masked = boolean(masked, "masked")
        forward = boolean(forward_over_reverse, "forward_over_reverse")
        self.curvature = one_of(curvature, "curvature", CURVATURES)
        if self.curvature == "ggn" and regularization:
            raise ValueError(
                "`regularization` must be False with curvature='ggn' (the "
                "Gauss-Newton matrix is of the data loss), got True."
            )
        if vectorize is not None:
            vectorize = boolean(vectorize, "vectorize")
        chunk_size = positive_int(chunk_size, "chunk_size", allow_none=True)
        self.batches = as_batches(data, batch_size)
        if class_weight is not None:
            self.batches = _apply_class_weight(self.batches, class_weight)
        if not model.built or not model.trainable_variables:
            raise ValueError("`model` must be built and have trainable weights.")
        self.model = model
        self.num_examples = sum(b[3] for b in self.batches)
        batch_loss = BatchLoss(model, loss, loss_weights, regularization)
        weighted = any(bool(np.any(b[2] != 1.0)) for b in self.batches)
        settings = Settings(
            training=training,
            masked=masked,
            weighted=weighted,
            per_token=self.batches[0][2].ndim > 1,
            jit_compile=jit_compile,
            forward_over_reverse=forward,
        )
        self._fn = _functions(model, batch_loss, self.batches[0], settings)
        if vectorize and "vectorized" not in self._fn.paths:
            raise ValueError(_no_vectorized_path())
        self._vectorize = vectorize
        self.dim = self._fn.dim
        self.chunk_size = chunk_size or default_chunk_size(self.dim)
        self._tensors = [self._fn.tensors(b[:3]) for b in self.batches]
        self._chunk_tensors: list | None = None
        self._mean_is_batch: bool | None = None  # see `_centered`
        self._drive_agrees: bool | None = None  # see `drive_moment_gap`
        self.num_products = 0  # H v products (per-example products counted per k)

    def _float32(self, v) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64).reshape(-1)
        if v.shape != (self.dim,):
            raise ValueError(f"`v` must have shape ({self.dim},), got {v.shape}.")
        return v.astype(np.float32)

    def _vector(self, v):
        return self._fn.tensors(self._float32(v))

    def hvp(self, v: np.ndarray) -> np.ndarray:
        """``H v`` with H the Hessian of the mean loss (``G v``, the
        Gauss-Newton matrix's, with ``curvature="ggn"``)."""
        tv = self._vector(v)
        total = np.zeros(self.dim)
        product = self._fn.ggn if self.curvature == "ggn" else self._fn.hvp
        for x, y, sw in self._tensors:
            total += _numpy(product(x, y, sw, tv)[0])
        self.num_products += 1
        return total / self.num_examples

    @property
    def matvec(self) -> HessianProducts:
        """``v -> H v`` for `keras_sam.hessian.solvers`: called, it is `hvp`;
        a solver given it runs all its products in one backend call where
        it can (see `HessianProducts`)."""
        return HessianProducts(self)

    def drive(self, steps):
        """Runs a solver's ``steps`` (see `keras_sam.hessian.solvers.run`)
        on ``H v`` and returns its result.

        On one batch (the default for arrays), the backend computes the
        loss and its gradient once and each product only differentiates the
        gradient again along the vector (PyHessian's saving, about half a
        product's cost); on several batches, or where the backend cannot,
        one `hvp` per step. A first step that yields `GRADIENT` is sent the
        mean-loss gradient (on one batch, the one the products share: no
        extra pass).
        """
        try:
            v = next(steps)
        except StopIteration as stop:
            return stop.value
        shared = getattr(self._fn, "drive", None)

        def mean_gradient():
            return self.gradient()[1]

        if shared is None or len(self._tensors) != 1 or self.curvature == "ggn":
            return _plain_drive(steps, v, self.hvp, mean_gradient)
        state = _DriveState(steps)
        wants_gradient = v is GRADIENT
        scale = 1.0 / self.num_examples

        def step(hv):
            # The backend's product (a float32 sum over the batch; first the
            # gradient where the solver asked for it) in, the next vector
            # (float32) or None out.
            nonlocal wants_gradient
            if wants_gradient:
                wants_gradient = False
            else:
                self.num_products += 1
            state.next(np.multiply(hv, scale, dtype=np.float64))
            if state.done:
                return None
            return self._float32(state.vector)

        x, y, sw = self._tensors[0]
        start = None if v is GRADIENT else self._float32(v)
        ran = shared(x, y, sw, start, step)
        if not ran:  # the backend could not run it (no step was taken)
            return _plain_drive(steps, v, self.hvp, mean_gradient)
        return state.result()

    def gradient(self) -> tuple[float, np.ndarray]:
        """``(mean loss, gradient of the mean loss)``."""
        loss, total = 0.0, np.zeros(self.dim)
        for x, y, sw in self._tensors:
            g, value = self._fn.grad(x, y, sw)
            total += _numpy(g)
            loss += float(_numpy(value))
        return loss / self.num_examples, total / self.num_examples

    def loss(self) -> float:
        """Mean loss over the data."""
        total = sum(
            float(_numpy(self._fn.loss(x, y, sw))) for x, y, sw in self._tensors
        )
        return total / self.num_examples

    def _chunks(self) -> list:
        """The per-example chunks as ``((x, y, sw), n)``, n the real
        examples. Where the backend compiles per shape (``pad_chunks``),
        every chunk is padded to one size with copies of its first example
        at weight 0, whose rows are dropped."""
        if self._chunk_tensors is None:
            # Chunks of balanced sizes: 250 examples at chunk_size 167 as
            # two of 125, not 167 and 83 (padded to 167 where padded).
            largest = max(b[3] for b in self.batches)
            c = -(-largest // -(-largest // self.chunk_size))
            size = min(c, largest)
            chunks = []
            for x, y, sw, n in self.batches:
                for start in range(0, n, c):
                    chunk = _slice((x, y, sw), start, start + c)
                    real = chunk[2].shape[0]
                    if self._fn.pad_chunks and real < size:
                        chunk = _pad(chunk, size - real)
                    chunks.append((self._fn.tensors(chunk), real))
            self._chunk_tensors = chunks
        return self._chunk_tensors

    @property
    def vectorized(self) -> bool | None:
        """Whether per-example products are vectorized (None: not decided
        before the first per-example product)."""
        if self._vectorize is not None:
            return self._vectorize
        return self._fn.vectorized

    def _path(self, chunk, tv) -> str:
        if self._vectorize is None:
            self._fn.decide(*chunk, tv)
        return "vectorized" if self.vectorized else "looped"

    def _moment_sum(self, tv, k: int, path: str | None = None) -> np.ndarray:
        total = np.zeros(self.dim)
        for chunk, _ in self._chunks():
            chosen = path or self._path(chunk, tv)
            total += _numpy(self._fn.power(k, chosen)(*chunk, tv))
        return total

    def _check_hessian(self, what: str) -> None:
        if self.curvature != "hessian":
            raise ValueError(
                f"`{what}` needs curvature='hessian' (per-example Hessian "
                f"products); this operator was built with curvature="
                f"{self.curvature!r}."
            )

    def moment(self, v: np.ndarray, k: int) -> np.ndarray:
        """``M_k v = sum_i w_i H_i^k v / n`` (per-example Hessians)."""
        k = positive_int(k, "k")
        self._check_hessian("moment")
        total = self._moment_sum(self._vector(v), k)
        self.num_products += k
        return total / self.num_examples

    def power(self, v: np.ndarray, k: int) -> np.ndarray:
        """``H^k v``."""
        k = positive_int(k, "k")
        for _ in range(k):
            v = self.hvp(v)
        return v

    def moment_gap(self, v: np.ndarray, k: int) -> np.ndarray:
        """``(M_k - H^k) v``.

        For k = 2, where the examples' Hessians average to H (checked once,
        see `_centered`), ``sum_i w_i H_i (H_i v - H v) / n``: one batch
        product and one per-example pass of two products (instead of
        ``M_2 v`` and two batch products)."""
        k = positive_int(k, "k")
        if k == 2 and self.curvature == "hessian":
            center = self.hvp(v)
            if self._centered(v, center):
                tv, tc = self._vector(v), self._vector(center)
                total = np.zeros(self.dim)
                for chunk, _ in self._chunks():
                    path = self._path(chunk, tv)
                    total += _numpy(self._fn.square_gap(path)(*chunk, tv, tc))
                self.num_products += 2
                return total / self.num_examples
            return self.moment(v, 2) - self.hvp(center)
        return self.moment(v, k) - self.power(v, k)

    def moment_gaps(self, k: int) -> MomentGaps:
        """``v -> (M_k - H^k) v`` for `keras_sam.hessian.solvers`: called, it
        is `moment_gap`; a solver given it runs its s_2 steps in one backend
        call where it can (see `MomentGaps`)."""
        return MomentGaps(self, positive_int(k, "k"))

    def drive_moment_gap(self, steps, k: int):
        """Runs a solver's ``steps`` on ``(M_k - H^k) v`` and returns its
        result.

        For k = 2 where the examples' Hessians average to H, the backend
        runs the steps in one call where it can
        (`drive_square_gap`: the center ``H v`` from each step's own rows,
        not a batch product, and the work that does not depend on v done
        once); else one `moment_gap` per step. Until the backend's loop has
        agreed once with `moment_gap` (its first product against one
        `moment_gap` of the same vector, to 1e-4, which also decides the
        path, the centering and the backend's step on a new operator), a
        call starts with that check; a loop that disagrees, or fails
        before it agreed, is not used again. Where the backend drives, a
        result does not depend on what ran before."""
        k = positive_int(k, "k")

        def gap(v):
            return self.moment_gap(v, k)

        try:
            v = np.array(next(steps))
        except StopIteration as stop:
            return stop.value
        first = None if self._drive_agrees else gap(v)
        if (
            k == 2
            and self.curvature == "hessian"
            and self._mean_is_batch
            and self.vectorized
            and self._drive_agrees is not False
        ):
            state = _DriveState(steps)
            scale = 1.0 / self.num_examples

            def step(product):
                product = np.multiply(product, scale, dtype=np.float64)
                if not self._drive_agrees:
                    self._drive_agrees = self._fn.agrees(product, first)
                    if not self._drive_agrees:
                        return None  # the solver has not seen it
                self.num_products += 2
                state.next(product)
                return None if state.done else self._float32(state.vector)

            chunks = [chunk for chunk, _ in self._chunks()]
            try:
                ran = self._fn.drive_square_gap(chunks, self._float32(v), scale, step)
            except self._fn.vectorize_errors:
                if self._drive_agrees:  # the solver has seen its products
                    raise
                self._drive_agrees = ran = False  # e.g. no third derivative
            if ran and self._drive_agrees:
                return state.result()
        if first is not None:
            try:
                v = steps.send(first)
            except StopIteration as stop:
                return stop.value
        return _plain_drive(steps, v, gap, None)

    def _centered(self, v: np.ndarray, hv: np.ndarray) -> bool:
        """Whether ``H = sum_i w_i H_i / n`` (the batch Hessian is the
        examples' mean), so that ``(M_2 - H^2) v = sum_i w_i H_i (H_i v -
        H v) / n``. Decided once, on the first chunk's real examples: the
        weighted sum of their rows ``H_i v`` against their batch product.
        Not where the batch mixes examples (batch statistics in training
        mode) or the examples' weights do not sum to the batch's count of
        ``model.losses`` (``regularization=True`` with sample weights)."""
        if self._mean_is_batch is None:
            self._check_hessian("moment")
            tv = self._vector(v)
            chunk, real = self._chunks()[0]
            path = self._path(chunk, tv)
            rows = _numpy(self._fn.rows(path)(*chunk, tv))[:real]
            x, y, sw, n = self.batches[0]
            if real == n:  # the batch's own tensors (no new signature)
                first = self._tensors[0]
            else:
                first = self._fn.tensors(_slice((x, y, sw), 0, real))
            weights = np.ones(real) if sw.ndim > 1 else sw[:real]  # per token: once
            got = weights @ rows
            expected = _numpy(self._fn.hvp(*first, tv)[0])
            scale = max(np.abs(expected).max(), np.finfo(np.float32).tiny)
            error = np.abs(got - expected).max() / scale
            self._mean_is_batch = bool(np.isfinite(error) and error <= 1e-4)
            self.num_products += 2
        return self._mean_is_batch

    def per_example_hvp(self, v: np.ndarray, path: str | None = None) -> np.ndarray:
        """``H_i v`` for every example i, shape ``(n, dim)`` (unweighted).

        ``path``: ``"vectorized"`` or ``"looped"`` to force one (default:
        the operator's choice)."""
        path = one_of(path, "path", (None, "vectorized", "looped"))
        self._check_hessian("per_example_hvp")
        if path is not None and path not in self._fn.paths:
            raise ValueError(_no_vectorized_path())
        tv = self._vector(v)
        rows = []
        for chunk, real in self._chunks():
            chosen = path or self._path(chunk, tv)
            rows.append(_numpy(self._fn.rows(chosen)(*chunk, tv))[:real])
        return np.concatenate(rows).astype(np.float64)

    def per_example_hvp_looped(self, v: np.ndarray) -> np.ndarray:
        """`per_example_hvp` on the looped path (for comparison)."""
        return self.per_example_hvp(v, path="looped")


class HessianProducts:
    """``H v`` of a `CurvatureOperator` as a matvec solvers can drive whole
    (``drive(steps)``, see `keras_sam.hessian.solvers.run`)."""

    def __init__(self, operator: CurvatureOperator):
        self.operator = operator
        self.dim = operator.dim

    def __call__(self, v: np.ndarray) -> np.ndarray:
        return self.operator.hvp(v)

    def drive(self, steps):
        return self.operator.drive(steps)


class MomentGaps:
    """``(M_k - H^k) v`` of a `CurvatureOperator` as a matvec solvers can
    drive whole (``drive(steps)``, see `keras_sam.hessian.solvers.run`)."""

    def __init__(self, operator: CurvatureOperator, k: int):
        self.operator = operator
        self.k = k
        self.dim = operator.dim

    def __call__(self, v: np.ndarray) -> np.ndarray:
        return self.operator.moment_gap(v, self.k)

    def drive(self, steps):
        return self.operator.drive_moment_gap(steps, self.k)


class _GradientRequest:
    """What a solver's first step yields to be sent the mean-loss gradient
    instead of a product (see `CurvatureOperator.drive`)."""

    def __repr__(self) -> str:
        return "GRADIENT"


GRADIENT = _GradientRequest()


class _DriveState:
    """A solver's steps fed one product at a time from inside a backend
    call: the next vector, whether it is done, its result or its error."""

    def __init__(self, steps):
        self.steps = steps
        self.done = False
        self.vector = None
        self.value = None
        self.error: BaseException | None = None

    def next(self, product: np.ndarray) -> None:
        try:
            self.vector = self.steps.send(product)
        except StopIteration as stop:
            self.done, self.value = True, stop.value
        except BaseException as error:  # re-raised by `result`
            self.done, self.error = True, error

    def result(self):
        if self.error is not None:
            raise self.error
        if not self.done:
            raise RuntimeError("The backend stopped before the solver finished.")
        return self.value


def _plain_drive(steps, v, matvec, gradient):
    try:
        if v is GRADIENT:
            v = steps.send(gradient())
        while True:
            v = steps.send(matvec(v))
    except StopIteration as stop:
        return stop.value


def _pad(chunk, count: int):
    """``count`` copies of the chunk's first example appended, weight 0."""
    x, y, sw = chunk

    def pad(t):
        return np.concatenate([t, np.repeat(t[:1], count, axis=0)])

    x, y = tree.map_structure(pad, (x, y))
    return x, y, np.concatenate([sw, np.zeros((count, *sw.shape[1:]), sw.dtype)])


def _no_vectorized_path() -> str:
    return (
        f"Per-example products are not vectorized on the "
        f"{keras.backend.backend()!r} backend (see docs/curvature.md): use "
        "vectorize=None or False, and path=None or 'looped'."
    )


def _numpy(tensor) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(tensor), np.float64)


def _apply_class_weight(batches: list[tuple], class_weight: Any) -> list[tuple]:
    """Sample weights times ``class_weight[class]`` (Keras' rule: the arg-max
    of one-hot labels, else the rounded label)."""
    if not isinstance(class_weight, dict):
        raise ValueError(
            f"`class_weight` must be a dict {{class: weight}}, got {class_weight!r}."
        )
    out = []
    for x, y, sw, n in batches:
        if not isinstance(y, np.ndarray):
            raise ValueError("`class_weight` needs a single-output `y`.")
        labels = y
        if labels.ndim > 1:
            labels = labels.argmax(-1) if labels.shape[-1] != 1 else labels[..., 0]
        labels = np.round(labels).astype(int)
        factors = np.array([class_weight.get(int(c), 1.0) for c in labels], "float32")
        out.append((x, y, sw * factors.reshape((-1,) + (1,) * (sw.ndim - 1)), n))
    return out

"""Curvature operators of a Keras model's loss on a fixed data set.

``CurvatureOperator(model, data)`` maps flat float64 NumPy vectors to
``H v`` (H the Hessian of the mean loss w.r.t. the trainable weights),
``M_k v = mean_i H_i^k v`` (per-example Hessians, vectorized across examples)
and ``H^k v``. Products are computed in float32 by reverse-over-reverse
differentiation in `tf.function`s traced once per model / loss / input
signature (None batch dimension) and reused; sums over batches are float64.
"""

from __future__ import annotations

import numbers
import weakref
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_sam.sparsity._masks import kernel_masks

# model -> {key: traced functions}. The functions hold the model only through
# a weak reference, so the cache does not keep models alive.
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

_DATA_HELP = (
    "`data` must be a tuple (x, y) or (x, y, sample_weight) of arrays, or a "
    "tf.data.Dataset yielding such tuples as batches"
)


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"`{name}` must be True or False, got {name}={value!r}.")
    return bool(value)


def _check_int(name: str, value: Any, minimum: int = 1, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        extra = "None or " if allow_none else ""
        raise ValueError(
            f"`{name}` must be {extra}an integer >= {minimum}, got {name}={value!r}."
        )
    if value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _to_tensor(value):
    return tf.nest.map_structure(tf.convert_to_tensor, value)


def _split(batch, name="data"):
    if not isinstance(batch, tuple | list) or len(batch) not in (2, 3):
        raise ValueError(f"{_DATA_HELP}; got an element of type {type(batch)}.")
    x, y = batch[0], batch[1]
    sw = batch[2] if len(batch) == 3 else None
    try:
        x, y = _to_tensor(x), _to_tensor(y)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{_DATA_HELP}; could not convert it: {error}") from None
    leaves = tf.nest.flatten(x) + tf.nest.flatten(y)
    if any(t.shape.rank is None or t.shape.rank < 1 for t in leaves):
        raise ValueError(f"{_DATA_HELP}; x and y need a batch dimension.")
    n = int(tf.shape(leaves[0])[0])
    if any(int(tf.shape(t)[0]) != n for t in leaves):
        raise ValueError(
            f"{_DATA_HELP}; x and y must have the same number of examples."
        )
    if sw is None:
        sw = tf.ones([n], tf.float32)
    else:
        sw = tf.reshape(tf.cast(tf.convert_to_tensor(sw), tf.float32), [-1])
        if int(sw.shape[0]) != n:
            raise ValueError(
                f"`sample_weight` must have one entry per example ({n}), got "
                f"shape {tuple(sw.shape)}."
            )
    return x, y, sw, n


def as_batches(data: Any, batch_size: int | None = None) -> list[tuple]:
    """Materializes ``data`` as a list of ``(x, y, sample_weight, n)`` batches."""
    batch_size = _check_int("batch_size", batch_size, allow_none=True)
    if isinstance(data, tf.data.Dataset):
        batches = [_split(tuple(b) if isinstance(b, list) else b) for b in data]
        if batch_size is not None:
            raise ValueError(
                "`batch_size` must be None when `data` is a tf.data.Dataset "
                "(batch the dataset instead)."
            )
    elif isinstance(data, tuple | list):
        x, y, sw, n = _split(tuple(data))
        size = n if batch_size is None else batch_size
        batches = []
        for start in range(0, n, size):
            part = tf.nest.map_structure(lambda t, s=start: t[s : s + size], (x, y, sw))
            batches.append((*part, int(tf.shape(part[2])[0])))
    else:
        raise ValueError(f"{_DATA_HELP}; got {type(data).__name__}.")
    batches = [b for b in batches if b[3] > 0]
    if not batches:
        raise ValueError("`data` must contain at least one example.")
    return batches


def resolve_loss(model: keras.Model, loss: Any) -> Callable:
    """The per-example loss ``(y, y_pred) -> (n,)`` from ``loss`` or compile."""
    if loss is None:
        loss = getattr(model, "loss", None)
        if loss is None:
            raise ValueError(
                "`loss` must be given (a keras.losses.Loss, a loss function or its "
                "name) when the model is not compiled with a loss."
            )
    if isinstance(loss, str):
        loss = keras.losses.get(loss)
    if isinstance(loss, keras.losses.Loss):
        fn = loss.call
    elif callable(loss):
        fn = loss
    else:
        raise ValueError(
            "`loss` must be a keras.losses.Loss, a loss function or its name "
            f"(one loss for a single-output model), got {loss!r}."
        )

    def per_example(y, y_pred):
        values = tf.cast(fn(y, y_pred), tf.float32)
        n = tf.shape(tf.nest.flatten(y_pred)[0])[0]
        # Keras' "sum_over_batch_size" averages over every element, so the
        # per-example loss is the mean over the non-batch axes.
        return tf.reduce_mean(tf.reshape(values, [n, -1]), axis=1)

    per_example.identity = loss
    return per_example


def _spec(t):
    return tf.TensorSpec([None, *t.shape[1:]], t.dtype)


class _Functions:
    """The traced functions of one model / loss / signature."""

    def __init__(self, model, per_example_loss, training, x_spec, y_spec, jit, masked):
        model_ref = weakref.ref(model)
        variables = list(model.trainable_variables)
        self.dim = int(sum(np.prod(v.shape) for v in variables))
        dim = self.dim
        zero = tf.UnconnectedGradients.ZERO
        masks = kernel_masks(variables) if masked else [None] * len(variables)

        def flat(tensors):
            return tf.concat(
                [tf.reshape(tf.cast(t, tf.float32), [-1]) for t in tensors], 0
            )

        def unflat(vector):
            parts, start = [], 0
            for v in variables:
                size = int(np.prod(v.shape))
                parts.append(tf.reshape(vector[start : start + size], v.shape))
                start += size
            return parts

        def loss_sum(x, y, sw):
            y_pred = model_ref()(x, training=training)
            return tf.reduce_sum(per_example_loss(y, y_pred) * sw)

        def project(tensors):
            # P t: pruned coordinates (KernelMask zeros) set to zero.
            return [
                t if m is None else tf.cast(t, tf.float32) * tf.cast(m, tf.float32)
                for t, m in zip(tensors, masks)
            ]

        def hvp_sum(x, y, sw, v):
            with tf.GradientTape() as outer:
                with tf.GradientTape() as inner:
                    loss = loss_sum(x, y, sw)
                grads = inner.gradient(loss, variables, unconnected_gradients=zero)
                gv = tf.add_n(
                    [
                        tf.reduce_sum(tf.cast(g, tf.float32) * p)
                        for g, p in zip(grads, project(unflat(v)))
                    ]
                )
            hv = outer.gradient(gv, variables, unconnected_gradients=zero)
            return flat(project(hv)), loss

        def grad_sum(x, y, sw):
            with tf.GradientTape() as tape:
                loss = loss_sum(x, y, sw)
            grads = tape.gradient(loss, variables, unconnected_gradients=zero)
            return flat(project(grads)), loss

        def per_example_power(x, y, sw, v, k):
            # sum_i sw_i H_i^k v, vectorized across the examples of the chunk.
            def one(args):
                xi, yi, vi = args
                xi = tf.nest.map_structure(lambda t: t[None], xi)
                yi = tf.nest.map_structure(lambda t: t[None], yi)
                one_weight = tf.ones([1], tf.float32)
                for _ in range(k):
                    vi, _ = hvp_sum(xi, yi, one_weight, vi)
                return vi

            n = tf.shape(sw)[0]
            vs = tf.tile(v[None], [n, 1])
            out = tf.vectorized_map(one, (x, y, vs), fallback_to_while_loop=True)
            return tf.reduce_sum(out * sw[:, None], axis=0)

        def per_example_hvp(x, y, vs):
            def one(args):
                xi, yi, vi = args
                xi = tf.nest.map_structure(lambda t: t[None], xi)
                yi = tf.nest.map_structure(lambda t: t[None], yi)
                return hvp_sum(xi, yi, tf.ones([1], tf.float32), vi)[0]

            return tf.vectorized_map(one, (x, y, vs), fallback_to_while_loop=True)

        sw_spec = tf.TensorSpec([None], tf.float32)
        v_spec = tf.TensorSpec([dim], tf.float32)
        vs_spec = tf.TensorSpec([None, dim], tf.float32)
        kw = {"jit_compile": True} if jit else {}
        self.hvp = tf.function(
            hvp_sum, input_signature=[x_spec, y_spec, sw_spec, v_spec], **kw
        )
        self.grad = tf.function(
            grad_sum, input_signature=[x_spec, y_spec, sw_spec], **kw
        )
        self.loss = tf.function(
            loss_sum, input_signature=[x_spec, y_spec, sw_spec], **kw
        )
        self.per_example_hvp = tf.function(
            per_example_hvp, input_signature=[x_spec, y_spec, vs_spec], **kw
        )
        self._per_example_power = per_example_power
        self._signature = [x_spec, y_spec, sw_spec, v_spec]
        self._powers: dict[int, Any] = {}
        self._kw = kw

    def power(self, k: int):
        if k not in self._powers:
            self._powers[k] = tf.function(
                lambda x, y, sw, v: self._per_example_power(x, y, sw, v, k),
                input_signature=self._signature,
                **self._kw,
            )
        return self._powers[k]


def _functions(model, per_example_loss, training, batch, jit, masked) -> _Functions:
    x, y = batch[0], batch[1]
    x_spec = tf.nest.map_structure(_spec, x)
    y_spec = tf.nest.map_structure(_spec, y)
    variables = model.trainable_variables
    key = (
        id(per_example_loss.identity),
        training,
        jit,
        tuple(id(v) for v in variables),
        tuple(id(m) for m in kernel_masks(variables)) if masked else None,
        repr(x_spec),
        repr(y_spec),
    )
    per_model = _CACHE.setdefault(model, {})
    if key not in per_model:
        functions = _Functions(
            model, per_example_loss, training, x_spec, y_spec, jit, masked
        )
        # Keep the loss object alive so that its id stays unique.
        per_model[key] = (functions, per_example_loss.identity)
    return per_model[key][0]


class CurvatureOperator:
    """Hessian products of ``model``'s mean loss over a fixed data set.

    ```python
    op = CurvatureOperator(model, (x, y))
    hv = op.hvp(v)                 # H v, v a float64 vector of length op.dim
    m2v = op.moment(v, 2)          # mean_i H_i^2 v
    gap = op.moment_gap(v, 2)      # (M_2 - H^2) v
    ```

    Args:
        model: a built Keras model (any `keras.Model`, `SAMModel` included).
        data: ``(x, y)`` or ``(x, y, sample_weight)`` arrays, or a
            `tf.data.Dataset` of such batches. The loss is
            ``sum_i w_i f_i / n`` over all n examples (Keras' weighting).
        loss: loss object, function or name; default the compiled loss.
        training: call the model in training mode (default False: batch
            norm in inference mode, no dropout).
        batch_size: examples per product call when ``data`` are arrays
            (default: all at once).
        chunk_size: examples vectorized together for per-example products.
        jit_compile: XLA-compile the products (off by default: XLA's second
            derivative of max pooling is wrong).
        masked: on a pruned model (`keras_sam.sparsity`), restrict the
            curvature to the unpruned weights, the ones training moves:
            products are ``P H P v`` and ``mean_i (P H_i P)^k v`` with P
            zeroing the pruned coordinates (default True; no effect on a
            dense model).
    """

    def __init__(
        self,
        model: keras.Model,
        data: Any,
        *,
        loss: Any = None,
        training: bool = False,
        batch_size: int | None = None,
        chunk_size: int = 16,
        jit_compile: bool = False,
        masked: bool = True,
    ):
        if not isinstance(model, keras.Model):
            raise ValueError(
                f"`model` must be a keras.Model, got {type(model).__name__}."
            )
        training = _check_bool("training", training)
        jit_compile = _check_bool("jit_compile", jit_compile)
        masked = _check_bool("masked", masked)
        self.chunk_size = _check_int("chunk_size", chunk_size)
        self.batches = as_batches(data, batch_size)
        if not model.built or not model.trainable_variables:
            raise ValueError("`model` must be built and have trainable weights.")
        self.model = model
        self.num_examples = sum(b[3] for b in self.batches)
        per_example_loss = resolve_loss(model, loss)
        self._fn = _functions(
            model, per_example_loss, training, self.batches[0], jit_compile, masked
        )
        self.dim = self._fn.dim
        self.num_products = 0  # H v products (per-example products counted per k)

    def _vector(self, v) -> tf.Tensor:
        v = np.asarray(v, dtype=np.float64).reshape(-1)
        if v.shape != (self.dim,):
            raise ValueError(f"`v` must have shape ({self.dim},), got {v.shape}.")
        return tf.constant(v.astype(np.float32))

    def hvp(self, v: np.ndarray) -> np.ndarray:
        """``H v`` with H the Hessian of the mean loss."""
        tv = self._vector(v)
        total = np.zeros(self.dim)
        for x, y, sw, _ in self.batches:
            total += self._fn.hvp(x, y, sw, tv)[0].numpy()
        self.num_products += 1
        return total / self.num_examples

    def gradient(self) -> tuple[float, np.ndarray]:
        """``(mean loss, gradient of the mean loss)``."""
        loss, total = 0.0, np.zeros(self.dim)
        for x, y, sw, _ in self.batches:
            g, value = self._fn.grad(x, y, sw)
            total += g.numpy()
            loss += float(value)
        return loss / self.num_examples, total / self.num_examples

    def loss(self) -> float:
        """Mean loss over the data."""
        return sum(float(self._fn.loss(x, y, sw)) for x, y, sw, _ in self.batches) / (
            self.num_examples
        )

    def _chunks(self):
        c = self.chunk_size
        for x, y, sw, n in self.batches:
            for start in range(0, n, c):
                yield tf.nest.map_structure(lambda t, s=start: t[s : s + c], (x, y, sw))

    def moment(self, v: np.ndarray, k: int) -> np.ndarray:
        """``M_k v = mean_i H_i^k v`` (per-example Hessians, vectorized)."""
        k = _check_int("k", k)
        tv = self._vector(v)
        fn = self._fn.power(k)
        total = np.zeros(self.dim)
        for x, y, sw in self._chunks():
            total += fn(x, y, sw, tv).numpy()
        self.num_products += k
        return total / self.num_examples

    def power(self, v: np.ndarray, k: int) -> np.ndarray:
        """``H^k v``."""
        k = _check_int("k", k)
        for _ in range(k):
            v = self.hvp(v)
        return v

    def moment_gap(self, v: np.ndarray, k: int) -> np.ndarray:
        """``(M_k - H^k) v``."""
        return self.moment(v, k) - self.power(v, k)

    def per_example_hvp(self, v: np.ndarray) -> np.ndarray:
        """``H_i v`` for every example i, shape ``(n, dim)`` (unweighted)."""
        tv = self._vector(v)
        rows = []
        for x, y, sw in self._chunks():
            vs = tf.tile(tv[None], [tf.shape(sw)[0], 1])
            rows.append(self._fn.per_example_hvp(x, y, vs).numpy())
        return np.concatenate(rows).astype(np.float64)

    def per_example_hvp_looped(self, v: np.ndarray) -> np.ndarray:
        """Like `per_example_hvp`, one example per call (for comparison)."""
        tv = self._vector(v)
        one = tf.ones([1], tf.float32)
        rows = []
        for x, y, _, n in self.batches:
            for i in range(n):
                xi, yi = tf.nest.map_structure(lambda t, i=i: t[i : i + 1], (x, y))
                rows.append(self._fn.hvp(xi, yi, one, tv)[0].numpy())
        return np.stack(rows).astype(np.float64)

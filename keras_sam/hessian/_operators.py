"""Curvature operators of a Keras model's loss on a fixed data set.

``CurvatureOperator(model, data)`` maps flat float64 NumPy vectors to
``H v`` (H the Hessian of the mean loss w.r.t. the trainable weights),
``M_k v = mean_i H_i^k v`` (per-example Hessians, vectorized across examples)
and ``H^k v``. Products are computed in float32 by reverse-over-reverse
differentiation in `tf.function`s traced once per model / loss / input
signature (None batch dimension) and reused; sums over batches are float64.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_sam._compat import flatten_layers
from keras_sam._validation import boolean, one_of, positive_int
from keras_sam.hessian._losses import BatchLoss
from keras_sam.sparsity._masks import kernel_masks

# model -> {key: traced functions}. The functions hold the model only through
# a weak reference, so the cache does not keep models alive.
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

_DATA_HELP = (
    "`data` must be a tuple (x, y) or (x, y, sample_weight) of arrays, or a "
    "tf.data.Dataset yielding such tuples as batches"
)


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
    batch_size = positive_int(batch_size, "batch_size", allow_none=True)
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


def _spec(t):
    return tf.TensorSpec([None, *t.shape[1:]], t.dtype)


# Layers whose per-example products `tf.vectorized_map` gets wrong or dies
# on: keras.ops.einsum's reshaping fast path (EinsumDense, attention) and
# the recurrent while-loops. They take the looped path without a try.
_NOT_VECTORIZABLE = (
    keras.layers.EinsumDense,
    keras.layers.MultiHeadAttention,
    keras.layers.RNN,
    keras.layers.Bidirectional,
)


@contextlib.contextmanager
def _quiet_tensorflow_logger():
    # pfor logs the whole graph of an op it cannot convert at ERROR level
    # before raising; the failure only means "use the looped path".
    logger = logging.getLogger("tensorflow")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _dense(t):
    # Embedding gradients come as IndexedSlices.
    return tf.convert_to_tensor(t)


def _one(structure, i=None):
    """Example i of a batch (``i=None``: the leading axis added back)."""
    if i is None:
        return tf.nest.map_structure(lambda t: t[None], structure)
    return tf.nest.map_structure(lambda t: t[i : i + 1], structure)


class _Functions:
    """The traced functions of one model / loss / signature."""

    def __init__(
        self,
        model,
        batch_loss,
        training,
        x_spec,
        y_spec,
        jit,
        masked,
        weighted,
        forward,
    ):
        model_ref = weakref.ref(model)
        variables = list(model.trainable_variables)
        self.dim = int(sum(np.prod(v.shape) for v in variables))
        dim = self.dim
        zero = tf.UnconnectedGradients.ZERO
        masks = kernel_masks(variables) if masked else [None] * len(variables)
        collect = batch_loss.regularization

        def flat(tensors):
            return tf.concat(
                [tf.reshape(tf.cast(_dense(t), tf.float32), [-1]) for t in tensors], 0
            )

        def unflat(vector):
            parts, start = [], 0
            for v in variables:
                size = int(np.prod(v.shape))
                parts.append(tf.reshape(vector[start : start + size], v.shape))
                start += size
            return parts

        def loss_sum(x, y, sw, params=None):
            # sum_i sw_i f_i = n * (Keras' batch loss), as a function of
            # ``params`` (tensors standing for the trainable weights; their
            # reads when None). Every product runs in a StatelessScope on the
            # model state read at its start: batch-norm statistics and the
            # seed states of stochastic layers (dropout, sampling) are
            # neither updated nor advanced, so each product sees the same
            # function (the same noise).
            model = model_ref()
            if params is None:
                params = [v.value for v in variables]
            trainable = {id(v) for v in variables}
            state = list(zip(variables, params)) + [
                (v, v.value) for v in model.variables if id(v) not in trainable
            ]
            with keras.StatelessScope(state_mapping=state, collect_losses=collect):
                y_pred = model(x, training=training)
                value = batch_loss(y, y_pred, sw if weighted else None)
            n = tf.shape(tf.nest.flatten(y_pred)[0])[0]
            if weighted:
                return value * tf.cast(n, tf.float32)
            # Unweighted data: the same sum, sample weights applied here.
            return value * tf.reduce_sum(sw)

        def project(tensors):
            # P t: pruned coordinates (KernelMask zeros) set to zero.
            return [
                t if m is None else tf.cast(t, tf.float32) * tf.cast(m, tf.float32)
                for t, m in zip(tensors, masks)
            ]

        def weights():
            return [v.value for v in variables]

        def hvp_sum(x, y, sw, v):
            # Reverse over reverse: works through every layer and under pfor.
            params = weights()
            with tf.GradientTape() as outer:
                outer.watch(params)
                with tf.GradientTape() as inner:
                    inner.watch(params)
                    loss = loss_sum(x, y, sw, params)
                grads = inner.gradient(loss, params, unconnected_gradients=zero)
                gv = tf.add_n(
                    [
                        tf.reduce_sum(tf.cast(_dense(g), tf.float32) * p)
                        for g, p in zip(grads, project(unflat(v)))
                    ]
                )
            hv = outer.gradient(gv, params, unconnected_gradients=zero)
            return flat(project(hv)), loss

        def forward_hvp_sum(x, y, sw, v):
            # Forward over reverse (the directional derivative of the
            # gradient): about 30% faster per product than reverse over
            # reverse, but its first trace takes several times longer.
            params = weights()
            tangents = [tf.cast(t, p.dtype) for t, p in zip(project(unflat(v)), params)]
            with tf.autodiff.ForwardAccumulator(params, tangents) as accumulator:
                with tf.GradientTape() as tape:
                    tape.watch(params)
                    loss = loss_sum(x, y, sw, params)
                grads = [
                    _dense(g)
                    for g in tape.gradient(loss, params, unconnected_gradients=zero)
                ]
            hv = accumulator.jvp(grads, unconnected_gradients=zero)
            return flat(project(hv)), loss

        def grad_sum(x, y, sw):
            params = weights()
            with tf.GradientTape() as tape:
                tape.watch(params)
                loss = loss_sum(x, y, sw, params)
            grads = tape.gradient(loss, params, unconnected_gradients=zero)
            return flat(project(grads)), loss

        one_weight = tf.ones([1], tf.float32)

        def example_power(xi, yi, v, k):
            # H_i^k v for one example (batch of one).
            for _ in range(k):
                v, _ = hvp_sum(xi, yi, one_weight, v)
            return v

        def vectorized_rows(x, y, v, k):
            # H_i^k v for every example of the chunk, by pfor. No while-loop
            # fallback: an op pfor cannot convert raises, and the looped path
            # is used instead.
            n = tf.shape(tf.nest.flatten(x)[0])[0]
            return tf.vectorized_map(
                lambda a: example_power(_one(a[0]), _one(a[1]), a[2], k),
                (x, y, tf.tile(v[None], [n, 1])),
                fallback_to_while_loop=False,
            )

        def looped_rows(x, y, v, k):
            n = tf.shape(tf.nest.flatten(x)[0])[0]
            return tf.map_fn(
                lambda i: example_power(_one(x, i), _one(y, i), v, k),
                tf.range(n),
                fn_output_signature=tf.TensorSpec([dim], tf.float32),
            )

        sw_spec = tf.TensorSpec([None], tf.float32)
        v_spec = tf.TensorSpec([dim], tf.float32)
        # No autograph: the traced code has no data-dependent Python control
        # flow, and converting the model call cost most of the trace time.
        kw = {"jit_compile": True, "autograph": False} if jit else {"autograph": False}
        hvp_signature = [x_spec, y_spec, sw_spec, v_spec]
        self._hvps = [tf.function(hvp_sum, input_signature=hvp_signature, **kw)]
        if forward:
            self._hvps.insert(
                0, tf.function(forward_hvp_sum, input_signature=hvp_signature, **kw)
            )
        self.grad = tf.function(
            grad_sum, input_signature=[x_spec, y_spec, sw_spec], **kw
        )
        self.loss = tf.function(
            loss_sum, input_signature=[x_spec, y_spec, sw_spec], **kw
        )
        self._rows = {"vectorized": vectorized_rows, "looped": looped_rows}
        self._signature = [x_spec, y_spec, sw_spec, v_spec]
        self._powers: dict[tuple[str, int], Any] = {}
        self._row_fns: dict[str, Any] = {}
        self._kw = kw
        # None: not yet decided (checked on the first per-example product).
        self.vectorized: bool | None = None
        if any(isinstance(layer, _NOT_VECTORIZABLE) for layer in flatten_layers(model)):
            self.vectorized = False

    def hvp(self, x, y, sw, v):
        """``(sum_i sw_i H_i v, sum_i sw_i f_i)``: forward over reverse, or
        reverse over reverse where a layer has no forward-mode rule."""
        while True:
            try:
                return self._hvps[0](x, y, sw, v)
            except (ValueError, TypeError, NotImplementedError, LookupError):
                if len(self._hvps) == 1:
                    raise
                self._hvps.pop(0)

    def power(self, k: int, path: str):
        """``(x, y, sw, v) -> sum_i sw_i H_i^k v`` on ``path``."""
        if (path, k) not in self._powers:
            rows = self._rows[path]
            self._powers[path, k] = tf.function(
                lambda x, y, sw, v: tf.reduce_sum(
                    rows(x, y, v, k) * sw[:, None], axis=0
                ),
                input_signature=self._signature,
                **self._kw,
            )
        return self._powers[path, k]

    def rows(self, path: str):
        """``(x, y, sw, v) -> [H_i v for each i]`` on ``path``."""
        if path not in self._row_fns:
            rows = self._rows[path]
            self._row_fns[path] = tf.function(
                lambda x, y, sw, v: rows(x, y, v, 1),
                input_signature=self._signature,
                **self._kw,
            )
        return self._row_fns[path]

    def decide(self, x, y, sw, v) -> bool:
        """Whether the vectorized path may be used: it must trace and agree
        with the looped one on this chunk (one product each)."""
        if self.vectorized is None:
            expected = self.power(1, "looped")(x, y, sw, v).numpy()
            try:
                with _quiet_tensorflow_logger():
                    got = self.power(1, "vectorized")(x, y, sw, v).numpy()
            except (ValueError, TypeError, NotImplementedError, tf.errors.OpError):
                self.vectorized = False
            else:
                scale = max(np.abs(expected).max(), np.finfo(np.float32).tiny)
                error = np.abs(got - expected).max() / scale
                self.vectorized = bool(np.isfinite(error) and error <= 1e-4)
        return self.vectorized


def _functions(
    model, batch_loss, training, batch, jit, masked, weighted, forward
) -> _Functions:
    x, y = batch[0], batch[1]
    x_spec = tf.nest.map_structure(_spec, x)
    y_spec = tf.nest.map_structure(_spec, y)
    variables = model.trainable_variables
    key = (
        id(batch_loss.loss),
        repr(batch_loss.loss_weights),
        batch_loss.regularization,
        training,
        jit,
        weighted,
        forward,
        tuple(id(v) for v in variables),
        tuple(id(m) for m in kernel_masks(variables)) if masked else None,
        repr(x_spec),
        repr(y_spec),
    )
    per_model = _CACHE.setdefault(model, {})
    if key not in per_model:
        functions = _Functions(
            model, batch_loss, training, x_spec, y_spec, jit, masked, weighted, forward
        )
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
    ```

    The loss is ``sum_i w_i f_i / n`` over all n examples, f_i the compiled
    loss of example i as `fit` computes it (every output, ``loss_weights``,
    Keras' shape handling) and w_i its sample weight (times its class
    weight). Each product sees the model state as it is when the product
    starts and changes none of it: batch-norm statistics are not updated
    and stochastic layers draw the same noise in every product.

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
        chunk_size: examples vectorized together for per-example products.
        vectorize: per-example products: None (default) vectorizes with
            `tf.vectorized_map` where the model allows it and the first
            chunk's result equals the looped one, else loops over the
            examples in a `tf.while_loop`; False always loops; True
            vectorizes without the check.
        jit_compile: XLA-compile the products (off by default: XLA's second
            derivative of max pooling is wrong).
        masked: on a pruned model (`keras_sam.sparsity`), restrict the
            curvature to the unpruned weights, the ones training moves:
            products are ``P H P v`` and ``mean_i (P H_i P)^k v`` with P
            zeroing the pruned coordinates (default True; no effect on a
            dense model).
        forward_over_reverse: compute ``H v`` forward over reverse
            (``tf.autodiff.ForwardAccumulator`` on the gradient): about 30%
            faster per product on an MLP, but the first call traces for
            several seconds instead of about one (default False: reverse
            over reverse). Per-example products are always reverse over
            reverse.
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
        chunk_size: int = 16,
        vectorize: bool | None = None,
        jit_compile: bool = False,
        masked: bool = True,
        forward_over_reverse: bool = False,
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
        if vectorize is not None:
            vectorize = boolean(vectorize, "vectorize")
        self.chunk_size = positive_int(chunk_size, "chunk_size")
        self.batches = as_batches(data, batch_size)
        if class_weight is not None:
            self.batches = _apply_class_weight(self.batches, class_weight)
        if not model.built or not model.trainable_variables:
            raise ValueError("`model` must be built and have trainable weights.")
        self.model = model
        self.num_examples = sum(b[3] for b in self.batches)
        batch_loss = BatchLoss(model, loss, loss_weights, regularization)
        weighted = any(bool(tf.reduce_any(b[2] != 1.0)) for b in self.batches)
        self._fn = _functions(
            model,
            batch_loss,
            training,
            self.batches[0],
            jit_compile,
            masked,
            weighted,
            forward,
        )
        self._vectorize = vectorize
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
        for chunk in self._chunks():
            chosen = path or self._path(chunk, tv)
            total += self._fn.power(k, chosen)(*chunk, tv).numpy()
        return total

    def moment(self, v: np.ndarray, k: int) -> np.ndarray:
        """``M_k v = sum_i w_i H_i^k v / n`` (per-example Hessians)."""
        k = positive_int(k, "k")
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
        """``(M_k - H^k) v``."""
        return self.moment(v, k) - self.power(v, k)

    def per_example_hvp(self, v: np.ndarray, path: str | None = None) -> np.ndarray:
        """``H_i v`` for every example i, shape ``(n, dim)`` (unweighted).

        ``path``: ``"vectorized"`` or ``"looped"`` to force one (default:
        the operator's choice)."""
        path = one_of(path, "path", (None, "vectorized", "looped"))
        tv = self._vector(v)
        rows = []
        for chunk in self._chunks():
            chosen = path or self._path(chunk, tv)
            rows.append(self._fn.rows(chosen)(*chunk, tv).numpy())
        return np.concatenate(rows).astype(np.float64)

    def per_example_hvp_looped(self, v: np.ndarray) -> np.ndarray:
        """`per_example_hvp` on the looped path (for comparison)."""
        return self.per_example_hvp(v, path="looped")


def _apply_class_weight(batches: list[tuple], class_weight: Any) -> list[tuple]:
    """Sample weights times ``class_weight[class]`` (Keras' rule: the arg-max
    of one-hot labels, else the rounded label)."""
    if not isinstance(class_weight, dict):
        raise ValueError(
            f"`class_weight` must be a dict {{class: weight}}, got {class_weight!r}."
        )
    out = []
    for x, y, sw, n in batches:
        if tf.nest.is_nested(y):
            raise ValueError("`class_weight` needs a single-output `y`.")
        labels = y.numpy()
        if labels.ndim > 1:
            labels = labels.argmax(-1) if labels.shape[-1] != 1 else labels[..., 0]
        labels = np.round(labels).astype(int)
        factors = np.array([class_weight.get(int(c), 1.0) for c in labels], "float32")
        out.append((x, y, sw * factors, n))
    return out

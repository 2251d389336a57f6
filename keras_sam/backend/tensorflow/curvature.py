"""Curvature products on the TensorFlow backend (for
`keras_sam.hessian.CurvatureOperator`).

`Functions` is the interface every backend's ``curvature`` module offers
the operator: ``dim``; ``tensors(structure)`` (NumPy to this backend);
``hvp(x, y, sw, v) -> (sum_i sw_i H_i v, sum_i sw_i f_i)``; ``grad``;
``loss``; ``power(k, path)`` and ``rows(path)`` (per-example products on the
``"vectorized"`` or ``"looped"`` path); ``decide(x, y, sw, v)`` and
``vectorized`` (the path choice). Products are flat float32 vectors.

Here: reverse-over-reverse (or, on request, forward-over-reverse)
differentiation in `tf.function`s traced once per model / loss / input
signature (None batch dimension). ``drive`` runs a whole solver in one
call: the loss and its gradient once, then a `tf.while_loop` of second
backward passes through a persistent tape, the solver called back through
`tf.py_function` (not under XLA). Per-example products are vectorized with
`tf.vectorized_map` (pfor) where the layers allow it and the first chunk
agrees with the looped path (`tf.map_fn`); pfor gets keras.ops.einsum's
reshaping fast path wrong and dies on recurrent while-loops, so those
layers loop without a try.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_sam._compat import exact_tensorflow_moments, flatten_layers
from keras_sam.sparsity._masks import kernel_masks

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


class _exact:  # noqa: N801 (used as a function wrapper)
    """``function`` (a `tf.function`) traced and run with Keras's
    normalization moments on a plain variance: Keras's own `tf.nn.moments`
    drops a term of the second derivative (see
    `keras_sam._compat.exact_tensorflow_moments`). Other attributes are the
    function's (``experimental_get_tracing_count``)."""

    def __init__(self, function):
        self._function = function

    def __call__(self, *args):
        with exact_tensorflow_moments():
            return self._function(*args)

    def __getattr__(self, name):
        return getattr(self._function, name)


def _dense(t):
    # Embedding gradients come as IndexedSlices.
    return tf.convert_to_tensor(t)


def _one(structure, i=None):
    """Example i of a batch (``i=None``: the leading axis added back)."""
    if i is None:
        return tf.nest.map_structure(lambda t: t[None], structure)
    return tf.nest.map_structure(lambda t: t[i : i + 1], structure)


def _spec(array):
    return tf.TensorSpec([None, *array.shape[1:]], tf.as_dtype(array.dtype))


class Functions:
    """The traced functions of one model / loss / signature."""

    paths = ("vectorized", "looped")
    #: Whether the operator pads per-example chunks to one size: no, the
    #: signatures have a None batch dimension (no retrace per size).
    pad_chunks = False

    def __init__(
        self,
        model,
        batch_loss,
        training,
        x_example,
        y_example,
        sw_example,
        jit,
        masked,
        weighted,
        forward,
    ):
        x_spec = tf.nest.map_structure(_spec, x_example)
        y_spec = tf.nest.map_structure(_spec, y_example)
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

        def shared_products(x, y, sw, v=None):
            # The loss and its gradient once; then, in a loop, ``H v`` as
            # the gradient of ``g . v`` (a persistent tape: only the second
            # backward pass is repeated), each next ``v`` from the solver
            # (`step`, a Python callback) until it returns none. Without
            # ``v``, the solver is sent the gradient first and answers with
            # the first ``v``.
            params = weights()
            with tf.GradientTape(persistent=True) as outer:
                outer.watch(params)
                with tf.GradientTape() as inner:
                    inner.watch(params)
                    loss = loss_sum(x, y, sw, params)
                grads = [
                    tf.cast(_dense(g), tf.float32)
                    for g in inner.gradient(loss, params, unconnected_gradients=zero)
                ]

            def ask(vector):
                following, done = tf.py_function(
                    self._step, [vector], [tf.float32, tf.bool]
                )
                following.set_shape([dim])
                done.set_shape([])
                return following, done

            def product(v, done):
                hv = outer.gradient(
                    grads,
                    params,
                    output_gradients=project(unflat(v)),
                    unconnected_gradients=zero,
                )
                return ask(flat(project(hv)))

            if v is None:
                start = ask(flat(project(grads)))
            else:
                start = (v, tf.constant(False))
            final = tf.while_loop(lambda v, done: tf.logical_not(done), product, start)
            return final[1]

        def grad_sum(x, y, sw):
            params = weights()
            with tf.GradientTape() as tape:
                tape.watch(params)
                loss = loss_sum(x, y, sw, params)
            grads = tape.gradient(loss, params, unconnected_gradients=zero)
            return flat(project(grads)), loss

        # Per-token weights (rank > 1) weight the tokens inside each
        # example's loss; per-example weights weight the examples' products.
        per_token = len(sw_example.shape) > 1

        def example_power(xi, yi, swi, v, k):
            # H_i^k v for one example (batch of one): its loss and gradient
            # once, then k second backward passes through a persistent tape.
            weight = swi if per_token else tf.ones([1], tf.float32)
            params = weights()
            with tf.GradientTape(persistent=k > 1) as outer:
                outer.watch(params)
                with tf.GradientTape() as inner:
                    inner.watch(params)
                    loss = loss_sum(xi, yi, weight, params)
                grads = [
                    tf.cast(_dense(g), tf.float32)
                    for g in inner.gradient(loss, params, unconnected_gradients=zero)
                ]
            for _ in range(k):
                hv = outer.gradient(
                    grads,
                    params,
                    output_gradients=project(unflat(v)),
                    unconnected_gradients=zero,
                )
                v = flat(project(hv))
            return v

        def vectorized_rows(x, y, sw, v, k):
            # H_i^k v for every example of the chunk, by pfor. No while-loop
            # fallback: an op pfor cannot convert raises, and the looped path
            # is used instead.
            n = tf.shape(tf.nest.flatten(x)[0])[0]
            return tf.vectorized_map(
                lambda a: example_power(_one(a[0]), _one(a[1]), _one(a[2]), a[3], k),
                (x, y, sw, tf.tile(v[None], [n, 1])),
                fallback_to_while_loop=False,
            )

        def looped_rows(x, y, sw, v, k):
            n = tf.shape(tf.nest.flatten(x)[0])[0]
            return tf.map_fn(
                lambda i: example_power(_one(x, i), _one(y, i), _one(sw, i), v, k),
                tf.range(n),
                fn_output_signature=tf.TensorSpec([dim], tf.float32),
            )

        def frequencies(sw):
            # How often each example counts in the per-example sums.
            if per_token:
                return tf.ones(tf.shape(sw)[:1], tf.float32)
            return sw

        self._frequencies = frequencies
        sw_spec = _spec(sw_example)
        v_spec = tf.TensorSpec([dim], tf.float32)
        # No autograph: the traced code has no data-dependent Python control
        # flow, and converting the model call cost most of the trace time.
        kw = {"jit_compile": True, "autograph": False} if jit else {"autograph": False}
        hvp_signature = [x_spec, y_spec, sw_spec, v_spec]
        self._hvps = [_exact(tf.function(hvp_sum, input_signature=hvp_signature, **kw))]
        if forward:
            self._hvps.insert(
                0,
                _exact(
                    tf.function(forward_hvp_sum, input_signature=hvp_signature, **kw)
                ),
            )
        # The solver's callback goes through the graph, so no XLA for it.
        if jit or forward:
            self._shared = self._shared_from_gradient = None
        else:
            self._shared = _exact(
                tf.function(shared_products, input_signature=hvp_signature, **kw)
            )
            self._shared_from_gradient = _exact(
                tf.function(shared_products, input_signature=hvp_signature[:3], **kw)
            )
        self._callback = None
        self.grad = _exact(
            tf.function(grad_sum, input_signature=[x_spec, y_spec, sw_spec], **kw)
        )
        self.loss = _exact(
            tf.function(loss_sum, input_signature=[x_spec, y_spec, sw_spec], **kw)
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

    @staticmethod
    def tensors(structure):
        """NumPy arrays (any nesting) as TensorFlow tensors."""
        return tf.nest.map_structure(tf.convert_to_tensor, structure)

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

    def _step(self, hv):
        following = self._callback(hv.numpy())
        if following is None:
            return tf.zeros([self.dim], tf.float32), tf.constant(True)
        return tf.constant(following), tf.constant(False)

    def drive(self, x, y, sw, v, step) -> bool:
        """Products ``sum_i sw_i H_i v`` sharing one forward and backward
        pass: ``step(product) -> next v (float32 NumPy) or None``, starting
        from ``v`` (None: ``step`` is sent the gradient ``sum_i sw_i g_i``
        first and returns the first ``v``). False (no step taken) where the
        loop cannot be traced: the operator then calls `hvp` per step."""
        if self._shared is None:
            return False
        taken = []

        def counted(hv):
            taken.append(None)
            return step(hv)

        self._callback = counted
        try:
            if v is None:
                self._shared_from_gradient(x, y, sw)
            else:
                self._shared(x, y, sw, tf.constant(v))
        except (ValueError, TypeError, NotImplementedError, LookupError):
            if taken:
                raise
            # The loop does not trace for this model.
            self._shared = self._shared_from_gradient = None
            return False
        finally:
            self._callback = None
        return True

    def power(self, k: int, path: str):
        """``(x, y, sw, v) -> sum_i sw_i H_i^k v`` on ``path``."""
        if (path, k) not in self._powers:
            rows, frequencies = self._rows[path], self._frequencies
            self._powers[path, k] = _exact(
                tf.function(
                    lambda x, y, sw, v: tf.reduce_sum(
                        rows(x, y, sw, v, k) * frequencies(sw)[:, None], axis=0
                    ),
                    input_signature=self._signature,
                    **self._kw,
                )
            )
        return self._powers[path, k]

    def rows(self, path: str):
        """``(x, y, sw, v) -> [H_i v for each i]`` on ``path``."""
        if path not in self._row_fns:
            rows = self._rows[path]
            self._row_fns[path] = _exact(
                tf.function(
                    lambda x, y, sw, v: rows(x, y, sw, v, 1),
                    input_signature=self._signature,
                    **self._kw,
                )
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

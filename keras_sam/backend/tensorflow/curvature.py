"""Curvature products on the TensorFlow backend: the autodiff of
`keras_sam.hessian._functions.CurvatureFunctions` (the interface; the
loss, flattening and mask projection are the base's).

Here: reverse-over-reverse (or, on request, forward-over-reverse)
differentiation in `tf.function`s traced once per model / loss / input
signature (None batch dimension). ``drive`` runs a whole solver in one
call: the loss and its gradient once, then a `tf.while_loop` of second
backward passes through a persistent tape, the solver called back through
`tf.py_function` (not under XLA). Per-example products are vectorized with
`tf.vectorized_map` (pfor) where the layers allow it and the first chunk
agrees with the looped path (`tf.map_fn`); pfor dies on recurrent
while-loops, so those layers loop without a try. pfor gets keras.ops.einsum's
reshape/matmul rewrite wrong, so the vectorized products trace with one
``tf.einsum`` instead (`keras_sam._compat.vectorizable_tensorflow_einsum`):
EinsumDense and attention vectorize.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import keras
import tensorflow as tf

from keras_sam._compat import (
    exact_tensorflow_moments,
    flatten_layers,
    vectorizable_tensorflow_einsum,
)
from keras_sam.hessian._functions import CurvatureFunctions

# Layers whose per-example products `tf.vectorized_map` dies on: the
# recurrent while-loops. They take the looped path without a try.
_NOT_VECTORIZABLE = (keras.layers.RNN, keras.layers.Bidirectional)


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
    `keras_sam._compat.exact_tensorflow_moments`); with ``vectorized``,
    ``keras.ops.einsum`` as one ``tf.einsum`` too (pfor gets Keras's rewrite
    wrong: `keras_sam._compat.vectorizable_tensorflow_einsum`). Other
    attributes are the function's (``experimental_get_tracing_count``)."""

    def __init__(self, function, vectorized=False):
        self._function = function
        self._vectorized = vectorized

    def __call__(self, *args):
        einsum = (
            vectorizable_tensorflow_einsum()
            if self._vectorized
            else contextlib.nullcontext()
        )
        with exact_tensorflow_moments(), einsum:
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


class Functions(CurvatureFunctions):
    """The traced functions of one model / loss / signature."""

    vectorize_errors = (ValueError, TypeError, NotImplementedError, tf.errors.OpError)

    def __init__(self, model, batch_loss, settings, x_example, y_example, sw_example):
        super().__init__(model, batch_loss, settings, x_example, y_example, sw_example)
        x_spec = tf.nest.map_structure(_spec, x_example)
        y_spec = tf.nest.map_structure(_spec, y_example)
        dim = self.dim
        zero = tf.UnconnectedGradients.ZERO
        jit, forward = settings.jit_compile, settings.forward_over_reverse
        flat, unflat = self._flat, self._unflat

        def loss_sum(x, y, sw, params=None):
            # The variables' values read inside the traced function.
            if params is None:
                params = weights()
            return self._loss_sum(params, self._state_values(), x, y, sw)

        def project(tensors):
            return self._project(tensors, self._mask_values())

        def weights():
            return [v.value for v in self._variables]

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

        def ggn_sum(x, y, sw, v):
            # J^T Q J v by reverse mode only: J v as the derivative of the
            # (linear) J^T u in u, Q (J v) as the gradient of the loss's
            # output gradient along J v, J^T of that by the model's tape.
            params = weights()
            with tf.GradientTape(persistent=True) as model_tape:
                model_tape.watch(params)
                y_pred = self._outputs(params, self._state_values(), x)
            preds = tf.nest.flatten(y_pred)
            dummies = [tf.zeros_like(p) for p in preds]
            with tf.GradientTape() as dual:
                dual.watch(dummies)
                jtu = model_tape.gradient(
                    preds, params, output_gradients=dummies, unconnected_gradients=zero
                )
                jtu_v = tf.add_n(
                    [
                        tf.reduce_sum(tf.cast(_dense(g), tf.float32) * t)
                        for g, t in zip(jtu, project(unflat(v)))
                    ]
                )
            jv = dual.gradient(jtu_v, dummies, unconnected_gradients=zero)
            zs = [tf.stop_gradient(p) for p in preds]
            with tf.GradientTape() as outer:
                outer.watch(zs)
                with tf.GradientTape() as inner:
                    inner.watch(zs)
                    loss = self._output_loss_sum(
                        y, tf.nest.pack_sequence_as(y_pred, zs), sw
                    )
                gz = inner.gradient(loss, zs, unconnected_gradients=zero)
                gz_jv = tf.add_n(
                    [tf.reduce_sum(g * tf.cast(j, g.dtype)) for g, j in zip(gz, jv)]
                )
            qjv = outer.gradient(gz_jv, zs, unconnected_gradients=zero)
            gv = model_tape.gradient(
                preds, params, output_gradients=qjv, unconnected_gradients=zero
            )
            del model_tape
            return flat(project(gv)), loss

        def grad_sum(x, y, sw):
            params = weights()
            with tf.GradientTape() as tape:
                tape.watch(params)
                loss = loss_sum(x, y, sw, params)
            grads = tape.gradient(loss, params, unconnected_gradients=zero)
            return flat(project(grads)), loss

        # Per-token weights (rank > 1) weight the tokens inside each
        # example's loss; per-example weights weight the examples' products.
        per_token = settings.per_token

        def example_power(xi, yi, swi, v, k, center=None):
            # H_i^k v for one example (batch of one): its loss and gradient
            # once, then k second backward passes through a persistent tape
            # (with ``center``, k = 2: H_i (H_i v - center)).
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
                if center is not None:
                    v, center = v - center, None
            return v

        def vectorized_rows(x, y, sw, v, k, center=None):
            # H_i^k v for every example of the chunk, by pfor. No while-loop
            # fallback: an op pfor cannot convert raises, and the looped path
            # is used instead.
            # ``v`` and ``center`` are loop invariants (not tiled: no
            # (n, dim) copy of them).
            return tf.vectorized_map(
                lambda a: example_power(
                    _one(a[0]), _one(a[1]), _one(a[2]), v, k, center
                ),
                (x, y, sw),
                fallback_to_while_loop=False,
            )

        def looped_rows(x, y, sw, v, k, center=None):
            n = tf.shape(tf.nest.flatten(x)[0])[0]
            return tf.map_fn(
                lambda i: example_power(
                    _one(x, i), _one(y, i), _one(sw, i), v, k, center
                ),
                tf.range(n),
                fn_output_signature=tf.TensorSpec([dim], tf.float32),
            )

        def fused_gap_sum(x, y, sw, v, center):
            # sum_i c_i H_i (H_i v - center) without a second per-example
            # product: the rows u_i = H_i v - center, then the gradient in
            # the shared weights of sum_i c_i D f_i [u_i] (a forward-mode
            # directional derivative per example along its own row, under
            # pfor; one backward pass over the batch does the sum).
            rows = tf.stop_gradient(vectorized_rows(x, y, sw, v, 1) - center[None, :])
            params = weights()

            def directional(a):
                xi, yi, swi, ui = a
                weight = _one(swi) if per_token else tf.ones([1], tf.float32)
                tangents = [
                    tf.cast(t, p.dtype) for t, p in zip(project(unflat(ui)), params)
                ]
                with tf.autodiff.ForwardAccumulator(params, tangents) as accumulator:
                    loss = loss_sum(_one(xi), _one(yi), weight, params)
                return tf.cast(
                    accumulator.jvp(loss, unconnected_gradients=zero), tf.float32
                )

            with tf.GradientTape() as tape:
                tape.watch(params)
                along = tf.vectorized_map(
                    directional, (x, y, sw, rows), fallback_to_while_loop=False
                )
                total = tf.reduce_sum(tf.reshape(along, [-1]) * self._frequencies(sw))
            gradient = tape.gradient(total, params, unconnected_gradients=zero)
            return flat(project(gradient))

        factors = self._factors

        def structured_gap_sum(x, y, sw, v, center):
            # sum_i c_i H_i (H_i v - center) from the factored layers' inputs and
            # errors (`LayerFactors`): the errors the gradient of the
            # unweighted loss sum in zero probes on the pre-activations, the
            # rows' factors by forward mode along v, then the gradient of
            # the factored sum_i c_i <g_i, u_i> (no per-example array).
            params = weights()
            unit = sw if per_token else tf.ones_like(sw)

            def live():
                made = [[] for _ in factors.layers]

                def probe(i, z):
                    made[i].append(tf.zeros_like(z))
                    tape.watch(made[i][-1])
                    return made[i][-1]

                with tf.GradientTape() as tape:
                    loss, inputs, _ = factors.record(
                        lambda: loss_sum(x, y, unit, params), probe
                    )
                deltas = tape.gradient(loss, made, unconnected_gradients=zero)
                return [
                    (factors.tokens(a), factors.tokens(d))
                    for a, d in zip(inputs, deltas)
                ]

            tangents = [tf.cast(t, p.dtype) for t, p in zip(unflat(v), params)]
            with tf.autodiff.ForwardAccumulator(params, tangents) as accumulator:
                primal = live()
            rows = [
                [
                    tf.stop_gradient(t)
                    for t in (a, accumulator.jvp(a, zero), d, accumulator.jvp(d, zero))
                ]
                for a, d in primal
            ]
            with tf.GradientTape() as outer:
                outer.watch(params)
                total = factors.contraction(
                    live(), rows, unflat(center), self._frequencies(sw)
                )
            return flat(outer.gradient(total, params, unconnected_gradients=zero))

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
        self._grad = _exact(
            tf.function(grad_sum, input_signature=[x_spec, y_spec, sw_spec], **kw)
        )
        self._ggn = _exact(tf.function(ggn_sum, input_signature=hvp_signature, **kw))
        self._loss = _exact(
            tf.function(loss_sum, input_signature=[x_spec, y_spec, sw_spec], **kw)
        )
        self._rows = {"vectorized": vectorized_rows, "looped": looped_rows}
        self._fused_gap_sum = fused_gap_sum
        self._signature = [x_spec, y_spec, sw_spec, v_spec]
        self._powers: dict[tuple[str, int], Any] = {}
        self._square_gaps: dict[str, Any] = {}
        self._row_fns: dict[str, Any] = {}
        self._kw = kw
        self._structured_gap = (
            None
            if factors is None
            else _exact(
                tf.function(
                    structured_gap_sum, input_signature=[*hvp_signature, v_spec], **kw
                )
            )
        )
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

    def ggn(self, x, y, sw, v):
        """``(sum_i sw_i G_i v, sum_i sw_i f_i)``, Gauss-Newton."""
        return self._ggn(x, y, sw, v)

    def grad(self, x, y, sw):
        return self._grad(x, y, sw)

    def loss(self, x, y, sw):
        return self._loss(x, y, sw)

    def _flat(self, tensors):
        # Embedding gradients come as IndexedSlices.
        return super()._flat([None if t is None else _dense(t) for t in tensors])

    def example_powers(self, k, path, x, y, sw, v):
        """``[H_i^k v]``: one example's gradient once, then k second
        backward passes, by `tf.vectorized_map` or `tf.map_fn`."""
        return self._rows[path](x, y, sw, v, k)

    def _compiled(self, function, path: str):
        return _exact(
            tf.function(function, input_signature=self._signature, **self._kw),
            vectorized=path == "vectorized",
        )

    def power(self, k: int, path: str):
        """``(x, y, sw, v) -> sum_i sw_i H_i^k v`` on ``path``, traced."""
        if (path, k) not in self._powers:
            self._powers[path, k] = self._compiled(
                lambda x, y, sw, v: self.power_sum(k, path, x, y, sw, v), path
            )
        return self._powers[path, k]

    #: Whether the vectorized s_2 step takes the fused form (None: decided
    #: on the first chunk, see `square_gap`).
    _fused: bool | None = None

    #: Whether the vectorized s_2 step takes the layer factors (None:
    #: decided on the first chunk, see `square_gap`).
    _structured: bool | None = None

    def square_gap(self, path: str):
        """``(x, y, sw, v, center) -> sum_i sw_i H_i (H_i v - center)`` on
        ``path``, traced. Vectorized, for a model of factored layers from
        per-layer factors (`LayerFactors`: no per-example array), else by
        the fused step (the rows, then one batch gradient of ``sum_i c_i D
        f_i [H_i v - center]``: no second per-example product), each where
        it agrees on the first chunk to 1e-4 with the step it replaces
        (checked once; an op without a forward-mode rule keeps the two
        products)."""
        if path != "vectorized":
            return self._two_products(path)
        if self._factors is not None and self._structured is not False:
            return self._structured_or_checked
        if self._fused is not False:
            return self._fused_or_checked
        return self._two_products(path)

    def _structured_or_checked(self, x, y, sw, v, center):
        if self._structured:
            return self._structured_gap(x, y, sw, v, center)
        per_example = (
            self._two_products("vectorized")
            if self._fused is False
            else self._fused_or_checked
        )
        expected = per_example(x, y, sw, v, center)
        self._structured = self.trial_agrees(
            lambda: self._structured_gap(x, y, sw, v, center), expected, (LookupError,)
        )
        return expected

    def _fused_or_checked(self, x, y, sw, v, center):
        if self._fused:
            return self._fused_gap(x, y, sw, v, center)
        expected = self._two_products("vectorized")(x, y, sw, v, center)

        def fused():
            with _quiet_tensorflow_logger():
                return self._fused_gap(x, y, sw, v, center)

        self._fused = self.trial_agrees(fused, expected, (LookupError,))
        return expected

    @property
    def _fused_gap(self):
        if "fused" not in self._square_gaps:
            self._square_gaps["fused"] = _exact(
                tf.function(
                    self._fused_gap_sum,
                    input_signature=[*self._signature, self._signature[-1]],
                    **self._kw,
                ),
                vectorized=True,
            )
        return self._square_gaps["fused"]

    def _two_products(self, path: str):
        if path not in self._square_gaps:
            self._square_gaps[path] = _exact(
                tf.function(
                    lambda x, y, sw, v, center: self.square_gap_sum(
                        path, x, y, sw, v, center
                    ),
                    input_signature=[*self._signature, self._signature[-1]],
                    **self._kw,
                ),
                vectorized=path == "vectorized",
            )
        return self._square_gaps[path]

    def square_gap_sum(self, path, x, y, sw, v, center):
        """``sum_i sw_i H_i (H_i v - center)``: one example's gradient once,
        then two second backward passes, the rows centered between them."""
        rows = self._rows[path](x, y, sw, v, 2, center)
        return tf.reduce_sum(rows * self._frequencies(sw)[:, None], axis=0)

    def rows(self, path: str):
        """``(x, y, sw, v) -> [H_i v for each i]`` on ``path``, traced."""
        if path not in self._row_fns:
            self._row_fns[path] = self._compiled(
                lambda x, y, sw, v: self.example_powers(1, path, x, y, sw, v), path
            )
        return self._row_fns[path]

    def _trial(self, path: str):
        # The summed product (traced for the moments anyway).
        return self.power(1, path)

    def _vectorized_trial(self):
        return _quiet_tensorflow_logger()

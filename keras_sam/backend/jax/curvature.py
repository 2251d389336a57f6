"""Curvature products on the JAX backend: the autodiff of
`keras_sam.hessian._functions.CurvatureFunctions` (the interface; the
loss, flattening and mask projection are the base's).

The loss is a pure function of the trainable values: the model is called in
a `keras.StatelessScope` that maps the trainable variables to those values
and every other variable (batch-norm statistics, seed generators, masks) to
its value read when the product starts; the scope's updates are dropped, so
no statistic is updated and no seed advanced (every product sees the same
dropout noise, as on TensorFlow). ``model.losses`` (``regularization=True``)
are the scope's collected losses.

- ``H v``: forward over reverse, `jax.jvp` of `jax.value_and_grad`, always
  (``forward_over_reverse`` is accepted and has no effect); ``drive`` runs
  a whole solver in one jitted call: `jax.linearize` of the gradient once,
  then a `lax.while_loop` of its tangent map, the solver called back through
  `io_callback`;
- per-example products ``H_i^k v``: one compiled ``[H_i v_i]`` applied k
  times, by `jax.vmap` over one-example batches
  (the ``"vectorized"`` path, the default: vmap batches every primitive
  the zoo of the tests uses, recurrent scans and einsum included, so no
  model needs a fallback), or `jax.lax.map` (``"looped"``, ``vectorize=
  False``);
- the s_2 step for a model of factored layers (`LayerFactors`): one
  `jax.linearize` of the layers' inputs and errors, its transpose for the
  gradient; a solver's steps on one chunk run in one jitted loop
  (`drive_square_gap`, linearized once);
- every product is `jax.jit`-compiled (``jit_compile`` has no effect),
  once per input shape: the operator pads chunks to one size
  (``pad_chunks``), but a last partial batch (``batch_size``) compiles
  once more; ``loss()`` reuses the product's program.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import io_callback
from keras import tree

from keras_sam.hessian._functions import CurvatureFunctions


def _first(structure):
    return tree.flatten(structure)[0]


def _one(structure):
    """One example with its batch axis added back."""
    return tree.map_structure(lambda t: t[None], structure)


class Functions(CurvatureFunctions):
    """The jitted products of one model / loss."""

    #: Whether the operator pads per-example chunks to one size (a new
    #: batch size costs a compilation).
    pad_chunks = True

    def __init__(self, model, batch_loss, settings, x_example, y_example, sw_example):
        super().__init__(model, batch_loss, settings, x_example, y_example, sw_example)
        flat, unflat, project = self._flat, self._unflat, self._project
        loss_sum = self._loss_sum

        def hvp_sum(values, x, y, sw, v):
            params, state, mask_values = values
            tangents = [
                t.astype(p.dtype)
                for t, p in zip(project(unflat(v), mask_values), params)
            ]
            gradient = jax.value_and_grad(lambda p: loss_sum(p, state, x, y, sw))
            (loss, _), (_, hv) = jax.jvp(gradient, (params,), (tangents,))
            return flat(project(hv, mask_values)), loss

        def shared_products(values, x, y, sw, v=None):
            # Linearized once (the loss, its gradient and the residuals the
            # tangent map needs, computed outside the loop); then, in a
            # loop, only the tangent map ``v -> H v``, each next ``v`` from
            # the solver (`_step`, a host callback) until it returns none.
            # Without ``v``, the solver is sent the gradient first and
            # answers with the first ``v``.
            params, state, mask_values = values
            gradient = jax.grad(lambda p: loss_sum(p, state, x, y, sw))
            grads, tangent_map = jax.linearize(gradient, params)
            shapes = (
                jax.ShapeDtypeStruct((self.dim,), jnp.float32),
                jax.ShapeDtypeStruct((), jnp.bool_),
            )

            # Ordered: an unordered callback inside the loop deadlocks from
            # the second call on where XLA's CPU thread pool has one thread
            # (a process pinned to one CPU, e.g. a one-CPU SLURM task).
            ask = functools.partial(io_callback, self._step, shapes, ordered=True)

            def product(carry):
                tangents = [
                    t.astype(p.dtype)
                    for t, p in zip(project(unflat(carry[0]), mask_values), params)
                ]
                hv = flat(project(tangent_map(tangents), mask_values))
                return ask(hv)

            if v is None:
                start = ask(flat(project(grads, mask_values)))
            else:
                start = (v, jnp.bool_(False))
            return jax.lax.while_loop(
                lambda carry: jnp.logical_not(carry[1]), product, start
            )[1]

        def grad_sum(values, x, y, sw):
            params, state, mask_values = values
            loss, grads = jax.value_and_grad(lambda p: loss_sum(p, state, x, y, sw))(
                params
            )
            return flat(project(grads, mask_values)), loss

        def ggn_sum(values, x, y, sw, v):
            # J^T Q J v: J v forward, Q (J v) as the derivative of the
            # loss's gradient in the outputs along it, J^T by the pullback.
            params, state, mask_values = values
            tangents = [
                t.astype(p.dtype)
                for t, p in zip(project(unflat(v), mask_values), params)
            ]

            def outputs(p):
                return self._outputs(p, state, x)

            y_pred, pullback = jax.vjp(outputs, params)
            _, jv = jax.jvp(outputs, (params,), (tangents,))
            gradient = jax.value_and_grad(lambda z: self._output_loss_sum(y, z, sw))
            (loss, _), (_, qjv) = jax.jvp(gradient, (y_pred,), (jv,))
            (gv,) = pullback(qjv)
            return flat(project(gv, mask_values)), loss

        # Per-token weights (rank > 1) weight the tokens inside each
        # example's loss; per-example weights weight the examples' products.
        per_token = settings.per_token
        one_weight = jnp.ones([1], jnp.float32)

        def example_hvp(values, xi, yi, swi, vi):
            # H_i v_i for one example (xi, yi, swi without their batch axis).
            weight = _one(swi) if per_token else one_weight
            return hvp_sum(values, _one(xi), _one(yi), weight, vi)[0]

        def vectorized_rows(values, x, y, sw, vs):
            return jax.vmap(lambda *a: example_hvp(values, *a))(x, y, sw, vs)

        def example_power(values, k, xi, yi, swi, v):
            # H_i^k v for one example: its gradient linearized once, the
            # tangent map applied k times (k products for the cost of one
            # forward and backward pass and k tangent passes).
            params, state, mask_values = values
            weight = _one(swi) if per_token else one_weight
            _, tangent_map = jax.linearize(
                jax.grad(lambda p: loss_sum(p, state, _one(xi), _one(yi), weight)),
                params,
            )
            for _ in range(k):
                tangents = [
                    t.astype(p.dtype)
                    for t, p in zip(project(unflat(v), mask_values), params)
                ]
                v = flat(project(tangent_map(tangents), mask_values))
            return v

        def vectorized_powers(values, x, y, sw, v, k):
            return jax.vmap(
                lambda *a: example_power(values, k, *a), in_axes=(0, 0, 0, None)
            )(x, y, sw, v)

        def vectorized_power_sum(values, x, y, sw, v, k, frequencies):
            # sum_i c_i H_i^k v without a per-example result of the last
            # application: u_i = H_i^(k-1) v per example (linearized once),
            # then sum_i c_i H_i u_i as the gradient in the (shared) weights
            # of sum_i c_i <g_i, u_i>, the directional derivatives of the
            # examples' losses along their own u_i: one batch backward pass
            # whose per-example outer products XLA contracts over the batch.
            if k > 2:
                us = vectorized_powers(values, x, y, sw, v, k - 1)
            else:
                us = first_rows(values, x, y, sw, v)
            return fused_sum(values, x, y, sw, us, frequencies)

        def first_rows(values, x, y, sw, v):
            # [H_i v] for a vector shared by every example.
            return jax.vmap(
                lambda *a: example_power(values, 1, *a), in_axes=(0, 0, 0, None)
            )(x, y, sw, v)

        def vectorized_square_gap(values, x, y, sw, v, center, frequencies):
            # sum_i c_i H_i (H_i v - center): the fused last application
            # along the rows, less its derivative along the shared center
            # (the centered rows themselves are never formed: XLA contracts
            # the rows' per-example outer products without writing them).
            us = first_rows(values, x, y, sw, v)
            return fused_sum(values, x, y, sw, us, frequencies, center)

        def fused_sum(values, x, y, sw, us, frequencies, center=None):
            params, state, mask_values = values

            def directional(p):
                def along(xi, yi, swi, u):
                    weight = _one(swi) if per_token else one_weight
                    tangents = [
                        t.astype(q.dtype)
                        for t, q in zip(project(unflat(u), mask_values), p)
                    ]
                    return jax.jvp(
                        lambda q: loss_sum(q, state, _one(xi), _one(yi), weight),
                        (p,),
                        (tangents,),
                    )[1]

                def one(xi, yi, swi, ui):
                    value = along(xi, yi, swi, ui)
                    if center is not None:
                        value = value - along(xi, yi, swi, center)
                    return value

                return jnp.sum(jax.vmap(one)(x, y, sw, us) * frequencies)

            return flat(project(jax.grad(directional)(params), mask_values))

        factors = self._factors

        def linearized_live(values, x, y, sw):
            # The layers' inputs x and errors d (the gradient of the
            # unweighted loss sum in zero probes on the pre-activations) as
            # a function of the weights, linearized: its primal and tangent
            # map (the transpose of which gives the gradient of the
            # factored sum without a second primal pass).
            params, state, _ = values
            unit = sw if per_token else jnp.ones_like(sw)

            def run(p, probes):
                return factors.record(lambda: loss_sum(p, state, x, y, unit), probes)

            shapes = jax.eval_shape(lambda: run(params, None)[2])
            zeros = jax.tree_util.tree_map(
                lambda s: jnp.zeros(s.shape, s.dtype), shapes
            )

            def live(p):
                def loss_of_probes(probes):
                    value, inputs, _ = run(p, probes)
                    return value, [factors.tokens(c) for c in inputs]

                deltas, xs = jax.grad(loss_of_probes, has_aux=True)(zeros)
                return [(a, factors.tokens(d)) for a, d in zip(xs, deltas)]

            return jax.linearize(live, params)

        def factored_gap(params, primal, along, v, center, frequencies, scale=None):
            # The rows' factors (forward mode along v), then the gradient of
            # the factored sum_i c_i <g_i, u_i> through the transpose.
            # ``center`` None: ``scale * sum_i c_i H_i v`` from the rows.
            tangents = [t.astype(p.dtype) for t, p in zip(unflat(v), params)]
            tangent = along(tangents)
            rows = jax.lax.stop_gradient(
                [(a, da, d, dd) for (a, d), (da, dd) in zip(primal, tangent)]
            )
            if center is None:
                center = factors.batch_tangent(rows, frequencies, len(params))
                center = [scale * t for t in center]
            else:
                center = unflat(center)

            def h(out):
                return factors.contraction(out, rows, center, frequencies)

            (gradient,) = jax.linear_transpose(along, params)(jax.grad(h)(primal))
            return flat(gradient)

        def structured_square_gap(values, x, y, sw, v, center, frequencies):
            primal, along = linearized_live(values, x, y, sw)
            return factored_gap(values[0], primal, along, v, center, frequencies)

        def structured_gap_loop(values, x, y, sw, v, frequencies, scale):
            # `structured_square_gap` in a loop: linearized once, then per
            # step only the tangent map, its transpose and the contraction,
            # the center from the step's rows; each next v from the solver
            # (`_step`, a host callback) until it returns none.
            primal, along = linearized_live(values, x, y, sw)
            shapes = (
                jax.ShapeDtypeStruct((self.dim,), jnp.float32),
                jax.ShapeDtypeStruct((), jnp.bool_),
            )
            ask = functools.partial(io_callback, self._step, shapes, ordered=True)

            def product(carry):
                gap = factored_gap(
                    values[0], primal, along, carry[0], None, frequencies, scale
                )
                return ask(gap)

            return jax.lax.while_loop(
                lambda carry: jnp.logical_not(carry[1]), product, (v, jnp.bool_(False))
            )[1]

        def looped_rows(values, x, y, sw, vs):
            return jax.lax.map(lambda a: example_hvp(values, *a), (x, y, sw, vs))

        self._hvp = jax.jit(hvp_sum)
        self._grad = jax.jit(grad_sum)
        self._ggn = jax.jit(ggn_sum)
        self._shared = jax.jit(shared_products)
        # One compiled per-example product per path, ``[H_i v_i]`` for a
        # matrix of vectors; ``H_i^k v`` applies it k times.
        self._rows = {
            "vectorized": jax.jit(vectorized_rows),
            "looped": jax.jit(looped_rows),
        }
        self._vectorized_powers = jax.jit(vectorized_powers, static_argnums=5)
        self._vectorized_power_sum = jax.jit(vectorized_power_sum, static_argnums=5)
        self._vectorized_square_gap = jax.jit(vectorized_square_gap)
        self._structured_gap = (
            None if factors is None else jax.jit(structured_square_gap)
        )
        self._structured_loop = (
            None if factors is None else jax.jit(structured_gap_loop)
        )
        # `jax.vmap` needs no check (`decide`): always vectorized.
        self.vectorized = True

    @staticmethod
    def tensors(structure):
        """NumPy arrays (any nesting) as JAX arrays."""
        return tree.map_structure(jnp.asarray, structure)

    def hvp(self, x, y, sw, v):
        """``(sum_i sw_i H_i v, sum_i sw_i f_i)``."""
        return self._hvp(self._values(), x, y, sw, v)

    def ggn(self, x, y, sw, v):
        """``(sum_i sw_i G_i v, sum_i sw_i f_i)``, Gauss-Newton."""
        return self._ggn(self._values(), x, y, sw, v)

    def drive(self, x, y, sw, v, step) -> bool:
        """Products ``sum_i sw_i H_i v`` from one linearization:
        ``step(product) -> next v (float32 NumPy) or None``, starting from
        ``v`` (None: ``step`` is sent the gradient ``sum_i sw_i g_i`` first
        and returns the first ``v``)."""
        self._callback = step
        try:
            start = None if v is None else jnp.asarray(v)
            jax.block_until_ready(self._shared(self._values(), x, y, sw, start))
        finally:
            self._callback = None
        return True

    def grad(self, x, y, sw):
        return self._grad(self._values(), x, y, sw)

    def loss(self, x, y, sw):
        # From the product's program (every instrument compiles it): one
        # compilation less than a program of its own.
        return self.hvp(x, y, sw, jnp.zeros([self.dim], jnp.float32))[1]

    def power_sum(self, k, path, x, y, sw, v):
        """``sum_i sw_i H_i^k v``; vectorized, the last application as one
        batch gradient (no per-example result)."""
        if path == "vectorized" and k > 1:
            return self._vectorized_power_sum(
                self._values(), x, y, sw, v, k, self._frequencies(sw)
            )
        return super().power_sum(k, path, x, y, sw, v)

    #: Whether the s_2 step takes the per-layer factors (None: decided on
    #: the first vectorized chunk, see `square_gap_sum`).
    _structured: bool | None = None

    def square_gap_sum(self, path, x, y, sw, v, center):
        """``sum_i sw_i H_i (H_i v - center)``; vectorized, the last
        application as one batch gradient, or, for a model of factored layers,
        from per-layer factors (`LayerFactors`) where they agree with that
        on the first chunk (checked once)."""
        if path != "vectorized":
            return super().square_gap_sum(path, x, y, sw, v, center)
        arguments = (self._values(), x, y, sw, v, center, self._frequencies(sw))
        if self._structured_gap is None or self._structured is False:
            return self._vectorized_square_gap(*arguments)
        if self._structured is None:
            expected = self._vectorized_square_gap(*arguments)
            self._structured = self.trial_agrees(
                lambda: self._structured_gap(*arguments), expected
            )
            return expected
        return self._structured_gap(*arguments)

    def drive_square_gap(self, chunks, v, scale, step) -> bool:
        """The factored s_2 steps (where `square_gap_sum` took them) on one
        chunk in one jitted call: the layers' ``(x, d)`` linearized once,
        then a `lax.while_loop` of the step, its center from its own rows,
        the solver called back through `io_callback`. Not on several
        chunks (each would be one more copy of the loop's program)."""
        if not self._structured or len(chunks) != 1:
            return False
        ((x, y, sw),) = chunks
        self._callback = step
        try:
            frequencies = self._frequencies(sw)
            jax.block_until_ready(
                self._structured_loop(
                    self._values(), x, y, sw, jnp.asarray(v), frequencies, scale
                )
            )
        finally:
            self._callback = None
        return True

    def example_products(self, path, x, y, sw, vs):
        """``[H_i vs_i]``, one compiled product per path."""
        return self._rows[path](self._values(), x, y, sw, vs)

    def example_powers(self, k, path, x, y, sw, v):
        """``[H_i^k v]``: on the vectorized path, one linearization per
        example applied k times; else k per-example products."""
        values = self._values()
        if path == "vectorized" and k > 1:
            return self._vectorized_powers(values, x, y, sw, v, k)
        vs = jnp.broadcast_to(v, (_first(x).shape[0], v.shape[0]))
        for _ in range(k):
            vs = self._rows[path](values, x, y, sw, vs)
        return vs

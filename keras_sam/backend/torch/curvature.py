"""Curvature products on the PyTorch backend: the autodiff of
`keras_sam.hessian._functions.CurvatureFunctions` (the interface; the
loss, flattening and mask projection are the base's).

The loss is a function of leaf tensors standing for the trainable
variables: detached aliases of their values (``requires_grad`` set on the
alias, never on or through the variable), mapped in with a
`keras.StatelessScope` together with every other variable's value read when
the product starts; the scope's updates are dropped, so no batch-norm
statistic is updated and no seed advanced (every product sees the same
dropout noise, as on TensorFlow; an unseeded Dropout, which Keras's torch
backend runs on torch's global generator, sees that generator forked and
seeded alike in every product). ``model.losses``
(``regularization=True``) are the scope's collected losses.

- ``H v``: reverse over reverse (double backward: `torch.autograd.grad`
  with ``create_graph=True``, then the gradient of ``g . v``);
  ``forward_over_reverse`` and ``jit_compile`` are accepted and have no
  effect (eager); ``drive`` runs a whole solver on one ``create_graph``
  gradient, one more backward pass per product. Attention runs on the math kernel of
  `scaled_dot_product_attention` (its fused CPU kernel has no double
  backward).
- per-example products ``H_i^k v``: `torch.func.vmap` of a forward-over-
  reverse product (`torch.func.jvp` of `torch.func.grad`) over
  one-example batches (``"vectorized"``), or a Python loop of the double
  backward over them (``"looped"``). vmap goes through most Keras torch
  layers (Dense, batch norm, Embedding, LSTM/GRU, attention) but not all:
  DepthwiseConv2D / SeparableConv2D after a convolution clone their
  input with a memory format vmap refuses, Keras's L1L2 regularizer
  (ActivityRegularization) adds in place, and random ops (dropout in
  training mode) are refused under vmap. So,
  as on TensorFlow, the first chunk decides (``vectorize=None``): the
  vectorized path is used if it runs and agrees with the looped one.
- the s_2 step ``sum_i c_i H_i (H_i v - H v)``, vectorized: for a model
  of factored layers (`LayerFactors`), from per-layer factors
  (`Functions._structured_gap`), else fused (`Functions._fused_gap`: the
  rows reverse over forward, then one batch gradient), each where it
  agrees with two per-example products on the first chunk. A factored
  step is two backward passes through a chunk's retained graph of the
  layers' inputs and errors (`_TransposedGraph`); a solver's steps share
  one graph per chunk (`drive_square_gap`).
"""

from __future__ import annotations

import collections
import contextlib
import functools

import keras
import torch
from keras import tree

from keras_sam.hessian._functions import CurvatureFunctions

#: The seed of torch's global generator inside every product.
_NOISE_SEED = 0


def _twice_differentiable_attention():
    # The fused CPU attention kernels (flash) that
    # `torch.nn.functional.scaled_dot_product_attention` picks by default
    # have no double backward; the math kernel is plain differentiable ops.
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


@contextlib.contextmanager
def _fixed_global_generator():
    # Keras's torch Dropout without a seed draws from torch's global
    # generator: every product runs on a fork of it seeded alike (the same
    # noise in every product), and the caller's stream is not advanced.
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(_NOISE_SEED)
        yield


def _layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    # torch.nn.functional.layer_norm in plain differentiable ops.
    axes = tuple(range(-len(normalized_shape), 0))
    mean = x.mean(axes, keepdim=True)
    variance = ((x - mean) ** 2).mean(axes, keepdim=True)
    out = (x - mean) * torch.rsqrt(variance + eps)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out


def _rms_norm(x, normalized_shape, weight=None, eps=None):
    # torch.nn.functional.rms_norm in plain differentiable ops.
    axes = tuple(range(-len(normalized_shape), 0))
    if eps is None:
        eps = torch.finfo(x.dtype).eps
    out = x * torch.rsqrt((x * x).mean(axes, keepdim=True) + eps)
    return out if weight is None else out * weight


class _PlainNormalization(torch.overrides.TorchFunctionMode):
    """Inside the fused products only: ``F.layer_norm`` and ``F.rms_norm``
    (Keras's torch LayerNormalization / RMSNormalization kernels) as plain
    ops. The kernels' derivatives of a per-example product, differentiated
    once more under `torch.func.vmap`, are wrong (40% off on the zoo's
    transformer block); plain ops agree with the dense Hessians. A function
    mode, not a patch: it holds on this thread inside the ``with`` only."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.layer_norm:
            return _layer_norm(*args, **kwargs)
        if func is torch.nn.functional.rms_norm:
            return _rms_norm(*args, **kwargs)
        return func(*args, **kwargs)


def _centered_rows(rows, center):
    """``rows - center``, in place where a row tensor is its own memory
    (a new weight-sized (n, dim) tensor costs its page faults): not an
    expanded view (an unbatched vmap result), nor memory another row
    shares (autograd may hand one gradient tensor to two weights)."""
    counts = collections.Counter(r.untyped_storage().data_ptr() for r in rows)
    return tuple(
        r.sub_(c)
        if r.is_contiguous() and counts[r.untyped_storage().data_ptr()] == 1
        else r - c
        for r, c in zip(rows, center)
    )


def _first(structure):
    return tree.flatten(structure)[0]


def _one(structure):
    """One example with its batch axis added back."""
    return tree.map_structure(lambda t: t[None], structure)


def _slice(structure, i):
    return tree.map_structure(lambda t: t[i : i + 1], structure)


class _TransposedGraph:
    """One chunk's retained graphs: the factored layers' ``(x, d)`` at the
    leaves ``params`` (``outputs``, `Functions._live`, built with
    ``create_graph``) and their transpose ``J^T w`` in dummies ``w``, so
    that every factored s_2 step on the chunk is two backward passes and no
    forward (`rows`, then `gradient`)."""

    def __init__(self, factors, params, outputs, frequencies):
        self.factors = factors
        self.params = params
        self.outputs = outputs
        self.primal = [t.detach() for t in outputs]
        self.pairs = list(zip(self.primal[::2], self.primal[1::2]))
        self.alive = [i for i, t in enumerate(outputs) if t.requires_grad]
        self.frequencies = frequencies
        with torch.enable_grad():
            self.dummies = [
                torch.zeros_like(outputs[i], requires_grad=True) for i in self.alive
            ]
            self.transposed = torch.autograd.grad(
                [outputs[i] for i in self.alive],
                params,
                grad_outputs=self.dummies,
                create_graph=True,
                allow_unused=True,
            )
        self.reached = [i for i, t in enumerate(self.transposed) if t is not None]

    def rows(self, parts):
        """``[(x, x', d, d')]`` along v (``parts``: v per variable): ``J v``
        as the gradient of ``<J^T w, v>`` in w."""
        found = torch.autograd.grad(
            [self.transposed[i] for i in self.reached],
            self.dummies,
            grad_outputs=[parts[i] for i in self.reached],
            retain_graph=True,
            allow_unused=True,
        )
        flat = [torch.zeros_like(t) for t in self.primal]
        for i, t in zip(self.alive, found):
            if t is not None:
                flat[i] = t
        return [
            (a, da, d, dd) for (a, d), da, dd in zip(self.pairs, flat[::2], flat[1::2])
        ]

    def gradient(self, rows, center):
        """``sum_i c_i H_i (H_i v - center)``, per variable: ``J^T`` of the
        contraction's gradient in ``(x, d)``."""
        grads = [
            g
            for pair in self.factors.contraction_gradient(
                self.pairs, rows, center, self.frequencies
            )
            for g in pair
        ]
        return list(
            torch.autograd.grad(
                [self.outputs[i] for i in self.alive],
                self.params,
                grad_outputs=[
                    torch.zeros_like(self.primal[i]) if grads[i] is None else grads[i]
                    for i in self.alive
                ],
                retain_graph=True,
                allow_unused=True,
            )
        )


class Functions(CurvatureFunctions):
    """The eager products of one model / loss."""

    def _leaves(self):
        return [v.value.detach().requires_grad_() for v in self._variables]

    def _loss_context(self):
        context = contextlib.ExitStack()
        context.enter_context(_twice_differentiable_attention())
        context.enter_context(_fixed_global_generator())
        return context

    # -- the interface ----------------------------------------------------

    @staticmethod
    def tensors(structure):
        """NumPy arrays (any nesting) as torch tensors on Keras's device."""
        return tree.map_structure(keras.ops.convert_to_tensor, structure)

    def hvp(self, x, y, sw, v):
        """``(sum_i sw_i H_i v, sum_i sw_i f_i)``."""
        with torch.enable_grad():
            params = self._leaves()
            loss = self._loss_sum(params, self._state_values(), x, y, sw)
            grads = torch.autograd.grad(
                loss, params, create_graph=True, allow_unused=True
            )
            masks = self._mask_values()
            tangents = self._project(self._unflat(v), masks)
            products = [
                (g.float() * t).sum()
                for g, t in zip(grads, tangents)
                if g is not None and g.requires_grad
            ]
            if products:
                hv = torch.autograd.grad(sum(products), params, allow_unused=True)
            else:  # the gradient is constant: H = 0
                hv = [None] * len(params)
        return self._flat(self._project(hv, masks)).detach(), loss.detach()

    def ggn(self, x, y, sw, v):
        """``(sum_i sw_i G_i v, sum_i sw_i f_i)``, Gauss-Newton: J v as the
        derivative of the (linear) ``J^T u`` in u, Q (J v) by the loss's
        double backward in the outputs, J^T of that by one more backward."""
        with torch.enable_grad():
            params = self._leaves()
            y_pred = self._outputs(params, self._state_values(), x)
            preds = tree.flatten(y_pred)
            masks = self._mask_values()
            tangents = self._project(self._unflat(v), masks)
            dummies = [torch.zeros_like(p, requires_grad=True) for p in preds]
            jtu = torch.autograd.grad(
                preds,
                params,
                grad_outputs=dummies,
                create_graph=True,
                allow_unused=True,
            )
            jtu_v = [
                (g.float() * t).sum()
                for g, t in zip(jtu, tangents)
                if g is not None and g.requires_grad
            ]
            if jtu_v:
                jv = torch.autograd.grad(
                    sum(jtu_v), dummies, allow_unused=True, retain_graph=True
                )
            else:  # the outputs do not depend on the weights
                jv = [None] * len(preds)
            jv = [torch.zeros_like(p) if j is None else j for p, j in zip(preds, jv)]
            zs = [p.detach().requires_grad_() for p in preds]
            loss = self._output_loss_sum(y, tree.pack_sequence_as(y_pred, zs), sw)
            gz = torch.autograd.grad(loss, zs, create_graph=True, allow_unused=True)
            gz_jv = [
                (g * j.to(g.dtype)).sum()
                for g, j in zip(gz, jv)
                if g is not None and g.requires_grad
            ]
            if gz_jv:
                qjv = torch.autograd.grad(sum(gz_jv), zs, allow_unused=True)
            else:  # the loss is linear in the outputs
                qjv = [None] * len(zs)
            qjv = [torch.zeros_like(z) if q is None else q for z, q in zip(zs, qjv)]
            gv = torch.autograd.grad(preds, params, grad_outputs=qjv, allow_unused=True)
        return self._flat(self._project(gv, masks)).detach(), loss.detach()

    def drive(self, x, y, sw, v, step) -> bool:
        """Products ``sum_i sw_i H_i v`` from one graph of the gradient
        (``create_graph`` once, ``retain_graph`` per product: PyHessian's
        saving): ``step(product) -> next v (float32 NumPy) or None``,
        starting from ``v`` (None: ``step`` is sent the gradient ``sum_i
        sw_i g_i`` first and returns the first ``v``)."""
        with torch.enable_grad():
            params = self._leaves()
            loss = self._loss_sum(params, self._state_values(), x, y, sw)
            grads = torch.autograd.grad(
                loss, params, create_graph=True, allow_unused=True
            )
            live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
            masks = self._mask_values()
            if v is None:
                gradient = self._flat(self._project(grads, masks)).detach()
                v = step(gradient.cpu().numpy())
            while v is not None:
                tangents = self._project(self._unflat(self.tensors(v)), masks)
                if live:
                    hv = torch.autograd.grad(
                        [grads[i].float() for i in live],
                        params,
                        grad_outputs=[tangents[i] for i in live],
                        retain_graph=True,
                        allow_unused=True,
                    )
                else:  # the gradient is constant: H = 0
                    hv = [None] * len(params)
                product = self._flat(self._project(hv, masks)).detach()
                v = step(product.cpu().numpy())
        return True

    def grad(self, x, y, sw):
        with torch.enable_grad():
            params = self._leaves()
            loss = self._loss_sum(params, self._state_values(), x, y, sw)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        masks = self._mask_values()
        return self._flat(self._project(grads, masks)).detach(), loss.detach()

    def loss(self, x, y, sw):
        with torch.no_grad():
            params, state, _ = self._values()
            return self._loss_sum(params, state, x, y, sw)

    def _example_weight(self, swi, device):
        if self.settings.per_token:
            return swi
        return torch.ones([1], dtype=torch.float32, device=device)

    def _looped_rows(self, x, y, sw, vs):
        return torch.stack(
            [
                self.hvp(
                    _slice(x, i),
                    _slice(y, i),
                    self._example_weight(sw[i : i + 1], vs.device),
                    vs[i],
                )[0]
                for i in range(vs.shape[0])
            ]
        )

    def _vectorized_rows(self, x, y, sw, vs):
        from torch.func import grad, jvp, vmap

        params = tuple(v.value.detach() for v in self._variables)
        state, masks = self._state_values(), self._mask_values()

        def example(xi, yi, swi, vi):
            xi, yi = _one(xi), _one(yi)
            weight = self._example_weight(swi[None], vi.device)
            tangents = tuple(self._project(self._unflat(vi), masks))
            _, hv = jvp(
                grad(lambda p: self._loss_sum(list(p), state, xi, yi, weight)),
                (params,),
                (tangents,),
            )
            return self._flat(self._project(list(hv), masks))

        shared = vs.dim() == 1  # one vector for every example
        try:
            return vmap(example, in_dims=(0, 0, 0, None if shared else 0))(x, y, sw, vs)
        except (RuntimeError, NotImplementedError) as error:
            raise ValueError(
                "Per-example products cannot be vectorized with torch.func.vmap "
                f"for this model ({type(error).__name__}: {str(error)[:200]}); "
                "use vectorize=None (decides per model) or vectorize=False."
            ) from error

    def example_products(self, path, x, y, sw, vs):
        """``[H_i vs_i]``: one product per example with its own vector."""
        rows = self._vectorized_rows if path == "vectorized" else self._looped_rows
        with torch.no_grad():
            return rows(x, y, sw, vs).detach()

    #: Whether the vectorized s_2 step takes `_fused_gap` (None: decided on
    #: the first chunk, see `square_gap_sum`).
    _fused: bool | None = None

    #: Whether the vectorized s_2 step takes `_structured_gap` (None:
    #: decided on the first chunk, see `square_gap_sum`).
    _structured: bool | None = None

    def square_gap_sum(self, path, x, y, sw, v, center):
        """``sum_i c_i H_i (H_i v - center)``; vectorized, for a model of
        factored layers from per-layer factors (`_structured_gap`), else by
        `_fused_gap`, each where it agrees on the first chunk with the step
        it replaces (checked once). A factored step builds the chunk's
        graph (`_TransposedGraph`) and takes one step on it (0.07 s against
        the fused step's 0.09 s on a transformer block of 7.5k weights); a
        solver's steps share one graph (`drive_square_gap`, about 0.04 s
        each)."""
        if path != "vectorized" or self._factors is None or self._structured is False:
            return self._per_example_gap(path, x, y, sw, v, center)
        if self._structured is None:
            expected = self._per_example_gap(path, x, y, sw, v, center)
            self._structured = self.trial_agrees(
                lambda: self._structured_gap(x, y, sw, v, center), expected
            )
            return expected
        return self._structured_gap(x, y, sw, v, center)

    def _per_example_gap(self, path, x, y, sw, v, center):
        # The step with per-example rows: fused, or two products.
        if path != "vectorized" or self._fused is False:
            return super().square_gap_sum(path, x, y, sw, v, center)
        if self._fused is None:
            expected = super().square_gap_sum(path, x, y, sw, v, center)
            self._fused = self.trial_agrees(
                lambda: self._fused_gap(x, y, sw, v, center), expected
            )
            return expected
        return self._fused_gap(x, y, sw, v, center)

    def _structured_gap(self, x, y, sw, v, center):
        """``sum_i c_i H_i (H_i v - center)`` from the factored layers' inputs
        and errors (`LayerFactors`): one step on the chunk's graph
        (`_TransposedGraph`, as `drive_square_gap` takes every step)."""
        graph = self._transposed_graph(x, y, sw)
        rows = graph.rows(self._unflat(v))
        return self._flat(graph.gradient(rows, self._unflat(center))).detach()

    def drive_square_gap(self, chunks, v, scale, step) -> bool:
        """The factored s_2 steps (where `square_gap_sum` took them) on one
        graph per chunk of the layers' ``(x, d)`` (`_live`), built once with
        ``create_graph`` together with that of its transpose ``J^T w`` in
        dummies ``w``: per step, the rows' factors ``J v`` are the gradient
        of ``<J^T w, v>`` in w, and the step the gradient of the factored
        sum through ``J^T``: two backward passes per chunk and no forward
        (eager PyTorch spends most of a step running the model's layers in
        Python). The center is ``scale * sum_i c_i H_i v``, summed from
        every chunk's rows before any chunk's second pass."""
        if not self._structured:
            return False
        graphs = [self._transposed_graph(*chunk) for chunk in chunks]
        count = len(self._variables)
        while v is not None:
            parts = self._unflat(self.tensors(v))
            rows = [graph.rows(parts) for graph in graphs]
            center = [0.0] * count
            for graph, chunk_rows in zip(graphs, rows):
                tangent = self._factors.batch_tangent(
                    chunk_rows, graph.frequencies, count
                )
                center = [c + t for c, t in zip(center, tangent)]
            center = [scale * c for c in center]
            total = 0.0
            for graph, chunk_rows in zip(graphs, rows):
                total = total + self._flat(graph.gradient(chunk_rows, center))
            v = step(total.detach().cpu().numpy())
        return True

    def _transposed_graph(self, x, y, sw) -> _TransposedGraph:
        with torch.enable_grad():
            params = self._leaves()
            outputs = [t for pair in self._live(params, x, y, sw) for t in pair]
        return _TransposedGraph(self._factors, params, outputs, self._frequencies(sw))

    def _probe_shapes(self, x, y, sw):
        """The factored layers' probes' ``(shape, dtype)``, per layer and
        call: one no-grad forward per chunk shape (cached: a forward less
        per step)."""
        key = tuple(tuple(t.shape) for t in tree.flatten((x, y, sw)))
        cache = vars(self).setdefault("_probe_shape_cache", {})
        if key not in cache:
            state = self._state_values()
            values = [var.value.detach() for var in self._variables]
            unit = sw if self.settings.per_token else torch.ones_like(sw)
            with torch.no_grad():
                _, _, outputs = self._factors.record(
                    lambda: self._loss_sum(values, state, x, y, unit)
                )
            cache[key] = [[(z.shape, z.dtype) for z in c] for c in outputs]
        return cache[key]

    def _live(self, params, x, y, sw):
        """The factored layers' inputs and errors ``[(x, d)]`` at the leaves
        ``params``, as `LayerFactors.tokens` gives them, differentiable
        (``create_graph``): the errors the gradient of the unweighted loss
        sum in zero probes on the pre-activations."""
        factors = self._factors
        state = self._state_values()
        unit = sw if self.settings.per_token else torch.ones_like(sw)
        probes = [
            [
                torch.zeros(shape, dtype=dtype, device=sw.device, requires_grad=True)
                for shape, dtype in c
            ]
            for c in self._probe_shapes(x, y, sw)
        ]
        value, inputs, _ = factors.record(
            lambda: self._loss_sum(list(params), state, x, y, unit), probes
        )
        flat_probes = [p for c in probes for p in c]
        deltas = iter(torch.autograd.grad(value, flat_probes, create_graph=True))
        return [
            (factors.tokens(c), factors.tokens([next(deltas) for _ in c]))
            for c in inputs
        ]

    def _fused_gap(self, x, y, sw, v, center):
        """``sum_i c_i H_i (H_i v - center)`` in two passes over the chunk,
        without a second per-example result: the rows ``u_i = H_i v -
        center`` (per example, the gradient of the directional derivative
        along v: reverse over forward, no per-example gradient), then one
        batch gradient in the shared weights of ``sum_i c_i D f_i [u_i]``
        (a forward product along each example's own row, then one backward
        pass: the sum over examples is the backward's)."""
        from torch.func import grad, jvp, vmap

        state, masks = self._state_values(), self._mask_values()
        values = tuple(var.value.detach() for var in self._variables)
        along_v = tuple(self._project(self._unflat(v), masks))
        along_center = tuple(self._project(self._unflat(center), masks))

        def example_loss(p, xi, yi, swi):
            weight = self._example_weight(swi[None], swi.device)
            return self._loss_sum(list(p), state, _one(xi), _one(yi), weight)

        def row(xi, yi, swi):
            def directional(p):
                return jvp(lambda q: example_loss(q, xi, yi, swi), (p,), (along_v,))[1]

            return tuple(self._project(list(grad(directional)(values)), masks))

        with _PlainNormalization():
            with torch.no_grad():
                rows = _centered_rows(vmap(row)(x, y, sw), along_center)
            with torch.enable_grad():
                params = tuple(self._leaves())

                def centered(xi, yi, swi, *ri):
                    loss = functools.partial(example_loss, xi=xi, yi=yi, swi=swi)
                    return jvp(loss, (params,), (ri,))[1]

                total = (vmap(centered)(x, y, sw, *rows) * self._frequencies(sw)).sum()
                gradient = torch.autograd.grad(total, params, allow_unused=True)
        return self._flat(self._project(list(gradient), masks)).detach()

    def example_powers(self, k, path, x, y, sw, v):
        """``[H_i^k v]``: k per-example products on ``path``."""
        if path == "vectorized":
            # The first product's vector is shared (not batched under vmap).
            rows, vs = self._vectorized_rows, v
        else:
            rows, vs = self._looped_rows, v.expand(_first(x).shape[0], v.shape[0])
        with torch.no_grad():
            for _ in range(k):
                vs = rows(x, y, sw, vs).detach()
        return vs

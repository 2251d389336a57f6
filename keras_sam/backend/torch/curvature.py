"""Curvature products on the PyTorch backend (for
`keras_sam.hessian.CurvatureOperator`; the interface is described in
`keras_sam.backend.tensorflow.curvature`).

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
"""

from __future__ import annotations

import contextlib
import weakref

import keras
import numpy as np
import torch
from keras import tree

from keras_sam.sparsity._masks import kernel_masks

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


def _first(structure):
    return tree.flatten(structure)[0]


def _one(structure):
    """One example with its batch axis added back."""
    return tree.map_structure(lambda t: t[None], structure)


def _slice(structure, i):
    return tree.map_structure(lambda t: t[i : i + 1], structure)


class Functions:
    """The eager products of one model / loss."""

    paths = ("vectorized", "looped")
    #: Eager: a new batch size costs nothing.
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
        self._model = weakref.ref(model)
        self._variables = list(model.trainable_variables)
        trainable = {id(v) for v in self._variables}
        self._others = [v for v in model.variables if id(v) not in trainable]
        masks = kernel_masks(self._variables) if masked else []
        self._masks = masks or [None] * len(self._variables)
        self._shapes = [tuple(v.shape) for v in self._variables]
        self._sizes = [int(np.prod(s)) for s in self._shapes]
        self.dim = int(sum(self._sizes))
        self._batch_loss = batch_loss
        self._training = training
        self._weighted = weighted
        # Per-token weights (rank > 1) weight the tokens inside each
        # example's loss; per-example weights weight the examples' products.
        self._per_token = len(sw_example.shape) > 1
        # None: not yet decided (checked on the first per-example product).
        self.vectorized: bool | None = None

    # -- pieces -----------------------------------------------------------

    def _leaves(self):
        return [v.value.detach().requires_grad_() for v in self._variables]

    def _loss_sum(self, params, x, y, sw):
        # sum_i sw_i f_i = n * (Keras' batch loss).
        mapping = list(zip(self._variables, params)) + [
            (v, v.value) for v in self._others
        ]
        with (
            keras.StatelessScope(
                state_mapping=mapping, collect_losses=self._batch_loss.regularization
            ),
            _twice_differentiable_attention(),
            _fixed_global_generator(),
        ):
            y_pred = self._model()(x, training=self._training)
            value = self._batch_loss(y, y_pred, sw if self._weighted else None)
        if self._weighted:
            return value * _first(y_pred).shape[0]
        # Unweighted data: the same sum, sample weights applied here.
        return value * torch.sum(sw)

    def _project(self, tensors):
        # P t: pruned coordinates (KernelMask zeros) set to zero.
        return [
            t if m is None else t * m.value.to(t.dtype)
            for t, m in zip(tensors, self._masks)
        ]

    def _unflat(self, vector):
        parts = torch.split(vector, self._sizes)
        return [p.reshape(s) for p, s in zip(parts, self._shapes)]

    @staticmethod
    def _flat(tensors, params):
        return torch.cat(
            [
                (torch.zeros_like(p) if t is None else t).reshape(-1).float()
                for t, p in zip(tensors, params)
            ]
        )

    # -- the interface ----------------------------------------------------

    @staticmethod
    def tensors(structure):
        """NumPy arrays (any nesting) as torch tensors on Keras's device."""
        return tree.map_structure(keras.ops.convert_to_tensor, structure)

    def hvp(self, x, y, sw, v):
        """``(sum_i sw_i H_i v, sum_i sw_i f_i)``."""
        with torch.enable_grad():
            params = self._leaves()
            loss = self._loss_sum(params, x, y, sw)
            grads = torch.autograd.grad(
                loss, params, create_graph=True, allow_unused=True
            )
            tangents = self._project(self._unflat(v))
            products = [
                (g.float() * t).sum()
                for g, t in zip(grads, tangents)
                if g is not None and g.requires_grad
            ]
            if products:
                hv = torch.autograd.grad(sum(products), params, allow_unused=True)
            else:  # the gradient is constant: H = 0
                hv = [None] * len(params)
        return self._flat(self._project(hv), params).detach(), loss.detach()

    def drive(self, x, y, sw, v, step) -> bool:
        """Products ``sum_i sw_i H_i v`` from one graph of the gradient
        (``create_graph`` once, ``retain_graph`` per product: PyHessian's
        saving): ``step(product) -> next v (float32 NumPy) or None``,
        starting from ``v`` (None: ``step`` is sent the gradient ``sum_i
        sw_i g_i`` first and returns the first ``v``)."""
        with torch.enable_grad():
            params = self._leaves()
            loss = self._loss_sum(params, x, y, sw)
            grads = torch.autograd.grad(
                loss, params, create_graph=True, allow_unused=True
            )
            live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
            if v is None:
                gradient = self._flat(self._project(grads), params).detach()
                v = step(gradient.cpu().numpy())
            while v is not None:
                tangents = self._project(self._unflat(self.tensors(v)))
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
                product = self._flat(self._project(hv), params).detach()
                v = step(product.cpu().numpy())
        return True

    def grad(self, x, y, sw):
        with torch.enable_grad():
            params = self._leaves()
            loss = self._loss_sum(params, x, y, sw)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        return self._flat(self._project(grads), params).detach(), loss.detach()

    def loss(self, x, y, sw):
        with torch.no_grad():
            params = [v.value for v in self._variables]
            return self._loss_sum(params, x, y, sw)

    def _example_weight(self, swi, device):
        if self._per_token:
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

        def example(xi, yi, swi, vi):
            xi, yi = _one(xi), _one(yi)
            weight = self._example_weight(swi[None], vi.device)
            tangents = tuple(self._project(self._unflat(vi)))
            _, hv = jvp(
                grad(lambda p: self._loss_sum(list(p), xi, yi, weight)),
                (params,),
                (tangents,),
            )
            return self._flat(self._project(list(hv)), params)

        try:
            return vmap(example)(x, y, sw, vs)
        except (RuntimeError, NotImplementedError) as error:
            raise ValueError(
                "Per-example products cannot be vectorized with torch.func.vmap "
                f"for this model ({type(error).__name__}: {str(error)[:200]}); "
                "use vectorize=None (decides per model) or vectorize=False."
            ) from error

    def _powers(self, k, path, x, y, sw, v):
        rows = self._vectorized_rows if path == "vectorized" else self._looped_rows
        vs = v.expand(_first(x).shape[0], v.shape[0])
        with torch.no_grad():
            for _ in range(k):
                vs = rows(x, y, sw, vs).detach()
        return vs

    def _frequencies(self, sw):
        # How often each example counts in the per-example sums.
        if self._per_token:
            return torch.ones(sw.shape[:1], dtype=torch.float32, device=sw.device)
        return sw

    def power(self, k: int, path: str):
        """``(x, y, sw, v) -> sum_i sw_i H_i^k v`` on ``path``."""
        return lambda x, y, sw, v: torch.sum(
            self._powers(k, path, x, y, sw, v) * self._frequencies(sw)[:, None],
            dim=0,
        )

    def rows(self, path: str):
        """``(x, y, sw, v) -> [H_i v for each i]`` on ``path``."""
        return lambda x, y, sw, v: self._powers(1, path, x, y, sw, v)

    def decide(self, x, y, sw, v) -> bool:
        """Whether the vectorized path may be used: it must run and agree
        with the looped one on this chunk (one product each)."""
        if self.vectorized is None:
            expected = self.rows("looped")(x, y, sw, v).cpu().numpy()
            try:
                got = self.rows("vectorized")(x, y, sw, v).cpu().numpy()
            except (RuntimeError, ValueError, TypeError, NotImplementedError):
                self.vectorized = False
            else:
                scale = max(np.abs(expected).max(), np.finfo(np.float32).tiny)
                error = np.abs(got - expected).max() / scale
                self.vectorized = bool(np.isfinite(error) and error <= 1e-4)
        return self.vectorized

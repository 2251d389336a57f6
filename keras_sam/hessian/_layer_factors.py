"""The s_2 step ``sum_i c_i H_i (H_i v - center)`` from per-layer factors,
for models whose trainable weights all sit in plain Dense, EinsumDense (a
Dense after a reshape), Embedding and LayerNormalization layers. Dense is
the pattern; the other kinds differ in what their calls record and in their
term of the contraction (an Embedding's input Gram is token equality, a
LayerNormalization's rows are formed elementwise).

For a Dense layer with inputs ``x`` (per example, tokens ``t`` on the middle
axes) and pre-activation ``z = x W + b``, example i's gradient is ``g_i =
sum_t x_it (x) d_it`` with ``d = d(sum_j f_j)/dz`` (``f_j`` example j's
loss). A zero probe ``p`` added to ``z`` gives every ``d_i`` at once as the
batch gradient in ``p`` (``z_i`` reaches only ``f_i``). Example i's Hessian
row along ``v``, restricted to W, is the derivative of ``g_i`` along v,
``sum_t (x'_it (x) d_it + x_it (x) d'_it)``: one forward-mode pass of the
function ``weights -> (x, d)`` (batch cost) gives every row as factors,
never as an (in, out) matrix per example. The second application is the
gradient in the weights of ``h = sum_i c_i <g_i, u_i>`` (``u_i = H_i v -
center`` held fixed), which in factors is a per-example Gram of the token
inputs and errors: ``sum_ts (x_it . x'_is)(d_is . d_it) + (x_it . x_is)
(d'_is . d_it)``, less ``sum_t x_it C d_it`` for the center's block C.

This module is the backend-neutral part (which layers qualify, the probe
bookkeeping and the contraction, in `keras.ops`); a backend supplies the
two derivatives (forward mode of ``(x, d)``, the gradient of ``h``).
"""

from __future__ import annotations

import math

import keras
from keras import ops

from keras_sam._compat import (
    flatten_layers,
    own_trainable_variables,
    routed_factor_calls,
)


def _float32(layer) -> bool:
    # No LoRA, quantization or mixed precision.
    policy = layer.dtype_policy
    return (
        not getattr(layer, "lora_enabled", False)
        and policy.quantization_mode is None
        and policy.compute_dtype == "float32"
        and policy.variable_dtype == "float32"
    )


def _own_call(layer, kind) -> bool:
    return isinstance(layer, kind) and type(layer).call is kind.call


def einsum_as_dense(equation):
    """``(leading, contracted)`` axis counts where an EinsumDense equation is
    a Dense after a reshape: the input's leading axes kept in order, its
    trailing ``contracted`` axes the kernel's leading ones (same order), the
    kernel's remaining axes the output's trailing ones. None otherwise
    (ellipses, repeated letters, batched or reordered axes)."""
    if "." in equation or "->" not in equation or equation.count(",") != 1:
        return None
    inputs, rest = equation.replace(" ", "").split(",")
    kernel, output = rest.split("->")
    letters = inputs + kernel
    if len(set(inputs)) != len(inputs) or len(set(kernel)) != len(kernel):
        return None
    if len(set(output)) != len(output) or not set(output) <= set(letters):
        return None
    contracted = "".join(a for a in inputs if a in kernel)
    if not contracted or any(a in output for a in contracted):
        return None
    leading = inputs[: len(inputs) - len(contracted)]
    trailing = kernel[len(contracted) :]
    if (
        not inputs.endswith(contracted)
        or not kernel.startswith(contracted)
        or output != leading + trailing
        or not leading
    ):
        return None
    return len(leading), len(contracted)


class _Kind:
    """One layer's part of the factors: what its routed call records and
    its term of the contraction. ``slots`` its variables' indices."""

    def __init__(self, layer, slots):
        self.layer = layer
        self.slots = slots

    def flat(self, x, z):
        return x, z

    def unflat(self, z_flat, z):
        return z_flat


def _lead_shape(t, lead, last):
    middle = tuple(t.shape[1:lead])
    if None in middle:
        return (ops.shape(t)[0], -1, last)
    return (-1, *middle, last)


class _DenseKind(_Kind):
    """Dense (and EinsumDense after a reshape): ``z = x W + b``."""

    def __init__(self, layer, slots, lead=None, fan_in=None, fan_out=None):
        super().__init__(layer, slots)
        self.lead, self.fan_in, self.fan_out = lead, fan_in, fan_out

    def flat(self, x, z):
        if self.lead is None:
            return x, z
        return (
            ops.reshape(x, _lead_shape(x, self.lead, self.fan_in)),
            ops.reshape(z, _lead_shape(z, self.lead, self.fan_out)),
        )

    def unflat(self, z_flat, z):
        return z_flat if self.lead is None else ops.reshape(z_flat, ops.shape(z))

    def _center_kernel(self, x, d, center):
        # The center's kernel block as (in, out), and whether the Grams route.
        tokens, fan_in, fan_out = x.shape[1], x.shape[2], d.shape[2]
        c_kernel = ops.reshape(center[self.slots[0]], (fan_in, fan_out))
        return c_kernel, LayerFactors.by_gram(tokens, fan_in, fan_out)

    @staticmethod
    def _rows_in_kernel(rows, c_kernel):
        # Many tokens: each example's row in the kernel, formed, less C.
        x0, dx, d0, dd = rows
        return (
            ops.einsum("nsi,nso->nio", dx, d0)
            + ops.einsum("nsi,nso->nio", x0, dd)
            - c_kernel[None]
        )

    @staticmethod
    def _grams(x, d, rows):
        # Per-example Grams of the tokens: the inputs against the rows' x'
        # and x, the errors against the rows' d and d'.
        x0, dx, d0, dd = rows
        return (
            ops.einsum("nti,nsi->nts", x, dx),
            ops.einsum("nti,nsi->nts", x, x0),
            ops.einsum("nto,nso->nts", d, d0),
            ops.einsum("nto,nso->nts", d, dd),
        )

    def term(self, x, d, rows, center):
        dd = rows[3]
        bias = self.slots[1]
        c_kernel, by_gram = self._center_kernel(x, d, center)
        if by_gram:
            grams = self._grams(x, d, rows)
            gram_tangent, gram_inputs, error_primal, error_tangent = grams
            per_example = ops.sum(
                gram_tangent * error_primal + gram_inputs * error_tangent,
                axis=(1, 2),
            )
            per_example = per_example - ops.sum(
                ops.matmul(x, c_kernel) * d, axis=(1, 2)
            )
        else:
            rows_in_kernel = self._rows_in_kernel(rows, c_kernel)
            per_example = ops.einsum("nti,nio,nto->n", x, rows_in_kernel, d)
        if bias is not None:
            c_bias = ops.reshape(center[bias], (d.shape[2],))
            d_sum = ops.sum(d, axis=1)
            per_example = per_example + ops.sum(
                d_sum * (ops.sum(dd, axis=1) - c_bias), axis=1
            )
        return per_example

    def term_gradient(self, x, d, rows, center):
        x0, dx, d0, dd = rows
        bias = self.slots[1]
        c_kernel, by_gram = self._center_kernel(x, d, center)
        if by_gram:
            grams = self._grams(x, d, rows)
            gram_tangent, gram_inputs, error_primal, error_tangent = grams
            grad_x = ops.einsum("nts,nsi->nti", error_primal, dx) + ops.einsum(
                "nts,nsi->nti", error_tangent, x0
            )
            grad_d = ops.einsum("nts,nso->nto", gram_tangent, d0) + ops.einsum(
                "nts,nso->nto", gram_inputs, dd
            )
            grad_x = grad_x - ops.matmul(d, ops.transpose(c_kernel))
            grad_d = grad_d - ops.matmul(x, c_kernel)
        else:
            rows_in_kernel = self._rows_in_kernel(rows, c_kernel)
            grad_x = ops.einsum("nio,nto->nti", rows_in_kernel, d)
            grad_d = ops.einsum("nti,nio->nto", x, rows_in_kernel)
        if bias is not None:
            c_bias = ops.reshape(center[bias], (d.shape[2],))
            grad_d = grad_d + (ops.sum(dd, axis=1) - c_bias)[:, None, :]
        return grad_x, grad_d

    def batch_tangent(self, rows, c):
        x0, dx, d0, dd = rows
        kernel = self.layer.kernel
        inputs = ops.einsum("nti,nto->io", dx, d0 * c) + ops.einsum(
            "nti,nto->io", x0, dd * c
        )
        parts = {self.slots[0]: ops.reshape(inputs, tuple(kernel.shape))}
        if self.slots[1] is not None:
            parts[self.slots[1]] = ops.reshape(
                ops.sum(dd * c, axis=(0, 1)), tuple(self.layer.bias.shape)
            )
        return parts


class _EmbeddingKind(_Kind):
    """Embedding: example i's gradient ``sum_t onehot(id_it) (x) d_it``; the
    ids (recorded as float, shape (n, ..., 1)) do not depend on the
    weights. Its Gram is token equality, the center's term a gather: no
    one-hot of the vocabulary."""

    def flat(self, x, z):
        return ops.cast(x, "float32")[..., None], z

    def _same_and_gathered(self, x, center):
        # Token equality per example (the Gram), and the center's rows at
        # the ids.
        ids = ops.cast(x[..., 0], "int32")
        same = ops.cast(ops.equal(ids[:, :, None], ids[:, None, :]), "float32")
        return same, ops.take(center[self.slots[0]], ids, axis=0)

    def term(self, x, d, rows, center):
        same, gathered = self._same_and_gathered(x, center)
        per_example = ops.sum(
            same * ops.einsum("nto,nso->nts", d, rows[3]), axis=(1, 2)
        )
        return per_example - ops.sum(gathered * d, axis=(1, 2))

    def term_gradient(self, x, d, rows, center):
        same, gathered = self._same_and_gathered(x, center)
        return None, ops.einsum("nts,nso->nto", same, rows[3]) - gathered

    def batch_tangent(self, rows, c):
        x0, _, _, dd = rows
        ids = ops.reshape(ops.cast(x0[..., 0], "int32"), (-1,))
        flat = ops.reshape(dd * c, (-1, dd.shape[-1]))
        table = ops.segment_sum(flat, ids, num_segments=self.layer.input_dim)
        return {self.slots[0]: table}


class _NormalizationKind(_Kind):
    """LayerNormalization's gamma and beta: elementwise, so example i's row
    ``sum_t (x'_it d_it + x_it d'_it)`` (x the normalized inputs) is formed
    directly, (n, features)."""

    def _centered_rows(self, rows, center):
        # Each example's rows in gamma and beta, less the center's (None
        # where the layer has no such weight).
        x0, dx, d0, dd = rows
        gamma, beta = self.slots
        return (
            None
            if gamma is None
            else ops.sum(dx * d0 + x0 * dd, axis=1) - center[gamma],
            None if beta is None else ops.sum(dd, axis=1) - center[beta],
        )

    def term(self, x, d, rows, center):
        gamma_row, beta_row = self._centered_rows(rows, center)
        per_example = 0.0
        if gamma_row is not None:
            own = ops.sum(x * d, axis=1)
            per_example = per_example + ops.sum(own * gamma_row, axis=1)
        if beta_row is not None:
            per_example = per_example + ops.sum(ops.sum(d, axis=1) * beta_row, axis=1)
        return per_example

    def term_gradient(self, x, d, rows, center):
        gamma_row, beta_row = self._centered_rows(rows, center)
        grad_x, grad_d = 0.0 * x, 0.0 * d
        if gamma_row is not None:
            grad_x = grad_x + d * gamma_row[:, None, :]
            grad_d = grad_d + x * gamma_row[:, None, :]
        if beta_row is not None:
            grad_d = grad_d + beta_row[:, None, :]
        return grad_x, grad_d

    def batch_tangent(self, rows, c):
        x0, dx, d0, dd = rows
        gamma, beta = self.slots
        parts = {}
        if gamma is not None:
            parts[gamma] = ops.sum((dx * d0 + x0 * dd) * c, axis=(0, 1))
        if beta is not None:
            parts[beta] = ops.sum(dd * c, axis=(0, 1))
        return parts


def _kind(layer, position):
    """The factor of a layer with trainable variables in ``position``;
    None where it has none that qualify (the model then falls back)."""

    def slot(variable):
        # -1: a frozen variable (not worth a branch: refused).
        if variable is None:
            return None
        return position.get(id(variable), -1)

    if not _float32(layer):
        return None
    if _own_call(layer, keras.layers.Dense):
        slots = (slot(layer.kernel), slot(layer.bias))
        return None if -1 in slots else _DenseKind(layer, slots)
    if _own_call(layer, keras.layers.EinsumDense):
        split = einsum_as_dense(layer.equation)
        if split is None:
            return None
        lead, contracted = split
        shape = tuple(layer.kernel.shape)
        fan_in = math.prod(shape[:contracted])
        fan_out = math.prod(shape[contracted:])
        if layer.bias is not None and tuple(layer.bias.shape) != shape[contracted:]:
            return None
        slots = (slot(layer.kernel), slot(layer.bias))
        if -1 in slots:
            return None
        return _DenseKind(layer, slots, lead, fan_in, fan_out)
    if _own_call(layer, keras.layers.Embedding):
        if layer.input_dim > 2**24:
            return None  # ids are recorded as float32: exact below 2^24
        slots = (slot(layer.embeddings),)
        return None if -1 in slots else _EmbeddingKind(layer, slots)
    if _own_call(layer, keras.layers.LayerNormalization):
        if list(layer.axis) != [-1] or layer.rms_scaling:
            return None
        slots = (slot(layer.gamma), slot(layer.beta))
        return None if -1 in slots else _NormalizationKind(layer, slots)
    return None


class LayerFactors:
    """Where the trainable weights of a model sit in its factored layers
    (Dense, EinsumDense as a Dense after a reshape, Embedding,
    LayerNormalization).

    ``LayerFactors.find(model, variables, masks)`` is None unless every
    trainable variable belongs to such a layer, in Keras's own ``call``
    (no subclass call, LoRA, quantization or mixed precision; see `_kind`),
    and none is pruned (a kernel mask breaks the factors).

    Attributes:
        layers: the layers, in the order of their first variable.
        kinds: per layer, its factor (`_Kind`).
    """

    def __init__(self, kinds):
        self.kinds = kinds
        self.layers = [k.layer for k in kinds]

    @classmethod
    def find(cls, model, variables, masks) -> LayerFactors | None:
        if any(m is not None for m in masks):
            return None
        position = {id(v): i for i, v in enumerate(variables)}
        kinds, covered = [], set()
        for layer in flatten_layers(model):
            owned = [id(v) for v in own_trainable_variables(layer)]
            if not any(i in position for i in owned):
                continue
            kind = _kind(layer, position)
            if kind is None:
                return None
            kinds.append(kind)
            covered.update(i for i in kind.slots if i is not None)
        if not kinds or covered != set(range(len(variables))):
            return None
        return cls(kinds)

    def record(self, loss_of_model, probes=None):
        """``(loss_of_model(), inputs, outputs)``: the loss computed with
        every factored layer's call routed, each layer's inputs and ``z``
        (see `routed_factor_calls`; one list of calls per layer),
        ``probes[l][k]`` added to layer l's k-th call's ``z`` where given (a
        callable: ``probes(l, z)``, the probe made during the call)."""
        index = {id(layer): i for i, layer in enumerate(self.layers)}
        inputs = [[] for _ in self.layers]
        outputs = [[] for _ in self.layers]

        def hook(layer, x, z):
            i = index[id(layer)]
            x, flat = self.kinds[i].flat(x, z)
            if callable(probes):
                flat = flat + probes(i, flat)
            elif probes is not None:
                flat = flat + probes[i][len(inputs[i])]
            inputs[i].append(x)
            outputs[i].append(flat)
            return self.kinds[i].unflat(flat, z)

        with routed_factor_calls(self.layers, hook):
            value = loss_of_model()
        return value, inputs, outputs

    @staticmethod
    def tokens(calls):
        """A layer's calls (each ``(n, ..., features)``) as one ``(n, T,
        features)`` tensor, every call's tokens side by side."""
        parts = []
        for c in calls:
            middle = tuple(c.shape[1:-1])
            t = -1 if None in middle else int(math.prod(middle))
            parts.append(ops.reshape(c, (-1, t, c.shape[-1])))
        return ops.concatenate(parts, axis=1)

    @staticmethod
    def by_gram(tokens, fan_in, fan_out) -> bool:
        """Whether a layer's part of `contraction` goes through per-example
        Grams of its T tokens (about ``T^2 (in + out)`` per example) rather
        than its rows formed as (in, out) matrices (about ``T in out``)."""
        return tokens is None or 2 * tokens * (fan_in + fan_out) <= 3 * fan_in * fan_out

    def batch_tangent(self, rows, frequencies, count):
        """``sum_i c_i H_i v`` (``c = frequencies``) from the rows' factors
        ``(x, x', d, d')`` along v: the tangent of the batch gradient
        ``sum_i c_i g_i``, one tensor per variable of ``count`` (every
        trainable variable sits in a factored layer)."""
        c = ops.cast(frequencies, "float32")[:, None, None]
        parts = [None] * count
        for row, kind in zip(rows, self.kinds):
            for slot, tensor in kind.batch_tangent(row, c).items():
                parts[slot] = tensor
        return parts

    def contraction_gradient(self, live, rows, center, frequencies):
        """The gradient of `contraction` in ``live`` (its arguments'
        meaning), written out per layer: ``[(dh/dx, dh/dd)]``, None where
        ``x`` is an Embedding's ids. For a backend whose autodiff of the
        contraction costs more than the contraction (eager PyTorch)."""
        c = ops.cast(frequencies, "float32")[:, None, None]
        gradients = []
        for (x, d), row, kind in zip(live, rows, self.kinds):
            grad_x, grad_d = kind.term_gradient(x, d, row, center)
            gradients.append((None if grad_x is None else grad_x * c, grad_d * c))
        return gradients

    def contraction(self, live, rows, center, frequencies):
        """``h = sum_i c_i <g_i, u_i>``: ``live`` the layers' ``(x, d)``
        (as `tokens` gives them) as functions of the weights, ``rows`` the
        fixed ``(x, x', d, d')`` of the rows along v, ``center`` one tensor
        per variable, ``c = frequencies``."""
        total = 0.0
        c = ops.cast(frequencies, "float32")
        for (x, d), row, kind in zip(live, rows, self.kinds):
            total = total + ops.sum(c * kind.term(x, d, row, center))
        return total

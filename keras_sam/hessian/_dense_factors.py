"""The s_2 step ``sum_i c_i H_i (H_i v - center)`` from per-layer factors,
for models whose trainable weights are all plain Dense kernels and biases.

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

from keras_sam._compat import flatten_layers, routed_dense_calls


def _plain_dense(layer) -> bool:
    # Keras's own Dense call in float32: no subclass call, LoRA,
    # quantization or mixed precision.
    policy = layer.dtype_policy
    return (
        isinstance(layer, keras.layers.Dense)
        and type(layer).call is keras.layers.Dense.call
        and not getattr(layer, "lora_enabled", False)
        and policy.quantization_mode is None
        and policy.compute_dtype == "float32"
        and policy.variable_dtype == "float32"
    )


class DenseFactors:
    """Where the trainable weights of a model sit in its Dense layers.

    ``DenseFactors.find(model, variables, masks)`` is None unless every
    trainable variable is the kernel or bias of a plain Dense layer (see
    `_plain_dense`) and none is pruned (a kernel mask breaks the factors).

    Attributes:
        layers: the Dense layers, in the order of their first variable.
        slots: per layer, ``(kernel index, bias index or None)`` in
            ``variables``.
    """

    def __init__(self, layers, slots):
        self.layers = layers
        self.slots = slots

    @classmethod
    def find(cls, model, variables, masks) -> DenseFactors | None:
        if any(m is not None for m in masks):
            return None
        position = {id(v): i for i, v in enumerate(variables)}
        layers, slots, covered = [], [], set()
        for layer in flatten_layers(model):
            if not isinstance(layer, keras.layers.Dense):
                continue
            if not any(id(v) in position for v in layer.trainable_variables):
                continue
            if not _plain_dense(layer) or id(layer.kernel) not in position:
                return None
            kernel = position[id(layer.kernel)]
            bias = None if layer.bias is None else position.get(id(layer.bias))
            if layer.bias is not None and bias is None:
                return None  # a frozen bias: not a case worth a branch
            layers.append(layer)
            slots.append((kernel, bias))
            covered.update(i for i in (kernel, bias) if i is not None)
        if not layers or covered != set(range(len(variables))):
            return None
        return cls(layers, slots)

    def record(self, loss_of_model, probes=None):
        """``(loss_of_model(), inputs, outputs)``: the loss computed with
        every Dense call routed, each layer's inputs and pre-activations
        (one list of calls per layer), ``probes[l][k]`` added to layer l's
        k-th call's pre-activation where given (a callable: ``probes(l,
        z)``, the probe made during the call)."""
        index = {id(layer): i for i, layer in enumerate(self.layers)}
        inputs = [[] for _ in self.layers]
        outputs = [[] for _ in self.layers]

        def hook(layer, x, z):
            i = index[id(layer)]
            if callable(probes):
                z = z + probes(i, z)
            elif probes is not None:
                z = z + probes[i][len(inputs[i])]
            inputs[i].append(x)
            outputs[i].append(z)
            return z

        with routed_dense_calls(self.layers, hook):
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

    def contraction(self, live, rows, center, frequencies):
        """``h = sum_i c_i <g_i, u_i>``: ``live`` the layers' ``(x, d)``
        (as `tokens` gives them) as functions of the weights, ``rows`` the
        fixed ``(x, x', d, d')`` of the rows along v, ``center`` one tensor
        per variable, ``c = frequencies``."""
        total = 0.0
        c = ops.cast(frequencies, "float32")
        for (x, d), (x0, dx, d0, dd), (kernel, bias) in zip(live, rows, self.slots):
            tokens, fan_in, fan_out = x.shape[1], x.shape[2], d.shape[2]
            if self.by_gram(tokens, fan_in, fan_out):
                gram_tangent = ops.einsum("nti,nsi->nts", x, dx)
                gram_inputs = ops.einsum("nti,nsi->nts", x, x0)
                error_primal = ops.einsum("nto,nso->nts", d, d0)
                error_tangent = ops.einsum("nto,nso->nts", d, dd)
                per_example = ops.sum(
                    gram_tangent * error_primal + gram_inputs * error_tangent,
                    axis=(1, 2),
                )
                per_example = per_example - ops.sum(
                    ops.matmul(x, center[kernel]) * d, axis=(1, 2)
                )
            else:
                # Many tokens: each example's row in the kernel, formed.
                rows_in_kernel = (
                    ops.einsum("nsi,nso->nio", dx, d0)
                    + ops.einsum("nsi,nso->nio", x0, dd)
                    - center[kernel][None]
                )
                per_example = ops.einsum("nti,nio,nto->n", x, rows_in_kernel, d)
            if bias is not None:
                d_sum = ops.sum(d, axis=1)
                per_example = per_example + ops.sum(
                    d_sum * (ops.sum(dd, axis=1) - center[bias]), axis=1
                )
            total = total + ops.sum(c * per_example)
        return total

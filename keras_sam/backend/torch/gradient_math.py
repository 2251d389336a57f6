"""The rules' list arithmetic on PyTorch, in torch calls instead of
`keras.ops` (the versions in `keras_sam._gradient_math`).

The PyTorch step runs eagerly, so each `keras.ops` call in a per-weight loop
costs its Python dispatch: SAM's eps over a ViT's 40 weights was about 250
dispatched ops, 1.4 ms of a 26 ms step. Here a global squared norm is one
`torch._foreach_norm` and one sum, eps one `torch._foreach_mul` and w + eps
one `torch._foreach_add` (per dtype). The step runs inside
`keras_sam._gradient_math.kernels(dot=dot, scale=scale, add=add)`; `scale`
and `add` give the `keras.ops` forms' values bit for bit, `dot` up to float
rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def dot(a: Sequence[Any], b: Sequence[Any]) -> torch.Tensor:
    """Global dot product of two gradient lists (float32 scalar)."""
    squares, terms = [], []
    for x, y in zip(a, b):
        if x is y:
            squares.append(torch.as_tensor(x))
        else:
            x = torch.as_tensor(x)
            y = torch.as_tensor(y, device=x.device)
            terms.append(torch.sum(x.to(torch.float32) * y.to(torch.float32)))
    if squares:
        norms = torch._foreach_norm(squares, 2, dtype=torch.float32)
        terms.append(torch.stack(norms).square().sum())
    if not terms:
        return torch.zeros((), dtype=torch.float32)
    return terms[0] if len(terms) == 1 else torch.stack(terms).sum()


def scale(tensors: Sequence[Any], factor: Any) -> list:
    """Each tensor times the scalar `factor` cast to its dtype."""
    kind = _kind(tensors)
    if kind is not None:  # the step's case: one call
        f = torch.as_tensor(factor, device=kind[1]).to(kind[0])
        return list(torch._foreach_mul(tensors, f))
    tensors = [torch.as_tensor(t) for t in tensors]

    def products(indices, dtype, device):
        f = torch.as_tensor(factor, device=device).to(dtype)
        return torch._foreach_mul([tensors[i] for i in indices], f)

    return _per_group(tensors, products)


def add(a: Sequence[Any], b: Sequence[Any]) -> list:
    """x + y for each pair, y cast to x's dtype."""
    kind = _kind(a)
    if kind is not None and _kind(b) == kind:  # the step's case: one call
        return list(torch._foreach_add(a, b))
    a = [torch.as_tensor(x) for x in a]

    def sums(indices, dtype, device):
        ys = [torch.as_tensor(b[i], device=device).to(dtype) for i in indices]
        return torch._foreach_add([a[i] for i in indices], ys)

    return _per_group(a, sums)


def _kind(tensors):
    # (dtype, device) where every one of `tensors` is a torch tensor of the
    # same dtype and device, else None.
    if not all(isinstance(t, torch.Tensor) for t in tensors):
        return None
    kinds = {(t.dtype, t.device) for t in tensors}
    return kinds.pop() if len(kinds) == 1 else None


def _per_group(tensors, call) -> list:
    # `call(indices, dtype, device)` on each (dtype, device) group of
    # `tensors` (a foreach call takes one of each), results back in order.
    groups = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.dtype, t.device), []).append(i)
    out = [None] * len(tensors)
    for (dtype, device), indices in groups.items():
        for i, result in zip(indices, call(indices, dtype, device)):
            out[i] = result
    return out

"""The rules' global dot product on PyTorch, in torch calls instead of
`keras.ops` (the version in `keras_sam._gradient_math`).

The PyTorch step runs eagerly, so each `keras.ops` call in a per-weight loop
costs its Python dispatch: SAM's global norm over a ViT's 40 weights was
200 ops, about 1 ms of a 26 ms step. Here a squared norm is one
`torch.linalg.vector_norm` per tensor and one sum. The step runs inside
`keras_sam._gradient_math.dot_kernel(dot)`; results differ only by float
rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def dot(a: Sequence[Any], b: Sequence[Any]) -> torch.Tensor:
    """Global dot product of two gradient lists (float32 scalar)."""
    terms = []
    for x, y in zip(a, b):
        same = x is y
        x = torch.as_tensor(x)
        if same:
            terms.append(torch.linalg.vector_norm(x, dtype=torch.float32).square())
        else:
            y = torch.as_tensor(y, device=x.device)
            terms.append(torch.sum(x.to(torch.float32) * y.to(torch.float32)))
    if not terms:
        return torch.zeros((), dtype=torch.float32)
    return torch.stack(terms).sum()

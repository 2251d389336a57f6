"""The compiled optimizer's gradient clipping, for the gradient that forms eps.

Keras clips the gradient an optimizer receives: under SAM, the perturbed
gradient at w + eps. eps itself is formed from the clean gradient at w,
unclipped. With ``SAMModel(clip_eps_gradient=True)`` the clean gradient is
clipped the same way first (`clip_like_optimizer`), from the optimizer's
public ``clipnorm``, ``clipvalue`` and ``global_clipnorm``:

```python
grads = clip_like_optimizer(model.optimizer, grads, model.trainable_variables)
```
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from keras_sam import _compat, _gradient_math


def clip_like_optimizer(
    optimizer: keras.optimizers.Optimizer,
    grads: Sequence[Any],
    variables: Sequence[keras.Variable],
) -> list[Any]:
    """`grads` clipped as `optimizer` clips the gradients of `variables`:
    a `LossScaleOptimizer` by its inner optimizer, a `MultiOptimizer` by
    each sub-optimizer over its own variables (``global_clipnorm`` over
    those variables only)."""
    clipped = list(grads)
    for sub_optimizer, indices in _groups(optimizer, variables):
        group = clip(sub_optimizer, [grads[i] for i in indices])
        for i, g in zip(indices, group):
            clipped[i] = g
    return clipped


def clip(optimizer: keras.optimizers.Optimizer, grads: Sequence[Any]) -> list[Any]:
    """Keras's clipping rule (at most one of the three is set):
    ``clipnorm`` c: each g times c / max(||g||, c); ``global_clipnorm`` c:
    all g times c / max(||(g_1, ..., g_n)||, c); ``clipvalue`` v: each entry
    into [-v, v]."""
    if optimizer.clipnorm:
        c = optimizer.clipnorm
        return [g * _shrink(_gradient_math.norm([g]), c, g) for g in grads]
    if optimizer.global_clipnorm:
        factor = _gradient_math.norm(grads)
        c = optimizer.global_clipnorm
        return [g * _shrink(factor, c, g) for g in grads]
    if optimizer.clipvalue:
        v = optimizer.clipvalue
        return [ops.clip(g, -v, v) for g in grads]
    return list(grads)


def _shrink(norm, limit: float, like):
    return ops.cast(limit / ops.maximum(norm, limit), like.dtype)


def _groups(optimizer, variables):
    """[(optimizer that clips, indices of its variables in `variables`)]."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        optimizer = optimizer.inner_optimizer
    if not isinstance(optimizer, keras.optimizers.MultiOptimizer):
        return [(optimizer, list(range(len(variables))))]
    if not optimizer.built:
        # As `apply` does on its first call.
        optimizer.build(list(variables))
    owners = [_compat.multi_optimizer_index(optimizer, v) for v in variables]
    return [
        (sub_optimizer, [i for i, owner in enumerate(owners) if owner == k])
        for k, sub_optimizer in enumerate(optimizer.optimizers)
    ]

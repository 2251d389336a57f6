"""Shared pieces of the curvature callbacks: schedule checks and subsets."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import tree

from keras_sam._validation import one_of, positive_int
from keras_sam.hessian._operators import is_dataset

UNITS = ("epoch", "step")


def check_schedule(every: Any, unit: Any) -> tuple[int, str]:
    return positive_int(every, "every"), one_of(unit, "unit", UNITS)


def subset(data: Any, num_examples: Any, seed: int | None) -> Any:
    """A fixed subset of ``data``: ``num_examples`` examples drawn without
    replacement with ``seed`` from arrays (all if None or more than there
    are), or the first ``num_examples`` of a `tf.data.Dataset` of batches."""
    num_examples = positive_int(num_examples, "num_examples", allow_none=True)
    if is_dataset(data):
        if num_examples is None:
            return data
        batches, count = [], 0
        for batch in data:
            batch = tree.map_structure(keras.ops.convert_to_numpy, tuple(batch))
            n = len(tree.flatten(batch)[0])
            take = min(n, num_examples - count)
            batches.append(tree.map_structure(lambda t, k=take: t[:k], batch))
            count += take
            if count >= num_examples:
                break
        return tree.map_structure(lambda *t: np.concatenate(t, 0), *batches)
    if not isinstance(data, tuple | list) or len(data) not in (2, 3):
        raise ValueError(
            "`data` must be a tuple (x, y) or (x, y, sample_weight) of arrays, or a "
            f"tf.data.Dataset of such batches; got {type(data).__name__}."
        )
    n = _check_lengths(data)
    if num_examples is None or num_examples >= n:
        return tuple(data)
    rng = np.random.default_rng(seed)
    index = np.sort(rng.choice(n, size=num_examples, replace=False))
    return tuple(
        tree.map_structure(lambda t: keras.ops.convert_to_numpy(t)[index], tuple(data))
    )


def _check_lengths(data: tuple) -> int:
    """The number of examples of ``(x, y[, sample_weight])`` arrays, every
    one of which must have it."""
    names = ("x", "y", "sample_weight")
    lengths = {}
    for name, part in zip(names, data):
        for leaf in tree.flatten(part):
            shape = np.shape(leaf)
            if not shape:
                raise ValueError(
                    f"`data`: {name} must be arrays with a batch dimension, got "
                    f"a scalar {leaf!r}."
                )
            lengths.setdefault(name, set()).add(shape[0])
    found = set().union(*lengths.values()) if lengths else set()
    if len(found) != 1:
        detail = ", ".join(f"{k}: {sorted(v)}" for k, v in lengths.items())
        raise ValueError(
            "`data` must have the same number of examples in x, y and "
            f"sample_weight, got {detail}."
        )
    n = found.pop()
    if n == 0:
        raise ValueError("`data` must contain at least one example.")
    return n


def subset_head(data: Any) -> Any:
    """The first example of a `subset` (arrays) with its batch axis."""
    return tree.map_structure(lambda t: keras.ops.convert_to_numpy(t)[:1], tuple(data))

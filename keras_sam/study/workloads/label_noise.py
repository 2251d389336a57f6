"""Seeded symmetric label noise on training labels.

A fraction ``rate`` of the examples, chosen at random, gets a label drawn
uniformly from the *other* classes, so exactly ``round(rate * n)`` training
labels are wrong. Test labels stay clean.

```python
y_noisy = keras_sam.study.workloads.label_noise.corrupt(y, rate=0.2, classes=10, seed=0)
```
"""

from __future__ import annotations

import numpy as np

from keras_sam import _validation


def check_rate(rate) -> float:
    return _validation.fraction(rate, "label_noise", hint="the flipped fraction")


def label_shifts(n: int, rate: float, classes: int, seed: int) -> np.ndarray:
    """Per example, the class shift to add modulo ``classes``: 0 for a kept
    label, uniform in 1 .. classes - 1 for the ``round(rate * n)`` flipped
    ones (chosen without replacement)."""
    rate = check_rate(rate)
    rng = np.random.default_rng([seed, 7919])  # not the stream of the data
    shifts = np.zeros(n, dtype=np.int64)
    flipped = rng.choice(n, size=int(round(rate * n)), replace=False)
    shifts[flipped] = rng.integers(1, classes, size=len(flipped))
    return shifts


def corrupt(labels: np.ndarray, rate: float, classes: int, seed: int = 0):
    """``labels`` with seeded symmetric noise (same dtype and shape)."""
    labels = np.asarray(labels)
    shifts = label_shifts(len(labels), rate, classes, seed)
    return ((labels.astype(np.int64) + shifts) % classes).astype(labels.dtype)

"""scikit-learn's handwritten digits (``sklearn.datasets.load_digits``:
1,797 8x8 images, 16 grey levels, shipped inside the wheel; no download)
with a fixed, seeded, class-stratified train / test split.

```python
(x, y), (x_test, y_test) = digits_arrays()   # (1347, 64) / (450, 64), in [0, 1]
```
"""

from __future__ import annotations

import functools

import numpy as np

from keras_sam import _validation
from keras_sam.study.workloads import label_noise as noise_lib

EXTRA_HINT = "pip install 'keras-sam[study]' (or pip install scikit-learn)"
NUM_EXAMPLES, PIXELS, CLASSES = 1_797, 64, 10
TEST_FRACTION = 0.25


@functools.lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError(
            f"The digits workload needs scikit-learn: {EXTRA_HINT} ({error})."
        ) from error
    images, labels = load_digits(return_X_y=True)
    x = (np.asarray(images, dtype="float32") / 16.0).reshape(-1, PIXELS)
    y = np.asarray(labels, dtype="int32")
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def split_indices(labels: np.ndarray, seed: int, test_fraction: float):
    """(train, test) example indices: per class, a seeded random
    ``round(test_fraction * count)`` of its examples go to the test split;
    each split is then put in a seeded random order."""
    rng = np.random.default_rng([seed, 1797])
    train, test = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        cut = int(round(test_fraction * len(members)))
        test.append(members[:cut])
        train.append(members[cut:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def digits_arrays(
    num_train: int | None = None,
    num_test: int | None = None,
    label_noise: float = 0.0,
    seed: int = 0,
    test_fraction: float = TEST_FRACTION,
):
    """((x_train, y_train), (x_test, y_test)): float32 pixels / 16 as
    length-64 rows, int32 labels. ``seed`` fixes the stratified split
    (1,347 / 450 at the default ``test_fraction`` 0.25) and the
    ``label_noise`` relabelling of the training labels (`label_noise.corrupt`);
    the test labels stay clean. The first ``num_train`` / ``num_test``
    examples of each split if given."""
    noise_lib.check_rate(label_noise)
    _validation.fraction(test_fraction, "test_fraction")
    x, y = _load()
    train, test = split_indices(y, seed, test_fraction)
    train, test = train[:num_train], test[:num_test]
    y_train = noise_lib.corrupt(y[train], label_noise, CLASSES, seed)
    return (x[train], y_train), (x[test], y[test])

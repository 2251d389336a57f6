"""Matrix factorization for the linear-convergence claim (Section 6.2).

``min E_x ||W2 W1 x - A x||^2`` with x ~ N(0, I_6), A in R^{10x6}; rank
``k = 10`` interpolates (the loss falls linearly on a log scale), ``k = 4``
cannot (the loss plateaus at the energy of A's trailing singular values).
"""

from __future__ import annotations

import keras
import numpy as np

from keras_sam import _validation

Arrays = tuple[np.ndarray, np.ndarray]


def factorization_data(
    num_samples: int = 1000,
    num_test: int = 1000,
    in_dim: int = 6,
    out_dim: int = 10,
    seed: int = 0,
) -> tuple[Arrays, Arrays]:
    """((x, A x), (x_test, A x_test)) with x ~ N(0, I), A ~ N(0, 1) entries.

    ```python
    (x, y), test = keras_sam.study.workloads.factorization_data(seed=0)
    ```
    """
    for name, value in [
        ("num_samples", num_samples),
        ("num_test", num_test),
        ("in_dim", in_dim),
        ("out_dim", out_dim),
    ]:
        _validation.positive_int(value, name)
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(out_dim, in_dim))

    def draw(n):
        x = rng.normal(size=(n, in_dim))
        return x.astype("float32"), (x @ a.T).astype("float32")

    return draw(num_samples), draw(num_test)


def squared_norm_loss(y_true, y_pred):
    """``||y_pred - y_true||^2`` per example (summed over outputs)."""
    return keras.ops.sum(keras.ops.square(y_pred - y_true), axis=-1)


def factorization_model(
    rank: int, in_dim: int = 6, out_dim: int = 10, seed: int | None = None
) -> keras.Model:
    """Linear ``x -> W2 W1 x`` with ``W1`` of shape (rank, in_dim), no biases.

    Parameter count ``rank * (in_dim + out_dim)``.
    """
    _validation.positive_int(rank, "rank")
    init = keras.initializers.VarianceScaling(1.0, "fan_in", "normal", seed=seed)
    inputs = keras.Input((in_dim,))
    h = keras.layers.Dense(rank, use_bias=False, kernel_initializer=init)(inputs)
    outputs = keras.layers.Dense(out_dim, use_bias=False, kernel_initializer=init)(h)
    return keras.Model(inputs, outputs, name=f"factorization_k{rank}")

"""The workload ``matrix-factorization``, for the linear-convergence claim
(Section 6.2): its data, model, loss and presets.

``min E_x ||W2 W1 x - A x||^2`` with x ~ N(0, I_6), A in R^{10x6}; rank
``k = 10`` interpolates (the loss falls linearly on a log scale), ``k = 4``
cannot (the loss plateaus at the energy of A's trailing singular values).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from keras_sam import _validation
from keras_sam.study.workloads.presets import Preset
from keras_sam.study.workloads.workload import Data, Workload, as_int

if TYPE_CHECKING:
    import keras

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
    import keras

    return keras.ops.sum(keras.ops.square(y_pred - y_true), axis=-1)


def factorization_model(
    rank: int, in_dim: int = 6, out_dim: int = 10, seed: int | None = None
) -> keras.Model:
    """Linear ``x -> W2 W1 x`` with ``W1`` of shape (rank, in_dim), no biases.

    Parameter count ``rank * (in_dim + out_dim)``.
    """
    import keras

    _validation.positive_int(rank, "rank")
    init = keras.initializers.VarianceScaling(1.0, "fan_in", "normal", seed=seed)
    inputs = keras.Input((in_dim,))
    h = keras.layers.Dense(rank, use_bias=False, kernel_initializer=init)(inputs)
    outputs = keras.layers.Dense(out_dim, use_bias=False, kernel_initializer=init)(h)
    return keras.Model(inputs, outputs, name=f"factorization_k{rank}")


def load(num_train=1000, num_test=1000, seed=0, **_) -> Data:
    """The workload's loader: `factorization_data` as `Data`."""
    train, test = factorization_data(
        num_samples=num_train, num_test=num_test, seed=seed
    )
    return Data(train, test, len(train[0]))


_rank = as_int("rank")

WORKLOAD = Workload(
    name="matrix-factorization",
    description="min ||W2 W1 x - A x||^2, A 10x6 (no download)",
    size_name="rank",
    metric="test_loss",
    build_fn=lambda k, seed=None: factorization_model(_rank(k), seed=seed),
    count_fn=lambda k: _rank(k) * (6 + 10),
    load_fn=load,
    loss_fn=lambda: squared_norm_loss,
    metrics_fn=lambda: [],
)

PRESETS = [
    Preset(
        "matrix-factorization",
        "paper",
        sizes=(4, 10),
        # At batch 1, unnormalized SAM with rho 0.05 collapses both ranks
        # to W2 W1 = 0 (loss 48.1) in the first epoch; 0.005, 0.01 converge.
        rhos=(0.005, 0.01),
        epochs=100,
        batch_size=1,
        lr=0.0005,
        schedule="constant",
        perturbation="usam",  # the rule Theorem H.3 analyses
        num_train=1000,
        num_test=1000,
    ),
    Preset(
        "matrix-factorization",
        "quick",
        sizes=(4, 10),
        rhos=(0.01, 0.05),
        seeds=(0,),
        epochs=30,
        batch_size=10,
        lr=0.001,
        schedule="constant",
        perturbation="usam",
        num_train=1000,
        num_test=1000,
        keras_verbose=0,
    ),
]

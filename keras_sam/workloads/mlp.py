"""LeNet-300-100 for MNIST with a width factor (Shin et al., Section 4).

Hidden layers [300 p, 100 p]; p = 0.25, 0.5, 1, 4, 10 give the paper's
61k, 126k, 267k, 1.43m and 5.37m parameters.
"""

from __future__ import annotations

import keras

from keras_sam import _validation


def lenet_hidden(width: float) -> tuple[int, int]:
    """Hidden sizes ``(round(300 p), round(100 p))`` for width factor ``p``."""
    _validation.positive_float(width, "width")
    h1, h2 = round(300 * width), round(100 * width)
    if h2 < 1:
        raise ValueError(f"`width` must be >= 0.005 (1 unit), got width={width!r}.")
    return h1, h2


def lenet_300_100_params(width: float, input_dim: int = 784, classes: int = 10) -> int:
    """Parameter count of `lenet_300_100` without building it."""
    h1, h2 = lenet_hidden(width)
    return (input_dim + 1) * h1 + (h1 + 1) * h2 + (h2 + 1) * classes


def lenet_300_100(
    width: float = 1.0,
    input_shape: tuple[int, ...] = (28, 28, 1),
    classes: int = 10,
    seed: int | None = None,
) -> keras.Model:
    """LeNet-300-100 (ReLU MLP, logits out) with hidden ``[300 p, 100 p]``.

    ```python
    model = keras_sam.workloads.lenet_300_100(width=4)   # 1.43m parameters
    ```
    """
    h1, h2 = lenet_hidden(width)
    init = keras.initializers.HeNormal(seed)
    inputs = keras.Input(input_shape)
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(h1, activation="relu", kernel_initializer=init)(x)
    x = keras.layers.Dense(h2, activation="relu", kernel_initializer=init)(x)
    outputs = keras.layers.Dense(
        classes, kernel_initializer=keras.initializers.GlorotUniform(seed)
    )(x)
    return keras.Model(inputs, outputs, name=f"lenet_300_100_w{width:g}")

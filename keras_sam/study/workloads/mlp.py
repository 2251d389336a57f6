"""LeNet-300-100 for MNIST with a width factor (Shin et al., Section 4).

Hidden layers [300 p, 100 p]; p = 0.25, 0.5, 1, 4, 10 give the paper's
61k, 126k, 267k, 1.43m and 5.37m parameters.
"""

from __future__ import annotations

import keras

from keras_sam import _validation
from keras_sam.study.workloads.workload import MODEL_INITS

INITS = MODEL_INITS


def check_init(init: str) -> str:
    return _validation.one_of(init, "init", INITS)


class Initializers:
    """Fresh kernel initializers, one per layer, each with its own seed.

    ``"lecun"``: Flax's default, LeCun-normal (truncated normal, variance
    1 / fan_in) everywhere, as the paper's code; ``"he"``: He-normal hidden
    layers and a Glorot-uniform head. (One Keras initializer object reused
    for several layers gives layers of the same shape the same values, and
    the others correlated ones: hence one object and one seed per layer.)
    """

    def __init__(self, init: str, seed: int | None):
        self.init, self.seed, self._count = check_init(init), seed, 0

    def _next_seed(self) -> int | None:
        self._count += 1
        return None if self.seed is None else self.seed * 1000 + self._count

    def hidden(self) -> keras.initializers.Initializer:
        if self.init == "lecun":
            return keras.initializers.LecunNormal(self._next_seed())
        return keras.initializers.HeNormal(self._next_seed())

    def head(self) -> keras.initializers.Initializer:
        if self.init == "lecun":
            return keras.initializers.LecunNormal(self._next_seed())
        return keras.initializers.GlorotUniform(self._next_seed())


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
    init: str = "he",
) -> keras.Model:
    """LeNet-300-100 (ReLU MLP, logits out) with hidden ``[300 p, 100 p]``.

    ``init``: ``"he"`` (He-normal hidden layers, Glorot-uniform head) or
    ``"lecun"`` (LeCun-normal everywhere, Flax's default: the paper's code);
    biases are zero.

    ```python
    model = keras_sam.study.workloads.lenet_300_100(width=4)   # 1.43m parameters
    ```
    """
    h1, h2 = lenet_hidden(width)
    inits = Initializers(init, seed)
    inputs = keras.Input(input_shape)
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(h1, activation="relu", kernel_initializer=inits.hidden())(x)
    x = keras.layers.Dense(h2, activation="relu", kernel_initializer=inits.hidden())(x)
    outputs = keras.layers.Dense(classes, kernel_initializer=inits.head())(x)
    return keras.Model(inputs, outputs, name=f"lenet_300_100_w{width:g}")

"""The synthetic teacher-student regression of Shin et al. (Section 4).

x in R^100 with N(0, 1) entries; the teacher is a randomly initialised 2-layer
ReLU network with 200 hidden units; y = teacher(x) + N(0, 1) noise; students
are 2-layer ReLU networks whose hidden width sets the parameter count.
"""

from __future__ import annotations

import keras
import numpy as np

from keras_sam import _validation

Arrays = tuple[np.ndarray, np.ndarray]
TEACHER_INITS = ("he", "uniform")


def _uniform(rng, fan_in: int, fan_out: int):
    bound = 1.0 / np.sqrt(fan_in)
    w = rng.uniform(-bound, bound, size=(fan_in, fan_out))
    return w, rng.uniform(-bound, bound, size=fan_out)


def teacher_student(
    num_train: int = 20_400,
    num_test: int = 5_100,
    dim: int = 100,
    teacher_hidden: int = 200,
    noise: float = 1.0,
    seed: int = 0,
    teacher_init: str = "uniform",
) -> tuple[Arrays, Arrays]:
    """Generated ((x_train, y_train), (x_test, y_test)), float32, no download.

    ```python
    (x, y), (x_test, y_test) = keras_sam.study.workloads.teacher_student(seed=0)
    ```

    ``teacher_init`` is how the teacher is "randomly initialised":
    ``"uniform"`` (default; PyTorch's `nn.Linear` default, weights and
    biases U(+-1/sqrt(fan_in)): output variance about 0.04, so the noise
    dominates) or ``"he"`` (He-normal first layer, zero biases: output
    variance about 0.6). The paper's absolute test losses (SAM ~1.004 against
    the noise floor 1.0) match the uniform teacher (docs/reproduction.md).
    """
    for name, value in [
        ("num_train", num_train),
        ("num_test", num_test),
        ("dim", dim),
        ("teacher_hidden", teacher_hidden),
    ]:
        _validation.positive_int(value, name)
    _validation.non_negative_float(noise, "noise")
    _validation.one_of(teacher_init, "teacher_init", TEACHER_INITS)
    rng = np.random.default_rng(seed)
    if teacher_init == "he":
        w1 = rng.normal(scale=np.sqrt(2.0 / dim), size=(dim, teacher_hidden))
        w2 = rng.normal(scale=np.sqrt(1.0 / teacher_hidden), size=(teacher_hidden, 1))
        b1, b2 = np.zeros(teacher_hidden), np.zeros(1)
    else:
        w1, b1 = _uniform(rng, dim, teacher_hidden)
        w2, b2 = _uniform(rng, teacher_hidden, 1)

    def draw(n):
        x = rng.normal(size=(n, dim))
        y = np.maximum(x @ w1 + b1, 0.0) @ w2 + b2 + noise * rng.normal(size=(n, 1))
        return x.astype("float32"), y.astype("float32")

    return draw(num_train), draw(num_test)


STUDENT_INITS = ("he", "torch")


def _offset(seed: int | None, k: int) -> int | None:
    return None if seed is None else seed + k


def _torch_dense(units: int, fan_in: int, seed, **kwargs) -> keras.layers.Dense:
    # PyTorch `nn.Linear` default: weights and biases U(+-1/sqrt(fan_in)).
    bound = 1.0 / np.sqrt(fan_in)
    return keras.layers.Dense(
        units,
        kernel_initializer=keras.initializers.VarianceScaling(
            1.0 / 3.0, "fan_in", "uniform", seed=seed
        ),
        bias_initializer=keras.initializers.RandomUniform(
            -bound, bound, seed=_offset(seed, 1)
        ),
        **kwargs,
    )


def student(
    hidden: int,
    dim: int = 100,
    seed: int | None = None,
    input_scale: float = 1.0,
    init: str = "he",
) -> keras.Model:
    """A 2-layer ReLU regression network with `hidden` units (plain Keras).

    Its parameter count is (dim + 2) * hidden + 1. ``input_scale`` multiplies
    the inputs first (no parameters): the sweep uses ``1 / sqrt(dim)``, which
    makes the Hessian's top eigenvalue ~100x smaller, so the paper's lr 0.1
    is stable at every width. ``init``: ``"he"`` (He-normal hidden layer,
    Glorot-uniform head, zero biases) or ``"torch"`` (PyTorch's `nn.Linear`
    default: weights and biases U(+-1/sqrt(fan_in))).

    ```python
    model = keras_sam.study.workloads.student(300, seed=0, init="torch")
    ```
    """
    _validation.positive_int(hidden, "hidden")
    _validation.positive_float(input_scale, "input_scale")
    _validation.one_of(init, "init", STUDENT_INITS)
    inputs = keras.Input((dim,))
    x = inputs
    if input_scale != 1.0:
        x = keras.layers.Rescaling(input_scale)(inputs)
    if init == "torch":
        h = _torch_dense(hidden, dim, seed, activation="relu")(x)
        outputs = _torch_dense(1, hidden, _offset(seed, 2))(h)
    else:
        h = keras.layers.Dense(
            hidden,
            activation="relu",
            kernel_initializer=keras.initializers.HeNormal(seed),
        )(x)
        outputs = keras.layers.Dense(
            1, kernel_initializer=keras.initializers.GlorotUniform(seed)
        )(h)
    return keras.Model(inputs, outputs, name=f"student_{hidden}")

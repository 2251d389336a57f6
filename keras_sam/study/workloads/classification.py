"""The workload ``synthetic-classification``: a synthetic teacher-student
classification, the offline stand-in for the paper's MNIST / CIFAR-10
accuracy claims; its data, student model and presets.

x in R^dim with N(0, 1) entries; labels are the argmax of a random 2-layer
ReLU teacher's logits; a seeded fraction of the training labels is flipped
(`label_noise`); students are 2-layer ReLU classifiers whose hidden width
sets the parameter count.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from keras_sam import _validation
from keras_sam.study.workloads import label_noise as noise_lib
from keras_sam.study.workloads.presets import Preset
from keras_sam.study.workloads.workload import (
    Data,
    Workload,
    accuracy,
    as_int,
    classification_loss,
    one_hot_mse,
)

if TYPE_CHECKING:
    import keras

Arrays = tuple[np.ndarray, np.ndarray]


def teacher_classification(
    num_train: int = 4_096,
    num_test: int = 4_096,
    dim: int = 100,
    classes: int = 10,
    teacher_hidden: int = 200,
    label_noise: float = 0.0,
    seed: int = 0,
) -> tuple[Arrays, Arrays]:
    """((x_train, y_train), (x_test, y_test)): float32 inputs, int32 labels.

    The teacher has He-normal weights and zero biases; its labels are
    balanced to within a few percent over the classes. ``label_noise``
    flips that fraction of the training labels (`label_noise.corrupt`,
    seeded by ``seed``); the test labels are the teacher's.

    ```python
    (x, y), (x_test, y_test) = teacher_classification(label_noise=0.2)
    ```
    """
    for name, value in [
        ("num_train", num_train),
        ("num_test", num_test),
        ("dim", dim),
        ("teacher_hidden", teacher_hidden),
    ]:
        _validation.positive_int(value, name)
    if _validation.positive_int(classes, "classes") < 2:
        raise ValueError(f"`classes` must be >= 2, got classes={classes!r}.")
    noise_lib.check_rate(label_noise)
    rng = np.random.default_rng(seed)
    w1 = rng.normal(scale=np.sqrt(2.0 / dim), size=(dim, teacher_hidden))
    w2 = rng.normal(scale=np.sqrt(1.0 / teacher_hidden), size=(teacher_hidden, classes))

    def draw(n):
        x = rng.normal(size=(n, dim))
        return x.astype("float32"), np.maximum(x @ w1, 0.0) @ w2

    (x, train_logits), (x_test, test_logits) = draw(num_train), draw(num_test)
    # One offset per class, from the training draw, for both: balanced labels.
    offset = train_logits.mean(axis=0)

    def labels(logits):
        return np.argmax(logits - offset, axis=1).astype("int32")

    y, test = labels(train_logits), (x_test, labels(test_logits))
    return (x, noise_lib.corrupt(y, label_noise, classes, seed)), test


def classifier_student_params(hidden: int, dim: int = 100, classes: int = 10) -> int:
    return (dim + 1) * hidden + (hidden + 1) * classes


def classifier_student(
    hidden: int, dim: int = 100, classes: int = 10, seed: int | None = None
) -> keras.Model:
    """A 2-layer ReLU classifier (logits out) with ``hidden`` units:
    He-normal hidden layer, Glorot-uniform head, zero biases.

    ```python
    model = classifier_student(256, seed=0)   # 28,426 parameters
    ```
    """
    import keras

    _validation.positive_int(hidden, "hidden")
    inputs = keras.Input((dim,))
    h = keras.layers.Dense(
        hidden, activation="relu", kernel_initializer=keras.initializers.HeNormal(seed)
    )(inputs)
    outputs = keras.layers.Dense(
        classes, kernel_initializer=keras.initializers.GlorotUniform(seed)
    )(h)
    return keras.Model(inputs, outputs, name=f"classifier_{hidden}")


def load(
    num_train=4_096, num_test=4_096, seed=0, label_noise=0.0, teacher_hidden=200, **_
) -> Data:
    """The workload's loader: `teacher_classification` as `Data`."""
    train, test = teacher_classification(
        num_train=num_train,
        num_test=num_test,
        seed=seed,
        label_noise=label_noise,
        teacher_hidden=teacher_hidden,
    )
    return Data(train, test, len(train[0]))


_hidden = as_int("hidden")

WORKLOAD = Workload(
    name="synthetic-classification",
    description="teacher-student classification, 10 classes, 2-layer ReLU student "
    "(no download)",
    size_name="hidden",
    metric="test_accuracy",
    build_fn=lambda h, seed=None: classifier_student(_hidden(h), seed=seed),
    count_fn=lambda h: classifier_student_params(_hidden(h)),
    load_fn=load,
    loss_fn=classification_loss,
    metrics_fn=accuracy,
    squared_loss_fn=one_hot_mse,
)

_CLASSIFICATION = dict(
    sizes=(16, 64, 256, 1024),
    rhos=(0.05, 0.1, 0.2),
    seeds=(0, 1),
    epochs=40,
    momentum=0.9,
    num_train=4_096,
    num_test=4_096,
    keras_verbose=0,
)

PRESETS = [
    # The offline stand-in for the classification claims: a width sweep,
    # with label noise (--label-noise), and a fixed budget.
    Preset("synthetic-classification", "quick", **_CLASSIFICATION),
    Preset(
        "synthetic-classification",
        "noise",
        **dict(_CLASSIFICATION, sizes=(16, 256, 1024), label_noise=0.4),
    ),
    Preset(
        "synthetic-classification",
        "sparse",
        **dict(_CLASSIFICATION, sizes=(64, 256, 1024), sparse_budget=64),
    ),
]

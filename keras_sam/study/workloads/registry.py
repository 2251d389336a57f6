"""Workloads by name: data + model builder + loss + the metric a sweep reports.

```python
from keras_sam.study.workloads import get_workload
w = get_workload("mnist")
model = w.build(4, seed=0)          # LeNet-300-100 with width factor 4
w.count_params(4)                   # 1_426_410, without building
```
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import keras

from keras_sam.study.workloads import (
    classification,
    datasets,
    digits_data,
    matrix_factorization,
    mlp,
    mnist1d_data,
    resnet,
    signal_nets,
    synthetic,
)
from keras_sam.study.workloads.losses import OneHotMeanSquaredError
from keras_sam.study.workloads.presets import LOSSES


class Data(NamedTuple):
    """Training and test data: ``(x, y)`` arrays or batched `tf.data.Dataset`s.

    ``sample(n)``, where given, returns ``n`` training examples as arrays,
    drawn at random with the loader's seed and without augmentation (see
    `datasets.train_sample`); the tfds workloads have it, the array
    workloads draw their examples i.i.d. already.
    """

    train: Any
    test: Any
    num_train: int
    sample: Callable[[int], tuple[Any, Any]] | None = None

    @property
    def batched(self) -> bool:
        return not isinstance(self.train, tuple)


@dataclass(frozen=True)
class Workload:
    """One study: how to build a model of a given size, load data, score it.

    ``metric`` is ``"test_loss"`` (lower is better) or ``"test_accuracy"``
    (higher is better); ``size_name`` names the size knob (``hidden``,
    ``width``, ``base_filters``, ``rank``). ``squared_loss_fn`` gives the
    ``loss("squared")`` of a classifier (None: the default loss is already
    a squared loss).
    """

    name: str
    description: str
    size_name: str
    metric: str
    build_fn: Callable[..., keras.Model]
    count_fn: Callable[..., int]
    load_fn: Callable[..., Data]
    loss_fn: Callable[[], Any]
    metrics_fn: Callable[[], list]
    squared_loss_fn: Callable[[], Any] | None = None
    inits: tuple[str, ...] = ()  # accepted `init` model options, default first

    @property
    def higher_is_better(self) -> bool:
        return self.metric.endswith("accuracy")

    def build(self, size: float, seed: int | None = None, **options) -> keras.Model:
        """A fresh (plain Keras) model of the given size."""
        return self.build_fn(size, seed=seed, **options)

    def count_params(self, size: float, **options) -> int:
        """Trainable parameters of ``build(size)``, computed without building."""
        return self.count_fn(size, **options)

    def load(self, **options) -> Data:
        """The data, e.g. ``load(num_train=..., data_dir=..., batch_size=...)``."""
        return self.load_fn(**options)

    def loss(self, kind: str = "default"):
        """The training loss: ``"default"`` (cross-entropy on logits for the
        classifiers, squared error for the regressions) or ``"squared"``
        (classifiers: `OneHotMeanSquaredError`, the mean over classes of
        the squared difference between logits and one-hot labels;
        regressions: the default loss)."""
        if kind not in LOSSES:
            raise ValueError(
                f"`loss` must be one of {list(LOSSES)}, got loss={kind!r}."
            )
        if kind == "squared" and self.squared_loss_fn is not None:
            return self.squared_loss_fn()
        return self.loss_fn()

    def metrics(self) -> list:
        return self.metrics_fn()


def _synthetic_load(
    num_train=20_400, num_test=5_100, seed=0, noise=1.0, teacher_init="uniform", **_
):
    train, test = synthetic.teacher_student(
        num_train=num_train,
        num_test=num_test,
        noise=noise,
        seed=seed,
        teacher_init=teacher_init,
    )
    return Data(train, test, len(train[0]))


def _classification_load(
    num_train=4_096, num_test=4_096, seed=0, label_noise=0.0, teacher_hidden=200, **_
):
    train, test = classification.teacher_classification(
        num_train=num_train,
        num_test=num_test,
        seed=seed,
        label_noise=label_noise,
        teacher_hidden=teacher_hidden,
    )
    return Data(train, test, len(train[0]))


def _offline_load(arrays_fn):
    """A loader of an offline array data set (MNIST-1D, digits): its
    package missing is a `DatasetUnavailableError` naming the extra."""

    def load(num_train=None, num_test=None, seed=0, label_noise=0.0, **_):
        try:
            train, test = arrays_fn(
                num_train=num_train,
                num_test=num_test,
                seed=seed,
                label_noise=label_noise,
            )
        except ImportError as error:
            raise datasets.DatasetUnavailableError(str(error)) from error
        return Data(train, test, len(train[0]))

    return load


def _signal_workloads(name, description, arrays_fn, length):
    """The MLP (``name``) and 1-D CNN (``name-cnn``) workloads of a signal
    data set of ``length`` inputs."""
    load = _offline_load(arrays_fn)
    mlp_workload = Workload(
        name,
        f"{description}, 2-hidden-layer ReLU MLP of width w",
        "width",
        "test_accuracy",
        lambda w, seed=None, init="he": signal_nets.signal_mlp(
            w, input_dim=length, seed=seed, init=init
        ),
        lambda w: signal_nets.signal_mlp_params(w, input_dim=length),
        load,
        _classification_loss,
        _accuracy,
        OneHotMeanSquaredError,
        inits=mlp.INITS,
    )
    cnn_workload = Workload(
        f"{name}-cnn",
        f"{description}, 3-layer 1-D CNN of c channels",
        "channels",
        "test_accuracy",
        lambda c, seed=None, init="he": signal_nets.signal_cnn(
            c, length=length, seed=seed, init=init
        ),
        lambda c: signal_nets.signal_cnn_params(c, length=length),
        load,
        _classification_loss,
        _accuracy,
        OneHotMeanSquaredError,
        inits=mlp.INITS,
    )
    return [mlp_workload, cnn_workload]


def _factorization_load(num_train=1000, num_test=1000, seed=0, **_):
    train, test = matrix_factorization.factorization_data(
        num_samples=num_train, num_test=num_test, seed=seed
    )
    return Data(train, test, len(train[0]))


def _tfds_load(loader, name):
    def load(
        num_train=None,
        num_test=None,
        seed=0,
        batch_size=128,
        data_dir=None,
        download=None,
        image_size=None,
        label_noise=0.0,
        **options,
    ):
        kwargs = dict(
            batch_size=batch_size,
            data_dir=data_dir,
            seed=seed,
            num_train=num_train,
            num_test=num_test,
            label_noise=label_noise,
            **options,  # e.g. preprocessing="reflect" (cifar10)
        )
        if download is not None:
            kwargs["download"] = download
        if image_size is not None:
            kwargs["image_size"] = image_size
        train, test, n = loader(**kwargs)
        sample = functools.partial(
            datasets.train_sample,
            name,
            seed=seed,
            num_train=num_train,
            data_dir=data_dir,
            image_size=image_size,
            preprocessing=options.get("preprocessing"),
        )
        return Data(train, test, n, sample)

    return load


def _as_int(name):
    def check(size):
        if float(size) != int(size):
            raise ValueError(f"`{name}` sizes must be integers, got {size!r}.")
        return int(size)

    return check


def _classification_loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _accuracy():
    return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]


SYNTHETIC_INPUT_SCALE = 0.1  # 1 / sqrt(100)

_hidden, _filters, _rank = _as_int("hidden"), _as_int("base_filters"), _as_int("rank")

#: Every workload by name; `get_workload` looks them up.
WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in [
        Workload(
            "synthetic",
            "teacher-student regression, 2-layer ReLU student (no download)",
            "hidden",
            "test_loss",
            # Inputs scaled by 1/sqrt(100): with raw N(0, 1) inputs the
            # Hessian's top eigenvalue is ~650 at width 1000 (~71 at 100), so
            # SGD at the paper's lr 0.1 diverges (it needs < 2 / 650).
            lambda h, seed=None, input_scale=SYNTHETIC_INPUT_SCALE, init="he": (
                synthetic.student(
                    _hidden(h), seed=seed, input_scale=input_scale, init=init
                )
            ),
            lambda h: (100 + 2) * _hidden(h) + 1,
            _synthetic_load,
            lambda: "mse",
            lambda: [],
            inits=synthetic.STUDENT_INITS,
        ),
        Workload(
            "synthetic-classification",
            "teacher-student classification, 10 classes, 2-layer ReLU student "
            "(no download)",
            "hidden",
            "test_accuracy",
            lambda h, seed=None: classification.classifier_student(
                _hidden(h), seed=seed
            ),
            lambda h: classification.classifier_student_params(_hidden(h)),
            _classification_load,
            _classification_loss,
            _accuracy,
            OneHotMeanSquaredError,
        ),
        Workload(
            "matrix-factorization",
            "min ||W2 W1 x - A x||^2, A 10x6 (no download)",
            "rank",
            "test_loss",
            lambda k, seed=None: matrix_factorization.factorization_model(
                _rank(k), seed=seed
            ),
            lambda k: _rank(k) * (6 + 10),
            _factorization_load,
            lambda: matrix_factorization.squared_norm_loss,
            lambda: [],
        ),
        Workload(
            "mnist",
            "MNIST, LeNet-300-100 with hidden [300p, 100p]",
            "width",
            "test_accuracy",
            lambda p, seed=None, init="he": mlp.lenet_300_100(p, seed=seed, init=init),
            mlp.lenet_300_100_params,
            _tfds_load(datasets.mnist, "mnist"),
            _classification_loss,
            _accuracy,
            OneHotMeanSquaredError,
            inits=mlp.INITS,
        ),
        Workload(
            "cifar10",
            "CIFAR-10, ResNet-18 with base filters 2^k",
            "base_filters",
            "test_accuracy",
            lambda w, seed=None, init="he": resnet.resnet18_cifar(
                _filters(w), seed=seed, init=init
            ),
            lambda w: resnet.resnet18_params(_filters(w)),
            _tfds_load(datasets.cifar10, "cifar10"),
            _classification_loss,
            _accuracy,
            OneHotMeanSquaredError,
            inits=mlp.INITS,
        ),
        Workload(
            "imagenet",
            "ImageNet, ResNet-50 with base filters 16k (manual download)",
            "base_filters",
            "test_accuracy",
            lambda w, seed=None, image_size=224, **options: resnet.resnet50(
                _filters(w),
                input_shape=(image_size, image_size, 3),
                seed=seed,
                **options,  # init, zero_init_last_bn
            ),
            lambda w, **_: resnet.resnet50_params(_filters(w)),
            _tfds_load(datasets.imagenet, "imagenet"),
            _classification_loss,
            _accuracy,
            OneHotMeanSquaredError,
            inits=mlp.INITS,
        ),
        *_signal_workloads(
            "mnist1d",
            "MNIST-1D (4,000 / 1,000 length-40 signals, generated offline)",
            mnist1d_data.mnist1d_arrays,
            mnist1d_data.LENGTH,
        ),
        *_signal_workloads(
            "digits",
            "scikit-learn digits (1,347 / 450 8x8 images as 64 inputs)",
            digits_data.digits_arrays,
            digits_data.PIXELS,
        ),
    ]
}


def get_workload(name: str) -> Workload:
    """The workload called ``name`` (one of `WORKLOADS`)."""
    if name not in WORKLOADS:
        raise ValueError(
            f"`workload` must be one of {sorted(WORKLOADS)}, got workload={name!r}."
        )
    return WORKLOADS[name]

"""What a workload is: data + a model of a given size + a loss + the metric a
sweep reports. Each workload's file (``synthetic.py``, ``mnist1d.py``, ...)
declares its `Workload` entries and its presets; `registry` collects them.

This module imports no framework: the command line reads the workloads'
names and presets without TensorFlow, JAX or PyTorch (their builders and
loaders import what they need when called).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from keras_sam.study.workloads.presets import LOSSES

if TYPE_CHECKING:
    import keras


#: The `init` options of the MLP / CNN / ResNet builders (`mlp.Initializers`):
#: He-normal hidden layers and a Glorot head (default), or Flax's LeCun-normal.
MODEL_INITS = ("he", "lecun")


class DatasetUnavailableError(RuntimeError):
    """A data set is not prepared and cannot be fetched or generated."""


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


@dataclass(frozen=True, kw_only=True)
class Workload:
    """One study: how to build a model of a given size, load data, score it.

    ```python
    w = get_workload("mnist")
    model = w.build(4, seed=0)          # LeNet-300-100 with width factor 4
    w.count_params(4)                   # 1_426_410, without building
    ```

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


# Shared by the classification workloads.


def classification_loss():
    import keras

    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def accuracy():
    import keras

    return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]


def one_hot_mse():
    from keras_sam.study.workloads.losses import OneHotMeanSquaredError

    return OneHotMeanSquaredError()


def as_int(name):
    """A size check: ``name`` sizes must be whole numbers."""

    def check(size):
        if float(size) != int(size):
            raise ValueError(f"`{name}` sizes must be integers, got {size!r}.")
        return int(size)

    return check


def offline_load(arrays_fn):
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
            raise DatasetUnavailableError(str(error)) from error
        return Data(train, test, len(train[0]))

    return load


def tfds_load(loader_name, name):
    """A loader of a tensorflow-datasets data set (`datasets.<loader_name>`)."""

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
        from keras_sam.study.workloads import datasets

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
        train, test, n = getattr(datasets, loader_name)(**kwargs)
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

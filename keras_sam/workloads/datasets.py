"""tensorflow-datasets loaders with the standard pipelines.

Each returns ``(train, test)`` batched `tf.data.Dataset`s of
``(image float32, label int32)`` and the number of training examples:

```python
train, test, n = keras_sam.workloads.cifar10(batch_size=128, data_dir="~/tfds")
```

`tensorflow_datasets` is imported lazily. A data set that is neither in
``data_dir`` nor downloadable raises `DatasetUnavailableError`, whose message
names ``data_dir`` / ``--data-dir``.
"""

from __future__ import annotations

import os
from typing import Any

import tensorflow as tf

_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR_STD = (0.2470, 0.2435, 0.2616)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class DatasetUnavailableError(RuntimeError):
    """A tensorflow-datasets data set is not prepared and cannot be fetched."""


def _check_positive(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {name}={value!r}.")


def load_split(
    name: str, split: str, data_dir: str | None = None, download: bool = False
) -> tf.data.Dataset:
    """``tfds.load(name, split, as_supervised=True)`` with a clear offline error."""
    import tensorflow_datasets as tfds

    if data_dir is not None:
        data_dir = os.path.expanduser(data_dir)
    try:
        return tfds.load(
            name,
            split=split,
            data_dir=data_dir,
            download=download,
            as_supervised=True,
            shuffle_files=False,
        )
    except Exception as error:  # tfds raises AssertionError, OSError, ...
        where = data_dir or "the default tensorflow-datasets directory"
        hint = (
            "ImageNet needs a manual download: put ILSVRC2012_img_train.tar and "
            "ILSVRC2012_img_val.tar in <data_dir>/downloads/manual and run "
            "`tfds build imagenet2012 --data_dir <data_dir>`. "
            if name.startswith("imagenet")
            else ""
        )
        raise DatasetUnavailableError(
            f"Dataset {name!r} (split {split!r}) is not available in {where} and "
            f"could not be {'downloaded' if download else 'loaded'} ({error}). "
            f"{hint}Prepare it on a machine with internet access and pass its "
            "folder with `--data-dir DIR` (Python: `data_dir=DIR`)."
        ) from error


def _size(ds: tf.data.Dataset) -> int:
    n = int(ds.cardinality())
    if n < 0:
        n = int(ds.reduce(0, lambda count, _: count + 1))
    return n


def _finish(train, test, batch_size, seed, num_train, num_test, train_map, test_map):
    _check_positive("batch_size", batch_size)
    _check_positive("num_train", num_train, allow_none=True)
    _check_positive("num_test", num_test, allow_none=True)
    if num_train is not None:
        train = train.take(num_train)
    if num_test is not None:
        test = test.take(num_test)
    n = _size(train)
    autotune = tf.data.AUTOTUNE
    train = (
        train.shuffle(min(n, 50_000), seed=seed, reshuffle_each_iteration=True)
        .map(train_map, num_parallel_calls=autotune)
        .batch(batch_size)
        .prefetch(autotune)
    )
    test = test.map(test_map, num_parallel_calls=autotune).batch(batch_size)
    return train, test.prefetch(autotune), n


def mnist(
    batch_size: int = 128,
    data_dir: str | None = None,
    download: bool = True,
    seed: int = 0,
    num_train: int | None = None,
    num_test: int | None = None,
) -> tuple[tf.data.Dataset, tf.data.Dataset, int]:
    """MNIST scaled to [0, 1], shape (28, 28, 1), no augmentation."""

    def prep(image, label):
        return tf.cast(image, tf.float32) / 255.0, tf.cast(label, tf.int32)

    train = load_split("mnist", "train", data_dir, download)
    test = load_split("mnist", "test", data_dir, download)
    return _finish(train, test, batch_size, seed, num_train, num_test, prep, prep)


def _normalize(image, mean, std):
    image = tf.cast(image, tf.float32) / 255.0
    return (image - tf.constant(mean)) / tf.constant(std)


def cifar10(
    batch_size: int = 128,
    data_dir: str | None = None,
    download: bool = True,
    seed: int = 0,
    num_train: int | None = None,
    num_test: int | None = None,
) -> tuple[tf.data.Dataset, tf.data.Dataset, int]:
    """CIFAR-10, per-channel standardized; training: 4-pixel padding, random
    32x32 crop and random horizontal flip."""

    def train_map(image, label):
        image = _normalize(image, _CIFAR_MEAN, _CIFAR_STD)
        image = tf.pad(image, [[4, 4], [4, 4], [0, 0]], mode="REFLECT")
        image = tf.image.random_crop(image, (32, 32, 3))
        image = tf.image.random_flip_left_right(image)
        return image, tf.cast(label, tf.int32)

    def test_map(image, label):
        return _normalize(image, _CIFAR_MEAN, _CIFAR_STD), tf.cast(label, tf.int32)

    train = load_split("cifar10", "train", data_dir, download)
    test = load_split("cifar10", "test", data_dir, download)
    return _finish(
        train, test, batch_size, seed, num_train, num_test, train_map, test_map
    )


def _center_crop(image, size: int, crop_padding: int = 32):
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    crop = tf.cast(
        size / (size + crop_padding) * tf.cast(tf.minimum(h, w), tf.float32), tf.int32
    )
    top, left = (h - crop + 1) // 2, (w - crop + 1) // 2
    image = tf.image.crop_to_bounding_box(image, top, left, crop, crop)
    return tf.image.resize(image, (size, size), method="bicubic")


def _random_resized_crop(image, size: int):
    bbox = tf.zeros((1, 0, 4), tf.float32)
    begin, crop_size, _ = tf.image.sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=bbox,
        min_object_covered=0.1,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    image = tf.slice(image, begin, crop_size)
    return tf.image.resize(image, (size, size), method="bicubic")


def imagenet(
    batch_size: int = 512,
    data_dir: str | None = None,
    download: bool = False,
    seed: int = 0,
    num_train: int | None = None,
    num_test: int | None = None,
    image_size: int = 224,
) -> tuple[tf.data.Dataset, tf.data.Dataset, int]:
    """ImageNet (``imagenet2012``) with the ResNet preprocessing: training
    random-resized crop (area 8-100%, aspect 3/4-4/3) + flip, evaluation
    center crop (``image_size / (image_size + 32)``), both resized to
    ``image_size`` and standardized with the ImageNet mean / std."""
    _check_positive("image_size", image_size)

    def train_map(image, label):
        image = _random_resized_crop(image, image_size)
        image = tf.image.random_flip_left_right(image)
        image = (image / 255.0 - _IMAGENET_MEAN) / _IMAGENET_STD
        return tf.cast(image, tf.float32), tf.cast(label, tf.int32)

    def test_map(image, label):
        image = _center_crop(image, image_size)
        image = (image / 255.0 - _IMAGENET_MEAN) / _IMAGENET_STD
        return tf.cast(image, tf.float32), tf.cast(label, tf.int32)

    train = load_split("imagenet2012", "train", data_dir, download)
    test = load_split("imagenet2012", "validation", data_dir, download)
    return _finish(
        train, test, batch_size, seed, num_train, num_test, train_map, test_map
    )

"""tensorflow-datasets loaders with the standard pipelines.

Each returns ``(train, test)`` batched `tf.data.Dataset`s of
``(image float32, label int32)`` and the number of training examples:

```python
train, test, n = keras_sam.study.workloads.cifar10(batch_size=128, data_dir="~/tfds")
```

`tensorflow_datasets` is imported lazily. A data set that is neither in
``data_dir`` nor downloadable raises `DatasetUnavailableError`, whose message
names ``data_dir`` / ``--data-dir``.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import numpy as np
import tensorflow as tf

from keras_sam import _validation
from keras_sam.study.workloads import label_noise
from keras_sam.study.workloads.workload import DatasetUnavailableError

_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR_STD = (0.2470, 0.2435, 0.2616)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_positive(name: str, value: Any, allow_none: bool = False) -> None:
    _validation.positive_int(value, name, allow_none=allow_none)


def _partial_download_paths(builder) -> dict[str, bool]:
    """The folders a failed ``download_and_prepare`` may leave half-made, with
    whether each existed before the attempt."""
    version_dir = os.fspath(builder.data_dir)
    dataset_dir = os.path.dirname(version_dir)
    root = os.path.dirname(dataset_dir)
    name = os.path.basename(dataset_dir)
    downloads = os.path.join(root, "downloads")
    paths = [version_dir, dataset_dir, os.path.join(downloads, name)]
    paths += [os.path.join(downloads, "extracted"), downloads]  # children first
    return {p: os.path.exists(p) for p in paths}


def _listing(path: str) -> set[str]:
    return set(os.listdir(path)) if os.path.isdir(path) else set()


def _remove_partial(before: dict[str, bool], entries: dict[str, set[str]]) -> None:
    """Removes what a failed attempt left: a version folder without
    ``dataset_info.json``, unfinished ``*.tmp.*`` downloads, and the folders
    it created that are now empty. Finished downloads stay (reused later)."""
    version_dir = next(iter(before))
    if os.path.isdir(version_dir) and not os.path.exists(
        os.path.join(version_dir, "dataset_info.json")
    ):
        shutil.rmtree(version_dir, ignore_errors=True)
    for path in list(before)[1:]:
        for entry in _listing(path) - entries[path]:
            if ".tmp." in entry or entry.endswith(".incomplete"):
                target = os.path.join(path, entry)
                if os.path.isdir(target):
                    shutil.rmtree(target, ignore_errors=True)
                else:
                    os.remove(target)
    for path, existed in before.items():  # deepest first: children, then parent
        if not existed and os.path.isdir(path) and not os.listdir(path):
            os.rmdir(path)


def _download_and_prepare(builder) -> None:
    if builder.is_prepared():
        return
    before = _partial_download_paths(builder)
    entries = {path: _listing(path) for path in before}
    try:
        builder.download_and_prepare()
    except BaseException:
        _remove_partial(before, entries)
        raise


def load_split(
    name: str, split: str, data_dir: str | None = None, download: bool = False
) -> tf.data.Dataset:
    """``tfds.load(name, split, as_supervised=True)`` with a clear offline error.

    A failed download leaves no half-made ``<data_dir>/<name>/<version>``
    folder behind (a half-made one would make the next attempt fail with
    "has no dataset_info.json").
    """
    import tensorflow_datasets as tfds

    if data_dir is not None:
        data_dir = os.path.expanduser(data_dir)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        if download:  # else `as_dataset` says the data set is not prepared
            _download_and_prepare(builder)
        return builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
    except Exception as error:  # tfds raises AssertionError, OSError, ...
        where = data_dir or "the default tensorflow-datasets directory"
        hint = (
            "ImageNet needs a manual download: put ILSVRC2012_img_train.tar and "
            "ILSVRC2012_img_val.tar in <data_dir>/downloads/manual and run "
            "`tfds build imagenet2012 --data_dir <data_dir>`. "
            if name.startswith("imagenet")
            else ""
        )
        if isinstance(error, ImportError):
            hint += (
                "A package the tensorflow-datasets download needs is missing: "
                "install the study extra (`pip install keras-sam[study]`) to get it. "
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


def _with_label_noise(train, n: int, rate: float, classes: int, seed: int):
    """Seeded symmetric relabelling by example index (before any shuffle)."""
    shifts = tf.constant(label_noise.label_shifts(n, rate, classes, seed))

    def relabel(i, example):
        image, label = example
        label = tf.cast(label, tf.int64)
        return image, (label + tf.gather(shifts, i)) % classes

    return train.enumerate().map(relabel)


def _finish(
    train,
    test,
    batch_size,
    seed,
    num_train,
    num_test,
    train_map,
    test_map,
    noise=0.0,
    classes=10,
):
    _check_positive("batch_size", batch_size)
    _check_positive("num_train", num_train, allow_none=True)
    _check_positive("num_test", num_test, allow_none=True)
    noise = label_noise.check_rate(noise)
    if num_train is not None:
        train = train.take(num_train)
    if num_test is not None:
        test = test.take(num_test)
    n = _size(train)
    if noise:
        train = _with_label_noise(train, n, noise, classes, seed)
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
    label_noise: float = 0.0,
) -> tuple[tf.data.Dataset, tf.data.Dataset, int]:
    """MNIST scaled to [0, 1], shape (28, 28, 1), no augmentation.
    ``label_noise``: seeded symmetric noise on the training labels."""
    train = load_split("mnist", "train", data_dir, download)
    test = load_split("mnist", "test", data_dir, download)
    return _finish(
        train, test, batch_size, seed, num_train, num_test, _mnist_map, _mnist_map,
        label_noise,
    )  # fmt: skip


def _mnist_map(image, label):
    return tf.cast(image, tf.float32) / 255.0, tf.cast(label, tf.int32)


def _normalize(image, mean, std):
    image = tf.cast(image, tf.float32) / 255.0
    return (image - tf.constant(mean)) / tf.constant(std)


# The authors' code normalizes with these standard deviations (the usual
# CIFAR-10 recipe); the data set's per-channel ones are _CIFAR_STD.
_CIFAR_AUTHORS_STD = (0.2023, 0.1994, 0.2010)
CIFAR_PREPROCESSING = ("authors", "reflect")


def _cifar_std(preprocessing: str):
    if preprocessing not in CIFAR_PREPROCESSING:
        raise ValueError(
            f"`preprocessing` must be one of {list(CIFAR_PREPROCESSING)}, got "
            f"preprocessing={preprocessing!r}."
        )
    return _CIFAR_AUTHORS_STD if preprocessing == "authors" else _CIFAR_STD


def _cifar_test_map(preprocessing: str = "authors"):
    std = _cifar_std(preprocessing)

    def test_map(image, label):
        return _normalize(image, _CIFAR_MEAN, std), tf.cast(label, tf.int32)

    return test_map


def _cifar_train_map(preprocessing: str = "authors"):
    std = _cifar_std(preprocessing)

    def train_map(image, label):
        if preprocessing == "authors":  # zeros around the raw image, then scale
            image = tf.pad(image, [[4, 4], [4, 4], [0, 0]], mode="CONSTANT")
            image = tf.image.random_crop(image, (32, 32, 3))
            image = tf.image.random_flip_left_right(image)
            image = _normalize(image, _CIFAR_MEAN, std)
        else:
            image = _normalize(image, _CIFAR_MEAN, std)
            image = tf.pad(image, [[4, 4], [4, 4], [0, 0]], mode="REFLECT")
            image = tf.image.random_crop(image, (32, 32, 3))
            image = tf.image.random_flip_left_right(image)
        return image, tf.cast(label, tf.int32)

    return train_map


def cifar10(
    batch_size: int = 128,
    data_dir: str | None = None,
    download: bool = True,
    seed: int = 0,
    num_train: int | None = None,
    num_test: int | None = None,
    label_noise: float = 0.0,
    preprocessing: str = "authors",
) -> tuple[tf.data.Dataset, tf.data.Dataset, int]:
    """CIFAR-10; training: 4-pixel padding, random 32x32 crop, random
    horizontal flip; per-channel mean / std normalization.

    ``preprocessing="authors"`` (the paper's code): the raw image is padded
    with zeros (black), cropped and flipped, then normalized with std
    (0.2023, 0.1994, 0.2010). ``"reflect"``: normalized first with the data
    set's std (0.2470, 0.2435, 0.2616), then reflect-padded (no black
    border). ``label_noise``: seeded symmetric noise on the training labels.
    """
    train_map, test_map = (
        _cifar_train_map(preprocessing),
        _cifar_test_map(preprocessing),
    )
    train = load_split("cifar10", "train", data_dir, download)
    test = load_split("cifar10", "test", data_dir, download)
    return _finish(
        train, test, batch_size, seed, num_train, num_test, train_map, test_map,
        label_noise,
    )  # fmt: skip


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
    label_noise: float = 0.0,
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

    test_map = _imagenet_test_map(image_size)
    train = load_split("imagenet2012", "train", data_dir, download)
    test = load_split("imagenet2012", "validation", data_dir, download)
    return _finish(
        train, test, batch_size, seed, num_train, num_test, train_map, test_map,
        label_noise, classes=1000,
    )  # fmt: skip


def _imagenet_test_map(image_size: int):
    def test_map(image, label):
        image = _center_crop(image, image_size)
        image = (image / 255.0 - _IMAGENET_MEAN) / _IMAGENET_STD
        return tf.cast(image, tf.float32), tf.cast(label, tf.int32)

    return test_map


_SAMPLE_SOURCES = {
    "mnist": ("mnist", lambda size, prep: _mnist_map),
    "cifar10": ("cifar10", lambda size, prep: _cifar_test_map(prep or "authors")),
    "imagenet": ("imagenet2012", lambda size, prep: _imagenet_test_map(size or 224)),
}


def train_sample(
    name: str,
    n: int,
    seed: int = 0,
    num_train: int | None = None,
    data_dir: str | None = None,
    download: bool = False,
    image_size: int | None = None,
    preprocessing: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` training examples drawn uniformly without replacement, as arrays.

    The sample is deterministic: indices ``numpy.random.default_rng(seed)
    .choice(N, n, replace=False)`` (sorted) into the first ``N = num_train``
    examples of the ``train`` split in its stored order (files not
    shuffled), with the evaluation preprocessing (no augmentation). It
    does not depend on how often the shuffled training pipeline was
    iterated. ``name`` is ``"mnist"``, ``"cifar10"`` or ``"imagenet"``.
    The split is read once up to the largest drawn index (seconds for
    MNIST / CIFAR-10, a full decoding pass for ImageNet).

    ```python
    x, y = train_sample("mnist", 1000, seed=0)   # the stability sample
    ```
    """
    if name not in _SAMPLE_SOURCES:
        raise ValueError(
            f"`name` must be one of {sorted(_SAMPLE_SOURCES)}, got name={name!r}."
        )
    _check_positive("n", n)
    _check_positive("num_train", num_train, allow_none=True)
    tfds_name, make_map = _SAMPLE_SOURCES[name]
    split = load_split(tfds_name, "train", data_dir, download)
    if num_train is not None:
        split = split.take(num_train)
    total = _size(split)
    rng = np.random.default_rng(seed)
    index = np.sort(rng.choice(total, size=min(n, total), replace=False))
    mask = np.zeros(int(index[-1]) + 1, dtype=bool)
    mask[index] = True
    keep, prep = tf.constant(mask), make_map(image_size, preprocessing)
    chosen = (
        split.take(len(mask))
        .enumerate()
        .filter(lambda i, example: tf.gather(keep, i))
        .map(lambda i, example: prep(*example))
        .batch(256)
    )
    xs, ys = [], []
    for x, y in chosen:
        xs.append(x.numpy())
        ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(ys)

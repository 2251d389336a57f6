import numpy as np
import pytest
import tensorflow_datasets as tfds

from keras_sam.study import workloads
from keras_sam.study.workloads import DatasetUnavailableError


def _first(ds):
    x, y = next(iter(ds))
    return np.asarray(x), np.asarray(y)


def test_mnist_pipeline_on_mock_data():
    with tfds.testing.mock_data(num_examples=20):
        train, test, n = workloads.mnist(batch_size=8, num_train=16)
        x, y = _first(train)
        xt, _ = _first(test)
    assert n == 16
    assert x.shape == (8, 28, 28, 1) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert y.dtype == np.int32 and xt.shape[1:] == (28, 28, 1)


def test_cifar10_pipeline_is_standardized_and_augmented():
    with tfds.testing.mock_data(num_examples=16):
        train, test, n = workloads.cifar10(batch_size=16, seed=0)
        a, _ = _first(train)
        b, _ = _first(train)  # reshuffled, re-cropped
        t1, _ = _first(test)
        t2, _ = _first(test)
    assert n == 16 and a.shape == (16, 32, 32, 3)
    assert abs(float(t1.mean())) < 0.5  # uint8 noise standardized
    np.testing.assert_array_equal(t1, t2)  # evaluation is deterministic
    assert not np.array_equal(np.sort(a.ravel()), np.sort(b.ravel()))


def test_imagenet_pipeline_resizes_to_image_size():
    with tfds.testing.mock_data(num_examples=4):
        train, test, n = workloads.imagenet(batch_size=2, image_size=40)
        x, y = _first(train)
        xt, _ = _first(test)
    assert x.shape == (2, 40, 40, 3) and xt.shape == (2, 40, 40, 3)
    assert n == 4 and y.max() < 1000


def test_missing_dataset_names_data_dir(tmp_path):
    with pytest.raises(DatasetUnavailableError, match="--data-dir"):
        workloads.mnist(data_dir=str(tmp_path), download=False)


def test_missing_imagenet_explains_manual_download(tmp_path):
    with pytest.raises(DatasetUnavailableError, match="manual"):
        workloads.imagenet(data_dir=str(tmp_path))


def test_bad_batch_size():
    with tfds.testing.mock_data(num_examples=4):
        with pytest.raises(ValueError, match="batch_size"):
            workloads.mnist(batch_size=0)


def test_train_sample_is_a_seeded_unaugmented_sample():
    with tfds.testing.mock_data(num_examples=40):
        x, y = workloads.train_sample("cifar10", 8, seed=3, num_train=32)
        x2, y2 = workloads.train_sample("cifar10", 8, seed=3, num_train=32)
        x_other, _ = workloads.train_sample("cifar10", 8, seed=4, num_train=32)
        raw = tfds.load("cifar10", split="train", as_supervised=True)
        labels = np.array([int(label) for _, label in raw.take(32)])
        xm, ym = workloads.train_sample("mnist", 100, seed=0, num_train=32)
    np.testing.assert_array_equal(x, x2)  # deterministic, no augmentation
    np.testing.assert_array_equal(y, y2)
    assert x.shape == (8, 32, 32, 3) and x.dtype == np.float32
    index = np.sort(np.random.default_rng(3).choice(32, 8, replace=False))
    np.testing.assert_array_equal(y, labels[index])
    assert not np.array_equal(x, x_other)
    assert xm.shape == (32, 28, 28, 1) and 0.0 <= xm.min() and xm.max() <= 1.0
    with pytest.raises(ValueError, match="name"):
        workloads.train_sample("svhn", 4)

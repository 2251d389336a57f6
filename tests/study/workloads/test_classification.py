"""The synthetic classification stand-in and seeded symmetric label noise
(array workload and tfds loaders)."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from keras_sam.study import workloads
from keras_sam.study.workloads import datasets, get_preset, get_workload, label_noise
from keras_sam.study.workloads.classification import (
    classifier_student,
    classifier_student_params,
    teacher_classification,
)


def test_label_noise_flips_exactly_that_fraction_to_other_classes():
    y = np.arange(1000) % 10
    noisy = label_noise.corrupt(y, 0.3, classes=10, seed=4)
    assert (noisy != y).sum() == 300 and noisy.dtype == y.dtype
    assert set(np.unique(noisy)) == set(range(10))
    np.testing.assert_array_equal(noisy, label_noise.corrupt(y, 0.3, 10, seed=4))
    assert not np.array_equal(noisy, label_noise.corrupt(y, 0.3, 10, seed=5))
    # Symmetric: the wrong labels spread over the 9 other classes.
    shifts = label_noise.label_shifts(90_000, 0.5, 10, seed=0)
    counts = np.bincount(shifts[shifts > 0], minlength=10)[1:]
    assert counts.min() > 0.9 * counts.mean()
    for bad in (1.0, -0.1, True, "0.2"):
        with pytest.raises(ValueError, match="label_noise"):
            label_noise.corrupt(y, bad, 10)


def test_teacher_labels_are_balanced_and_test_labels_stay_clean():
    (x, y), (xt, yt) = teacher_classification(num_train=2000, num_test=500, seed=1)
    (x2, y2), (xt2, yt2) = teacher_classification(
        num_train=2000, num_test=500, seed=1, label_noise=0.25
    )
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(yt, yt2)  # test labels clean
    assert (y != y2).mean() == pytest.approx(0.25)
    counts = np.bincount(y, minlength=10)
    assert counts.min() > 0.4 * counts.mean() and x.shape == (2000, 100)
    model = classifier_student(32, seed=0)
    assert model.count_params() == classifier_student_params(32) == 3562
    w = get_workload("synthetic-classification")
    assert w.metric == "test_accuracy" and w.count_params(32) == 3562


def test_tfds_label_noise_is_seeded_before_the_shuffle_and_spares_the_test_set():
    labels = np.arange(200) % 10
    images = np.arange(200, dtype=np.uint8).reshape(200, 1, 1, 1)
    split = tf.data.Dataset.from_tensor_slices((images, labels))

    def load(rate, seed):
        train, test, _ = datasets._finish(
            split, split, 200, seed, None, None, _index, _index, rate
        )
        (x, y), (_, yt) = next(iter(train)), next(iter(test))
        return x.numpy(), y.numpy(), yt.numpy()

    x, y, yt = load(0.5, seed=3)
    np.testing.assert_array_equal(yt, labels)  # test labels clean
    expected = label_noise.corrupt(labels, 0.5, 10, seed=3)
    np.testing.assert_array_equal(y, expected[x])  # by example, not by position
    assert (y != labels[x]).sum() == 100
    x2, y2, _ = load(0.5, seed=3)  # a fresh pipeline: same labels per example
    np.testing.assert_array_equal(y2, expected[x2])
    x0, y0, _ = load(0.0, seed=3)
    np.testing.assert_array_equal(y0, labels[x0])


def _index(image, label):
    return tf.reshape(tf.cast(image, tf.int64), ()), tf.cast(label, tf.int32)


def test_tfds_loaders_take_label_noise():
    with tfds.testing.mock_data(num_examples=20):
        _, _, n = workloads.mnist(batch_size=8, label_noise=0.2)
        _, _, m = workloads.cifar10(batch_size=8, label_noise=0.2)
    assert n == m == 20


def test_label_noise_preset_field():
    preset = get_preset("synthetic-classification", "noise")
    assert preset.label_noise == 0.4 and preset.training_config()["label_noise"] == 0.4
    assert "label_noise" not in get_preset("cifar10", "paper").training_config()
    with pytest.raises(ValueError, match="label_noise"):
        get_preset("synthetic", "quick").replace(label_noise=0.2)
    with pytest.raises(ValueError, match="label_noise"):
        get_preset("cifar10", "quick").replace(label_noise=1.5)

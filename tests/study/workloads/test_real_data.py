"""The offline real data sets (MNIST-1D generated from the mnist1d package's
templates, scikit-learn's digits) and their MLP / 1-D CNN builders."""

import importlib.util
import os
import random
import socket
import sys

import numpy as np
import pytest

from keras_sam.study.workloads import (
    DatasetUnavailableError,
    digits_data,
    get_preset,
    get_workload,
    mnist1d_data,
    signal_nets,
)
from keras_sam.study.workloads.resnet import trainable_params

WATCHED = ("mnist1d", "matplotlib", "requests")


def _watched_modules():
    return {m for m in sys.modules if m.split(".")[0] in WATCHED}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """One fresh MNIST-1D generation (caches cleared) in an empty working
    directory, with the network blocked and the global random states
    seeded; returns what each guard saw."""
    cwd = tmp_path_factory.mktemp("cwd")
    mnist1d_data._mnist1d_data_module.cache_clear()
    mnist1d_data._standard_arrays.cache_clear()
    previous_dir, previous_socket = os.getcwd(), socket.socket
    attempts = []

    def no_network(*args, **kwargs):
        attempts.append(args)
        raise OSError("network blocked by the test")

    random.seed(11)
    np.random.seed(13)
    expected = (random.random(), np.random.rand())
    random.seed(11)
    np.random.seed(13)
    modules = _watched_modules()
    package = mnist1d_data._package_dir()
    package_files = sorted(os.walk(package))
    os.chdir(cwd)
    socket.socket = no_network
    try:
        arrays = mnist1d_data.mnist1d_arrays()
    finally:
        socket.socket = previous_socket
        os.chdir(previous_dir)
    return {
        "arrays": arrays,
        "draws": (random.random(), np.random.rand()),
        "expected": expected,
        "files": os.listdir(cwd),
        "package_unchanged": sorted(os.walk(package)) == package_files,
        "network": attempts,
        "new_modules": _watched_modules() - modules,
    }


def test_mnist1d_is_the_standard_split(generated):
    (x, y), (x_test, y_test) = generated["arrays"]
    assert x.shape == (4000, 40) and x_test.shape == (1000, 40)
    assert y.shape == (4000,) and y_test.shape == (1000,)
    assert x.dtype == np.float32 and y.dtype == np.int32
    assert set(np.unique(y)) == set(range(10)) == set(np.unique(y_test))
    counts = np.bincount(np.concatenate([y, y_test]))
    assert (counts == 500).all()  # 5,000 examples, 500 per class, shuffled
    # The generator standardizes the 5,000 signals together.
    everything = np.concatenate([x, x_test])
    assert abs(everything.mean()) < 1e-4 and abs(everything.std() - 1) < 1e-4
    assert not np.array_equal(y[:100], np.sort(y[:100]))


def test_mnist1d_generation_leaves_no_trace(generated):
    assert generated["draws"] == generated["expected"]  # global states restored
    assert generated["files"] == []  # nothing in the working directory
    assert generated["package_unchanged"]  # no .pyc, no pickle next to mnist1d
    assert generated["network"] == []  # never opened a socket
    assert generated["new_modules"] == set()  # no mnist1d / matplotlib / requests


def test_mnist1d_is_deterministic_and_callers_get_copies(generated):
    (x, y), (x_test, y_test) = generated["arrays"]
    (x2, y2), (xt2, yt2) = mnist1d_data.mnist1d_arrays()
    for a, b in [(x, x2), (y, y2), (x_test, xt2), (y_test, yt2)]:
        np.testing.assert_array_equal(a, b)
    x2[0] = 99.0
    assert mnist1d_data.mnist1d_arrays()[0][0][0, 0] != 99.0
    (x3, _), (xt3, _) = mnist1d_data.mnist1d_arrays(num_train=100, num_test=10)
    np.testing.assert_array_equal(x3, x[:100])
    np.testing.assert_array_equal(xt3, x_test[:10])


def test_mnist1d_stand_ins_refuse_use():
    data = mnist1d_data._mnist1d_data_module()
    with pytest.raises(RuntimeError, match="without requests"):
        data.requests.get("https://example.com")
    with pytest.raises(RuntimeError, match="without matplotlib"):
        data.from_pickle.__globals__["plt"].figure()


@pytest.mark.parametrize("rate", [0.15, 0.4])
def test_mnist1d_label_noise_flips_exactly_that_many(generated, rate):
    (x, y), (_, y_test) = generated["arrays"]
    (xn, yn), (_, yt) = mnist1d_data.mnist1d_arrays(label_noise=rate, seed=1)
    np.testing.assert_array_equal(xn, x)
    np.testing.assert_array_equal(yt, y_test)  # test labels stay clean
    assert (yn != y).sum() == round(rate * 4000)
    (_, again), _ = mnist1d_data.mnist1d_arrays(label_noise=rate, seed=1)
    (_, other), _ = mnist1d_data.mnist1d_arrays(label_noise=rate, seed=2)
    np.testing.assert_array_equal(again, yn)
    assert not np.array_equal(other, yn)


def test_digits_split_is_fixed_stratified_and_seeded():
    (x, y), (x_test, y_test) = digits_data.digits_arrays()
    assert x.shape == (1347, 64) and x_test.shape == (450, 64)
    assert x.dtype == np.float32 and y.dtype == np.int32
    assert 0.0 <= x.min() and x.max() == 1.0
    # Every image in exactly one split.
    images = np.concatenate([x, x_test])
    assert len(np.unique(images, axis=0)) == len(
        np.unique(digits_data._load()[0], axis=0)
    )
    _, labels = digits_data._load()
    train, test = digits_data.split_indices(labels, 0, 0.25)
    assert sorted(np.concatenate([train, test])) == list(range(1797))
    for c in range(10):
        members = (labels == c).sum()
        assert (labels[test] == c).sum() == round(0.25 * members)
    (x2, _), _ = digits_data.digits_arrays()
    (x3, _), _ = digits_data.digits_arrays(seed=1)
    np.testing.assert_array_equal(x, x2)
    assert not np.array_equal(x, x3)


def test_digits_label_noise_counts():
    (x, y), (_, y_test) = digits_data.digits_arrays()
    (xn, yn), (_, yt) = digits_data.digits_arrays(label_noise=0.4)
    np.testing.assert_array_equal(xn, x)
    np.testing.assert_array_equal(yt, y_test)
    assert (yn != y).sum() == round(0.4 * 1347)


def test_missing_packages_name_the_extra(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def without_mnist1d(name, *args):
        return None if name == "mnist1d" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_mnist1d)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import fails
    for cached in (
        mnist1d_data._mnist1d_data_module,
        mnist1d_data._standard_arrays,
        digits_data._load,
    ):
        cached.cache_clear()
    try:
        for name in ("mnist1d", "digits-cnn"):
            with pytest.raises(DatasetUnavailableError, match=r"keras-sam\[study\]"):
                get_workload(name).load()
    finally:
        for cached in (
            mnist1d_data._mnist1d_data_module,
            mnist1d_data._standard_arrays,
            digits_data._load,
        ):
            cached.cache_clear()


@pytest.mark.parametrize(
    "name, size, expected",
    [
        # The MNIST-1D benchmark's models (PyTorch counts): MLPBase(hidden 100)
        # and ConvBase(channels 25, linear_in 125).
        ("mnist1d", 100, 40 * 100 + 100 + 100 * 100 + 100 + 100 * 10 + 10),
        ("mnist1d-cnn", 25, (5 + 1) * 25 + 2 * (3 * 25 + 1) * 25 + 125 * 10 + 10),
        ("mnist1d", 3, None),
        ("mnist1d-cnn", 2, None),
        ("digits", 16, None),
        ("digits-cnn", 7, (5 + 1) * 7 + 2 * (3 * 7 + 1) * 7 + 8 * 7 * 10 + 10),
    ],
)
def test_built_models_have_the_counted_parameters(name, size, expected):
    workload = get_workload(name)
    model = workload.build(size, seed=0, init="lecun")
    assert trainable_params(model) == workload.count_params(size)
    if expected is not None:
        assert workload.count_params(size) == expected
    length = 40 if name.startswith("mnist1d") else 64
    x = np.zeros((3, length), "float32")
    assert tuple(model(x).shape) == (3, 10)


def test_seeded_builders_repeat_and_layers_differ():
    a = signal_nets.signal_cnn(8, seed=3)
    b = signal_nets.signal_cnn(8, seed=3)
    for u, v in zip(a.weights, b.weights):
        np.testing.assert_array_equal(u.numpy(), v.numpy())
    k2, k3 = (w.numpy() for w in a.weights if w.shape == (3, 8, 8))
    assert not np.allclose(k2, k3)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: signal_nets.signal_mlp(0), "width"),
        (lambda: signal_nets.signal_cnn_params(2.5), "channels"),
        (lambda: signal_nets.signal_cnn(4, length=2), "length"),
        (lambda: mnist1d_data.mnist1d_arrays(label_noise=1.0), "label_noise"),
        (lambda: digits_data.digits_arrays(test_fraction=1.0), "test_fraction"),
    ],
)
def test_bad_arguments_name_themselves(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_presets_follow_the_paper_protocol():
    threshold = get_workload("mnist1d").count_params(64)  # interpolates at 100 ep.
    for workload in ("mnist1d", "digits", "mnist1d-cnn"):
        preset = get_preset(workload, "paper")
        assert len(preset.sizes) >= 5 and len(preset.seeds) >= 3
        assert len(preset.rhos) >= 3 and preset.eval_every_epoch
        assert (preset.momentum, preset.schedule, preset.lr) == (0.9, "step3", 0.1)
    sizes = get_preset("mnist1d", "paper").sizes
    w = get_workload("mnist1d")
    assert w.count_params(min(sizes)) < threshold
    assert w.count_params(max(sizes)) >= 100 * threshold
    assert 100 in sizes  # the published MLP
    assert get_preset("mnist1d", "noise").label_noise == 0.15
    assert get_preset("mnist1d", "sparse").sparse_budget == 64


def test_tiny_sweep_records_best_and_final_accuracy(tmp_path):
    from keras_sam.study.sweep import run_sweep
    from keras_sam.study.sweep.results import read_folder

    preset = get_preset("mnist1d", "quick").replace(
        sizes=(4,), epochs=2, num_train=256, num_test=128, label_noise=0.15
    )
    run_sweep(preset, str(tmp_path), make_plots=False)
    records = read_folder(str(tmp_path))
    assert len(records) == 2 and all(r["status"] == "ok" for r in records)
    for r in records:
        scores = r["scores"]
        assert 0.0 <= scores["test_accuracy"] <= scores["best_epoch_test_accuracy"]
        assert len(r["history"]["val_accuracy"]) == 2
    text = (tmp_path / "summary.md").read_text()
    assert "Best epoch's test accuracy" in text and "final train accuracy" in text

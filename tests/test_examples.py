"""Each example script trains end to end on mock or generated data."""

import importlib
import os
import sys

import pytest
import tensorflow_datasets as tfds

from keras_sam.study.workloads import get_preset
from keras_sam.study.workloads.registry import Workload

pytestmark = pytest.mark.backend_independent

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples")
TINY = ["--epochs", "1", "--batch-size", "8", "--num-train", "16", "--num-test", "8"]


@pytest.fixture
def example(monkeypatch):
    monkeypatch.syspath_prepend(EXAMPLES)

    def load(name):
        sys.modules.pop(name, None)
        return importlib.import_module(name)

    return load


@pytest.fixture
def built_with(monkeypatch):
    """The options each `Workload.build` call got, by workload name."""
    calls = {}
    build = Workload.build

    def recording(self, size, seed=None, **options):
        calls[self.name] = options
        return build(self, size, seed=seed, **options)

    monkeypatch.setattr(Workload, "build", recording)
    return calls


def test_synthetic_example(example, built_with):
    scores = example("synthetic").main(
        ["--hidden", "8", "--optimizer", "sgd", "--verbose", "0", *TINY]
    )
    assert scores["loss"] > 0
    # The paper preset's model (the PyTorch-default student), not the default.
    assert built_with["synthetic"] == {"init": "torch"}
    assert get_preset("synthetic", "paper").model_options == {"init": "torch"}


def test_mnist_example_with_mirrored_strategy(example, capsys, built_with):
    with tfds.testing.mock_data(num_examples=16):
        scores = example("mnist").main(
            ["--width", "0.05", "--strategy", "mirrored", "--verbose", "0", *TINY]
        )
    assert 0.0 <= scores["accuracy"] <= 1.0
    assert "1 replica(s)" in capsys.readouterr().out
    assert built_with["mnist"] == get_preset("mnist", "paper").model_options
    assert built_with["mnist"] == {"init": "lecun"}


def test_cifar10_example_asam_per_replica(example, capsys):
    # Under a strategy, where per-replica eps applies (and where Keras builds
    # the optimizer before tracing the train step: traced once, not twice).
    with tfds.testing.mock_data(num_examples=16):
        scores = example("cifar10").main(
            ["--base-filters", "2", "--optimizer", "asam", "--rho", "0.5",
             "--replica-eps", "per_replica", "--strategy", "mirrored",
             "--verbose", "0", *TINY]
        )  # fmt: skip
    assert 0.0 <= scores["accuracy"] <= 1.0
    assert "asam rho=0.5, 1 epochs, 1 replica(s)" in capsys.readouterr().out


def test_imagenet_example(example, built_with):
    # Under a strategy, as the CIFAR-10 test: Keras builds the optimizer before
    # it traces ResNet-50's train step (once, not twice). Without a strategy:
    # test_synthetic_example, and tfds data by the sweep's tests
    # (tests/study/sweep/test_runner.py: mnist on mock data).
    with tfds.testing.mock_data(num_examples=8):
        scores = example("imagenet").main(
            ["--base-filters", "1", "--image-size", "32", "--optimizer", "sgd",
             "--strategy", "mirrored", "--verbose", "0", *TINY]
        )  # fmt: skip
    assert scores["loss"] > 0
    options = get_preset("imagenet", "paper").model_options
    assert built_with["imagenet"] == {**options, "image_size": 32}


def test_examples_reject_unknown_optimizer(example):
    with pytest.raises(SystemExit):
        example("mnist").main(["--optimizer", "adam"])

"""Each example script trains end to end on mock or generated data."""

import importlib
import os
import sys

import pytest
import tensorflow_datasets as tfds

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples")
TINY = ["--epochs", "1", "--batch-size", "8", "--num-train", "16", "--num-test", "8"]


@pytest.fixture
def example(monkeypatch):
    monkeypatch.syspath_prepend(EXAMPLES)

    def load(name):
        sys.modules.pop(name, None)
        return importlib.import_module(name)

    return load


def test_synthetic_example(example):
    scores = example("synthetic").main(
        ["--hidden", "8", "--optimizer", "sgd", "--verbose", "0", *TINY]
    )
    assert scores["loss"] > 0


def test_mnist_example_with_mirrored_strategy(example, capsys):
    with tfds.testing.mock_data(num_examples=16):
        scores = example("mnist").main(
            ["--width", "0.05", "--strategy", "mirrored", "--verbose", "0", *TINY]
        )
    assert 0.0 <= scores["accuracy"] <= 1.0
    assert "1 replica(s)" in capsys.readouterr().out


def test_cifar10_example_asam_per_replica(example):
    with tfds.testing.mock_data(num_examples=16):
        scores = example("cifar10").main(
            ["--base-filters", "2", "--optimizer", "asam", "--rho", "0.5",
             "--replica-eps", "per_replica", "--verbose", "0", *TINY]
        )  # fmt: skip
    assert 0.0 <= scores["accuracy"] <= 1.0


def test_imagenet_example(example):
    with tfds.testing.mock_data(num_examples=8):
        scores = example("imagenet").main(
            [
                "--base-filters",
                "1",
                "--image-size",
                "32",
                "--optimizer",
                "sgd",
                "--verbose",
                "0",
                *TINY,
            ]  # fmt: skip
        )
    assert scores["loss"] > 0


def test_examples_reject_unknown_optimizer(example):
    with pytest.raises(SystemExit):
        example("mnist").main(["--optimizer", "adam"])

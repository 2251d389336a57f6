"""Parameter counts against the paper's numbers (paper.md, Section 4)."""

import pytest

from keras_sam.study.workloads import (
    get_workload,
    lenet_300_100,
    lenet_300_100_params,
    resnet18_cifar,
    resnet18_params,
    resnet50,
    resnet50_params,
    student,
    trainable_params,
)

# (size, paper's count as printed, number of decimals printed)
MNIST = [(0.25, 61e3, -3), (0.5, 126e3, -3), (1, 267e3, -3), (4, 1.43e6, -4)]
MNIST += [(10, 5.37e6, -4)]
CIFAR = [(4, 0.045e6, -3), (8, 0.18e6, -4), (16, 0.70e6, -4), (32, 2.8e6, -5)]
CIFAR += [(64, 11.2e6, -5), (128, 44.7e6, -5), (256, 178.6e6, -5)]
IMAGENET = [(16, 2.0e6, -5), (32, 6.9e6, -5), (48, 14.8e6, -5), (64, 25.6e6, -5)]
IMAGENET += [(80, 39.3e6, -5)]


@pytest.mark.parametrize("width, paper, digits", MNIST)
def test_lenet_matches_paper(width, paper, digits):
    h1, h2 = round(300 * width), round(100 * width)
    by_hand = 784 * h1 + h1 + h1 * h2 + h2 + h2 * 10 + 10
    assert lenet_300_100_params(width) == by_hand
    assert round(by_hand, digits) == paper


@pytest.mark.parametrize("filters, paper, digits", CIFAR)
def test_resnet18_matches_paper(filters, paper, digits):
    assert round(resnet18_params(filters), digits) == pytest.approx(paper)


@pytest.mark.parametrize("filters, paper, digits", IMAGENET)
def test_resnet50_matches_paper(filters, paper, digits):
    assert round(resnet50_params(filters), digits) == pytest.approx(paper)


def test_standard_widths_are_the_textbook_models():
    # Well-known counts: CIFAR ResNet-18 (Kuang Liu) and torchvision ResNet-50.
    assert resnet18_params(64) == 11_173_962
    assert resnet50_params(64) == 25_557_032


@pytest.mark.parametrize("width", [0.25, 1, 4])
def test_built_lenet_has_the_counted_parameters(width):
    assert lenet_300_100(width).count_params() == lenet_300_100_params(width)


@pytest.mark.parametrize("filters", [4, 8])
def test_built_resnet18_has_the_counted_parameters(filters):
    model = resnet18_cifar(filters)
    assert trainable_params(model) == resnet18_params(filters)
    assert model.output.shape == (None, 10)


def test_built_resnet50_has_the_counted_parameters():
    model = resnet50(16, input_shape=(64, 64, 3))
    assert trainable_params(model) == resnet50_params(16)


@pytest.mark.parametrize("name", ["synthetic", "matrix-factorization", "mnist"])
def test_registry_counts_equal_built_models(name):
    workload = get_workload(name)
    size = {"synthetic": 30, "matrix-factorization": 4, "mnist": 0.25}[name]
    assert trainable_params(workload.build(size, seed=0)) == workload.count_params(size)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: lenet_300_100_params(0), "width"),
        (lambda: resnet18_params(2.5), "base_filters"),
        (lambda: resnet50(0), "base_filters"),
        (lambda: get_workload("svhn"), "workload"),
        (lambda: get_workload("synthetic").count_params(2.5), "hidden"),
        (lambda: student(4, input_scale=0.0), "input_scale"),
    ],
)
def test_bad_sizes(call, name):
    with pytest.raises(ValueError, match=name):
        call()

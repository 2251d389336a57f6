"""The workload ``cifar10``: CIFAR-10 (tensorflow-datasets) with ResNet-18 of
base filters 2^k, and its presets (the paper's Section 4)."""

from __future__ import annotations

from keras_sam.study.workloads.presets import AUTHORS_TRAINING, LECUN_INIT, Preset
from keras_sam.study.workloads.workload import (
    MODEL_INITS,
    Workload,
    accuracy,
    as_int,
    classification_loss,
    one_hot_mse,
    tfds_load,
)

_filters = as_int("base_filters")


def build(base_filters, seed=None, init="he"):
    """`resnet.resnet18_cifar` with ``base_filters`` filters in its first stage."""
    from keras_sam.study.workloads import resnet

    return resnet.resnet18_cifar(_filters(base_filters), seed=seed, init=init)


def count_params(base_filters) -> int:
    from keras_sam.study.workloads import resnet

    return resnet.resnet18_params(_filters(base_filters))


WORKLOAD = Workload(
    name="cifar10",
    description="CIFAR-10, ResNet-18 with base filters 2^k",
    size_name="base_filters",
    metric="test_accuracy",
    build_fn=build,
    count_fn=count_params,
    load_fn=tfds_load("cifar10", "cifar10"),
    loss_fn=classification_loss,
    metrics_fn=accuracy,
    squared_loss_fn=one_hot_mse,
    inits=MODEL_INITS,
)

_CIFAR = dict(
    AUTHORS_TRAINING,
    weight_decay=5e-4,
    model_options=LECUN_INIT,
    data_options={"preprocessing": "authors"},
)

PRESETS = [
    Preset(
        "cifar10",
        "paper",
        sizes=tuple(2**k for k in range(2, 9)),
        rhos=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
        epochs=200,
        **_CIFAR,
    ),
    # ~701k non-zero weights (16 filters); 24 / 32 / 64 filters at
    # sparsity ~0.56 / 0.75 / 0.94 as in the paper.
    Preset(
        "cifar10",
        "sparse",
        sizes=(16, 24, 32, 64),
        rhos=(0.01, 0.02, 0.05, 0.1, 0.2),
        epochs=200,
        sparse_budget=16,
        **_CIFAR,
    ),
    Preset(
        "cifar10",
        "quick",
        sizes=(4, 8),
        rhos=(0.05,),
        seeds=(0,),
        epochs=2,
        num_train=5_000,
        **_CIFAR,
        num_test=2_000,
        keras_verbose=0,
    ),
]

"""The workload ``mnist``: MNIST (tensorflow-datasets) with LeNet-300-100 of
hidden widths [300p, 100p], and its presets (the paper's Section 4)."""

from __future__ import annotations

from keras_sam.study.workloads.presets import LECUN_INIT, MNIST_PROTOCOL, Preset
from keras_sam.study.workloads.workload import (
    MODEL_INITS,
    Workload,
    accuracy,
    classification_loss,
    one_hot_mse,
    tfds_load,
)


def build(width, seed=None, init="he"):
    """`mlp.lenet_300_100` of width factor ``width``."""
    from keras_sam.study.workloads import mlp

    return mlp.lenet_300_100(width, seed=seed, init=init)


def count_params(width) -> int:
    from keras_sam.study.workloads import mlp

    return mlp.lenet_300_100_params(width)


WORKLOAD = Workload(
    name="mnist",
    description="MNIST, LeNet-300-100 with hidden [300p, 100p]",
    size_name="width",
    metric="test_accuracy",
    build_fn=build,
    count_fn=count_params,
    load_fn=tfds_load("mnist", "mnist"),
    loss_fn=classification_loss,
    metrics_fn=accuracy,
    squared_loss_fn=one_hot_mse,
    inits=MODEL_INITS,
)

PRESETS = [
    Preset(
        "mnist",
        "paper",
        sizes=(0.25, 0.5, 1.0, 4.0, 10.0),
        rhos=(0.01, 0.02, 0.05, 0.1, 0.2),
        epochs=100,
        **MNIST_PROTOCOL,
    ),
    # ~61k non-zero weights; sparsity 0.52 / 0.77 / 0.96 as in the paper.
    Preset(
        "mnist",
        "sparse",
        sizes=(0.25, 0.5, 1.0, 4.0),
        rhos=(0.01, 0.02, 0.05, 0.1, 0.2),
        epochs=100,
        sparse_budget=0.25,
        **MNIST_PROTOCOL,
    ),
    Preset(
        "mnist",
        "quick",
        sizes=(0.25, 1.0),
        rhos=(0.05,),
        seeds=(0,),
        epochs=2,
        num_train=10_000,
        **MNIST_PROTOCOL,
        keras_verbose=0,
    ),
    # Linear stability (paper Fig. 6a/b): the 5.37m MLP, squared loss,
    # constant lr 0.1, plain SGD, trained to ~0 loss; sharpness and s2
    # on 1000 random training examples. 200 epochs: twice the paper's
    # budget, as plain SGD on a mean-over-classes squared loss converges
    # slowly (check the training loss in convergence.png).
    Preset(
        "mnist",
        "stability",
        sizes=(10.0,),
        rhos=(0.01, 0.02, 0.05, 0.1, 0.2),
        seeds=(0,),
        epochs=200,
        batch_size=128,
        lr=0.1,
        momentum=0.0,
        schedule="constant",
        weight_decay=0.0,
        model_options=LECUN_INIT,
        loss="squared",
        hessian=True,
        hessian_examples=1000,
    ),
]

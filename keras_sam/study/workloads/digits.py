"""The workloads ``digits`` and ``digits-cnn``: scikit-learn's digits (1,347 /
450 8x8 images as 64 inputs, `digits_data`) with a 2-hidden-layer ReLU MLP of
width w and a 3-layer 1-D CNN of c channels (`signal_nets`), and their
presets."""

from __future__ import annotations

from keras_sam.study.workloads import digits_data
from keras_sam.study.workloads.presets import REAL_DATA_QUICK, Preset, signal_presets
from keras_sam.study.workloads.workload import (
    MODEL_INITS,
    Workload,
    accuracy,
    classification_loss,
    offline_load,
    one_hot_mse,
)

_DATA = "scikit-learn digits (1,347 / 450 8x8 images as 64 inputs)"
load = offline_load(digits_data.digits_arrays)


def build_mlp(width, seed=None, init="he"):
    from keras_sam.study.workloads import signal_nets

    return signal_nets.signal_mlp(
        width, input_dim=digits_data.PIXELS, seed=seed, init=init
    )


def count_mlp(width) -> int:
    from keras_sam.study.workloads import signal_nets

    return signal_nets.signal_mlp_params(width, input_dim=digits_data.PIXELS)


def build_cnn(channels, seed=None, init="he"):
    from keras_sam.study.workloads import signal_nets

    return signal_nets.signal_cnn(
        channels, length=digits_data.PIXELS, seed=seed, init=init
    )


def count_cnn(channels) -> int:
    from keras_sam.study.workloads import signal_nets

    return signal_nets.signal_cnn_params(channels, length=digits_data.PIXELS)


_CLASSIFIER = dict(
    load_fn=load,
    loss_fn=classification_loss,
    metrics_fn=accuracy,
    squared_loss_fn=one_hot_mse,
    inits=MODEL_INITS,
)
WORKLOADS = [
    Workload(
        name="digits",
        description=f"{_DATA}, 2-hidden-layer ReLU MLP of width w",
        size_name="width",
        metric="test_accuracy",
        build_fn=build_mlp,
        count_fn=count_mlp,
        **_CLASSIFIER,
    ),
    Workload(
        name="digits-cnn",
        description=f"{_DATA}, 3-layer 1-D CNN of c channels",
        size_name="channels",
        metric="test_accuracy",
        build_fn=build_cnn,
        count_fn=count_cnn,
        **_CLASSIFIER,
    ),
]

PRESETS = [
    *signal_presets("digits", (4, 8, 16, 64, 512), (8, 64)),
    Preset("digits-cnn", "quick", sizes=(8, 32), **REAL_DATA_QUICK),
]

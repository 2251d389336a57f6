"""The two workloads of a short-signal data set (MNIST-1D, the digits): the
data with a 2-hidden-layer ReLU MLP of width w (``NAME``) and with a 3-layer
1-D CNN of c channels (``NAME-cnn``), from `signal_nets` (imported when a
model is built or counted, so that the registry loads without Keras)."""

from __future__ import annotations

from collections.abc import Callable

from keras_sam.study.workloads.workload import (
    MODEL_INITS,
    Workload,
    accuracy,
    classification_loss,
    one_hot_mse,
)


def signal_workloads(
    name: str, data: str, load_fn: Callable, length: int
) -> list[Workload]:
    """``[NAME (MLP), NAME-cnn (CNN)]`` on signals of ``length`` values loaded
    by ``load_fn``; ``data`` describes the data set."""

    def build_mlp(width, seed=None, init="he"):
        from keras_sam.study.workloads import signal_nets

        return signal_nets.signal_mlp(width, input_dim=length, seed=seed, init=init)

    def count_mlp(width) -> int:
        from keras_sam.study.workloads import signal_nets

        return signal_nets.signal_mlp_params(width, input_dim=length)

    def build_cnn(channels, seed=None, init="he"):
        from keras_sam.study.workloads import signal_nets

        return signal_nets.signal_cnn(channels, length=length, seed=seed, init=init)

    def count_cnn(channels) -> int:
        from keras_sam.study.workloads import signal_nets

        return signal_nets.signal_cnn_params(channels, length=length)

    classifier = dict(
        load_fn=load_fn,
        loss_fn=classification_loss,
        metrics_fn=accuracy,
        squared_loss_fn=one_hot_mse,
        inits=MODEL_INITS,
        metric="test_accuracy",
    )
    return [
        Workload(
            name=name,
            description=f"{data}, 2-hidden-layer ReLU MLP of width w",
            size_name="width",
            build_fn=build_mlp,
            count_fn=count_mlp,
            **classifier,
        ),
        Workload(
            name=f"{name}-cnn",
            description=f"{data}, 3-layer 1-D CNN of c channels",
            size_name="channels",
            build_fn=build_cnn,
            count_fn=count_cnn,
            **classifier,
        ),
    ]

"""The workloads ``mnist1d`` and ``mnist1d-cnn``: MNIST-1D (4,000 / 1,000
length-40 signals generated offline, `mnist1d_data`) with a 2-hidden-layer
ReLU MLP of width w and a 3-layer 1-D CNN of c channels (`signal_nets`), and
their presets."""

from __future__ import annotations

from keras_sam.study.workloads import mnist1d_data
from keras_sam.study.workloads.presets import REAL_DATA, Preset, signal_presets
from keras_sam.study.workloads.signal_workloads import signal_workloads
from keras_sam.study.workloads.workload import offline_load

load = offline_load(mnist1d_data.mnist1d_arrays)
WORKLOADS = signal_workloads(
    "mnist1d",
    "MNIST-1D (4,000 / 1,000 length-40 signals, generated offline)",
    load,
    mnist1d_data.LENGTH,
)

_MNIST1D_WIDTHS = (16, 32, 64, 100, 256, 512, 1024)  # 100: the published MLP

PRESETS = [
    *signal_presets("mnist1d", _MNIST1D_WIDTHS, (32, 256)),
    # 15% label noise (the MNIST-1D double-descent setting); 40% with
    # --label-noise 0.4.
    Preset(
        "mnist1d",
        "noise",
        sizes=(16, 32, 64, 128, 256),
        rhos=(0.1, 0.2),
        label_noise=0.15,
        **REAL_DATA,
    ),
    # Width 64's 7.3k kernel weights; widths 128 / 256 pruned at init to
    # it: sparsity 0.68 / 0.91 (512: 0.975, with --sizes).
    Preset(
        "mnist1d",
        "sparse",
        sizes=(64, 128, 256),
        rhos=(0.1, 0.2),
        sparse_budget=64,
        **REAL_DATA,
    ),
    # 25 channels: the MNIST-1D benchmark's CNN.
    *signal_presets("mnist1d-cnn", (4, 8, 16, 25, 64), (8, 25)),
]

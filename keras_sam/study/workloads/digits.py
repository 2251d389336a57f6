"""The workloads ``digits`` and ``digits-cnn``: scikit-learn's digits (1,347 /
450 8x8 images as 64 inputs, `digits_data`) with a 2-hidden-layer ReLU MLP of
width w and a 3-layer 1-D CNN of c channels (`signal_nets`), and their
presets."""

from __future__ import annotations

from keras_sam.study.workloads import digits_data
from keras_sam.study.workloads.presets import REAL_DATA_QUICK, Preset, signal_presets
from keras_sam.study.workloads.signal_workloads import signal_workloads
from keras_sam.study.workloads.workload import offline_load

load = offline_load(digits_data.digits_arrays)
WORKLOADS = signal_workloads(
    "digits",
    "scikit-learn digits (1,347 / 450 8x8 images as 64 inputs)",
    load,
    digits_data.PIXELS,
)

PRESETS = [
    *signal_presets("digits", (4, 8, 16, 64, 512), (8, 64)),
    Preset("digits-cnn", "quick", sizes=(8, 32), **REAL_DATA_QUICK),
]

"""The paper's workloads: data + model builders + presets, one file each
(``synthetic.py``, ``classification.py``, ``matrix_factorization.py``,
``mnist_lenet.py``, ``cifar10_resnet.py``, ``imagenet_resnet.py``,
``mnist1d.py``, ``digits.py``), collected by `registry`.

```python
from keras_sam.study.workloads import get_workload, get_preset
workload, preset = get_workload("synthetic"), get_preset("synthetic", "quick")
```

The names below are imported on first use: reading the workloads and their
presets imports no framework (the command line's ``--help`` stays fast).
"""

import importlib

_EXPORTS = {
    "DatasetUnavailableError": "workload",
    "Data": "workload",
    "Workload": "workload",
    "Preset": "presets",
    "RunConfig": "presets",
    "SweepShape": "presets",
    "get_preset": "presets",
    "PRESETS": "registry",
    "WORKLOADS": "registry",
    "get_workload": "registry",
    "cifar10": "datasets",
    "imagenet": "datasets",
    "mnist": "datasets",
    "train_sample": "datasets",
    "digits_arrays": "digits_data",
    "mnist1d_arrays": "mnist1d_data",
    "OneHotMeanSquaredError": "losses",
    "factorization_data": "matrix_factorization",
    "factorization_model": "matrix_factorization",
    "squared_norm_loss": "matrix_factorization",
    "lenet_300_100": "mlp",
    "lenet_300_100_params": "mlp",
    "resnet18_cifar": "resnet",
    "resnet18_params": "resnet",
    "resnet50": "resnet",
    "resnet50_params": "resnet",
    "trainable_params": "resnet",
    "signal_cnn": "signal_nets",
    "signal_cnn_params": "signal_nets",
    "signal_mlp": "signal_nets",
    "signal_mlp_params": "signal_nets",
    "student": "synthetic",
    "teacher_student": "synthetic",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))

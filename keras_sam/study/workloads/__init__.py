"""The paper's workloads: data + model builders + presets.

```python
from keras_sam.study.workloads import get_workload, get_preset
workload, preset = get_workload("synthetic"), get_preset("synthetic", "quick")
```
"""

from keras_sam.study.workloads.datasets import (
    DatasetUnavailableError,
    cifar10,
    imagenet,
    mnist,
    train_sample,
)
from keras_sam.study.workloads.digits_data import digits_arrays
from keras_sam.study.workloads.losses import OneHotMeanSquaredError
from keras_sam.study.workloads.matrix_factorization import (
    factorization_data,
    factorization_model,
    squared_norm_loss,
)
from keras_sam.study.workloads.mlp import lenet_300_100, lenet_300_100_params
from keras_sam.study.workloads.mnist1d_data import mnist1d_arrays
from keras_sam.study.workloads.presets import PRESETS, Preset, get_preset
from keras_sam.study.workloads.registry import WORKLOADS, Data, Workload, get_workload
from keras_sam.study.workloads.resnet import (
    resnet18_cifar,
    resnet18_params,
    resnet50,
    resnet50_params,
    trainable_params,
)
from keras_sam.study.workloads.signal_nets import (
    signal_cnn,
    signal_cnn_params,
    signal_mlp,
    signal_mlp_params,
)
from keras_sam.study.workloads.synthetic import student, teacher_student

__all__ = [
    "PRESETS",
    "WORKLOADS",
    "Data",
    "DatasetUnavailableError",
    "OneHotMeanSquaredError",
    "Preset",
    "Workload",
    "cifar10",
    "digits_arrays",
    "factorization_data",
    "factorization_model",
    "get_preset",
    "get_workload",
    "imagenet",
    "lenet_300_100",
    "lenet_300_100_params",
    "mnist",
    "mnist1d_arrays",
    "resnet18_cifar",
    "resnet18_params",
    "resnet50",
    "resnet50_params",
    "signal_cnn",
    "signal_cnn_params",
    "signal_mlp",
    "signal_mlp_params",
    "squared_norm_loss",
    "student",
    "teacher_student",
    "train_sample",
    "trainable_params",
]

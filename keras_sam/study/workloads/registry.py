"""Workloads and presets by name, collected from the workloads' files.

```python
from keras_sam.study.workloads import get_workload
w = get_workload("mnist")
model = w.build(4, seed=0)          # LeNet-300-100 with width factor 4
w.count_params(4)                   # 1_426_410, without building
```

A workload's file declares its `Workload` entries (``WORKLOAD`` or
``WORKLOADS``) and its ``PRESETS``; a new workload is a new file listed in
`WORKLOAD_MODULES`. Importing this module imports no framework.
"""

from __future__ import annotations

from keras_sam.study.workloads import (
    cifar10_resnet,
    classification,
    digits,
    imagenet_resnet,
    matrix_factorization,
    mnist1d,
    mnist_lenet,
    synthetic,
)
from keras_sam.study.workloads.presets import Preset, get_preset
from keras_sam.study.workloads.workload import Data, Workload

#: The workloads' files, in the order `WORKLOADS` lists them.
WORKLOAD_MODULES = (
    synthetic,
    classification,
    matrix_factorization,
    mnist_lenet,
    cifar10_resnet,
    imagenet_resnet,
    mnist1d,
    digits,
)


def _entries(module) -> list[Workload]:
    return list(getattr(module, "WORKLOADS", None) or [module.WORKLOAD])


#: Every workload by name; `get_workload` looks them up.
WORKLOADS: dict[str, Workload] = {
    w.name: w for module in WORKLOAD_MODULES for w in _entries(module)
}
#: Every preset by (workload name, preset name); `get_preset` looks them up.
PRESETS: dict[tuple[str, str], Preset] = {
    (p.workload, p.name): p for module in WORKLOAD_MODULES for p in module.PRESETS
}


def get_workload(name: str) -> Workload:
    """The workload called ``name`` (one of `WORKLOADS`)."""
    if name not in WORKLOADS:
        raise ValueError(
            f"`workload` must be one of {sorted(WORKLOADS)}, got workload={name!r}."
        )
    return WORKLOADS[name]


__all__ = [
    "PRESETS",
    "WORKLOADS",
    "WORKLOAD_MODULES",
    "Data",
    "Workload",
    "get_preset",
    "get_workload",
]

"""Deprecated alias of `keras_sam.study.workloads` (removed in 0.2)."""

from keras_sam import _moved

_moved.alias(
    __name__,
    "keras_sam.study.workloads",
    (
        "classification",
        "datasets",
        "label_noise",
        "losses",
        "matrix_factorization",
        "mlp",
        "presets",
        "registry",
        "resnet",
        "synthetic",
    ),
)

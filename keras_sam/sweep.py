"""Deprecated alias of `keras_sam.study.sweep` (removed in 0.2)."""

from keras_sam import _moved

_moved.alias(
    __name__,
    "keras_sam.study.sweep",
    (
        "cost_gain",
        "distribute",
        "plan",
        "plots",
        "progress",
        "results",
        "runner",
        "summary",
        "train",
    ),
)

"""Deprecated alias of `keras_sam.study.cli` (removed in 0.2)."""

from keras_sam import _moved

_moved.alias(__name__, "keras_sam.study.cli")

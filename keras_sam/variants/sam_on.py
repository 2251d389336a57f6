"""SAM-ON (Mueller et al., NeurIPS 2023, arXiv 2306.04226): perturb only the
normalization layers."""

from __future__ import annotations

import re
from collections.abc import Sequence

import keras

from keras_sam import _compat
from keras_sam.variants.base import Variant, register

__all__ = ["SAMON"]

DEFAULT_LAYER_TYPES = (
    "BatchNormalization",
    "LayerNormalization",
    "GroupNormalization",
    "RMSNormalization",
)


def _layer_class(name: str):
    cls = getattr(keras.layers, name, None) or keras.saving.get_registered_object(name)
    if not (isinstance(cls, type) and issubclass(cls, keras.layers.Layer)):
        raise ValueError(f"`layer_types` must name Keras layer classes, got {name!r}.")
    return cls


@register("samon")
class SAMON(Variant):
    """eps moves only the weights of normalization layers (their scale and
    offset), chosen by layer type, plus any weight whose path matches one of
    `paths`; the norm in eps is taken over those weights only. d = gs for
    every weight.

    ```python
    model = keras_sam.sam(model, rho=0.5, variant=SAMON())
    # any selection: also the attention output kernels, by variable path
    SAMON(layer_types=(), paths=[r"attention_output/kernel"])
    ```

    Args:
        layer_types: names of layer classes (in `keras.layers` or registered
            with Keras) whose weights are perturbed; subclasses count.
        paths: regular expressions searched in each variable's `path`.

    Raises:
        ValueError: for `layer_types` or `paths` that are not lists of
            strings, or a name that is not a Keras layer class.
    """

    def __init__(
        self,
        layer_types: Sequence[str] = DEFAULT_LAYER_TYPES,
        paths: Sequence[str] = (),
    ):
        if isinstance(layer_types, str) or isinstance(paths, str):
            raise ValueError("`layer_types` and `paths` must be lists of strings.")
        self.layer_types = tuple(
            t if isinstance(t, str) else keras.saving.get_registered_name(t)
            for t in layer_types
        )
        self._classes = tuple(_layer_class(t) for t in self.layer_types)
        self.paths = tuple(paths)
        self._patterns = [re.compile(p) for p in self.paths]

    def weight_selection(self, model):
        chosen = set()
        for layer in _compat.flatten_layers(model):
            if isinstance(layer, self._classes):
                chosen.update(id(v) for v in layer.trainable_variables)
        selection = [
            id(v) in chosen or any(p.search(v.path) for p in self._patterns)
            for v in model.trainable_variables
        ]
        if not any(selection):
            raise ValueError(
                f"SAMON(layer_types={list(self.layer_types)}, paths="
                f"{list(self.paths)}) selects no trainable weight of "
                f"{model.name!r}: eps would be zero."
            )
        return selection

    def get_config(self):
        return {"layer_types": list(self.layer_types), "paths": list(self.paths)}

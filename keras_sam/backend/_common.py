"""Small pieces the backends' SAM steps share (the update itself is
`keras_sam.sam_step`)."""

from __future__ import annotations

import keras
from keras import tree

from keras_sam import _compat


def first_tensor(structure):
    return next(t for t in tree.flatten(structure) if t is not None)


def output_spec(model, x):
    symbolic = tree.map_structure(
        lambda t: None if t is None else keras.KerasTensor(t.shape, t.dtype), x
    )
    if _compat.call_has_training_arg(model):
        return model.compute_output_spec(symbolic, training=True)
    return model.compute_output_spec(symbolic)


def build_before_step(model, x) -> None:
    """Creates the model's variables, and the variant's state, before a
    stateful step snapshots the state (Keras's own step builds lazily inside
    its first forward pass; a subclassed model builds its layers on its
    first call)."""
    if not model.built:
        output_spec(model, x)
    if model.variant is not None and model.variant_state is None:
        output_spec(model, x)
        model._build_variant_state()


def forward(model, x):
    if _compat.call_has_training_arg(model):
        return model(x, training=True)
    return model(x)


# `SAMModel`'s fit hooks where the backend needs nothing of its own (see
# `keras_sam.backend.tensorflow.trainer` for TensorFlow's).


def prepare_train_function(model) -> None:
    """Nothing to prepare: the step is one program on every device."""


def symbolic_build(model, build, iterator=None, data_batch=None):
    """Keras's `_maybe_symbolic_build` (`build`), then the variant's state."""
    result = build(iterator=iterator, data_batch=data_batch)
    model._build_variant_state()
    return result

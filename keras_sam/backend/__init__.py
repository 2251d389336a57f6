"""Backend-specific SAM training steps, chosen by `keras.backend.backend()`."""

from __future__ import annotations

import keras


def get_train_step():
    """The `train_step(model, data) -> logs` function of the active backend."""
    name = keras.backend.backend()
    if name == "tensorflow":
        from keras_sam.backend.tensorflow import train_step

        return train_step
    raise NotImplementedError(
        f"keras_sam.SAMModel supports the TensorFlow backend; the active Keras "
        f"backend is {name!r}. Set KERAS_BACKEND=tensorflow."
    )

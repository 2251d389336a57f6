"""Backend-specific SAM training steps, chosen by `keras.backend.backend()`."""

from __future__ import annotations

import keras

#: How eps is formed across replicas of a `tf.distribute` strategy.
SYNCHRONIZED = "synchronized"
PER_REPLICA = "per_replica"
REPLICA_EPS_MODES = (SYNCHRONIZED, PER_REPLICA)


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

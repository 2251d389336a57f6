"""Backend-specific SAM training steps, chosen by `keras.backend.backend()`."""

from __future__ import annotations

import keras

#: How eps is formed across replicas of a `tf.distribute` strategy.
SYNCHRONIZED = "synchronized"
PER_REPLICA = "per_replica"
REPLICA_EPS_MODES = (SYNCHRONIZED, PER_REPLICA)


#: The Keras backends with a SAM step.
BACKENDS = ("tensorflow", "jax", "torch")


def get_train_step():
    """The SAM `train_step` of the active backend: ``(model, data) -> logs``
    on TensorFlow and PyTorch, ``(model, state, data) -> (logs, state)`` on
    JAX (the signatures of Keras's own trainers)."""
    name = keras.backend.backend()
    if name == "tensorflow":
        from keras_sam.backend.tensorflow import train_step
    elif name == "jax":
        from keras_sam.backend.jax import train_step
    elif name == "torch":
        from keras_sam.backend.torch import train_step
    else:
        raise NotImplementedError(
            f"keras_sam.SAMModel supports the backends {list(BACKENDS)}; the "
            f"active Keras backend is {name!r}. Set KERAS_BACKEND to one of them."
        )
    return train_step

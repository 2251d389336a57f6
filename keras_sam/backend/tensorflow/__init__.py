"""The TensorFlow backend of keras-sam (see `keras_sam.backend`)."""

from keras_sam.backend.tensorflow.gradients import stateless_gradients
from keras_sam.backend.tensorflow.step import train_step
from keras_sam.backend.tensorflow.trainer import (
    prepare_train_function,
    symbolic_build,
)

__all__ = [
    "prepare_train_function",
    "stateless_gradients",
    "symbolic_build",
    "train_step",
]

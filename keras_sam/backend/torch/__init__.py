"""The PyTorch backend of keras-sam (see `keras_sam.backend`)."""

from keras_sam.backend._common import prepare_train_function, symbolic_build
from keras_sam.backend.torch.gradients import stateless_gradients
from keras_sam.backend.torch.step import train_step

__all__ = [
    "prepare_train_function",
    "stateless_gradients",
    "symbolic_build",
    "train_step",
]

"""The tensorflow backend of keras-sam: the SAM training step (`step.py`)."""

from keras_sam.backend.tensorflow.step import train_step

__all__ = ["train_step"]

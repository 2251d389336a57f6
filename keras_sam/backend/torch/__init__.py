"""The torch backend of keras-sam: the SAM training step (`step.py`)."""

from keras_sam.backend.torch.step import train_step

__all__ = ["train_step"]

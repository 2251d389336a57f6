"""Plain SAM as a variant: d = gs on every step."""

from keras_sam.variants.base import Variant, register

__all__ = ["PlainSAM"]


@register("sam")
class PlainSAM(Variant):
    """The identity variant: every step runs both passes and d = gs.

    ``variant="sam"`` and ``variant=None`` train identically.
    """

"""Variants by name for a training of known length: the phase variants
(`LatePhaseSAM`, `EarlyPhaseSAM`) get its step count, which their names
alone cannot give."""

from __future__ import annotations

from typing import Any

from keras_sam import variants

_PHASES = {
    "latesam": variants.LatePhaseSAM,
    "late_phase_sam": variants.LatePhaseSAM,
    "earlysam": variants.EarlyPhaseSAM,
    "early_phase_sam": variants.EarlyPhaseSAM,
}


def variant_for_training(identifier: Any, total_steps: int) -> Any:
    """`keras_sam.variants.get(identifier)`, except that a phase variant's
    name gives that variant with its switch at half of `total_steps`."""
    if isinstance(identifier, str) and identifier.lower() in _PHASES:
        return _PHASES[identifier.lower()](total_steps=total_steps)
    return variants.get(identifier)

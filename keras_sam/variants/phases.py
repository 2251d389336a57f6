"""SAM for one phase of training: late-phase SAM (Zhou et al., ICLR 2025,
arXiv 2410.10373) and its reverse, SAM early then plain steps (an ablation)."""

from __future__ import annotations

from keras import ops

from keras_sam import _validation
from keras_sam.variants.base import Variant, check_number, register

__all__ = ["EarlyPhaseSAM", "LatePhaseSAM"]


class _Phase(Variant):
    """SAM on the steps of one phase, plain one-pass steps on the others;
    the phase boundary is ``round(fraction * total_steps)``."""

    skips_second_pass = True

    def __init__(self, total_steps: int | None, fraction: float, name: str):
        if total_steps is None:
            raise ValueError(
                f"{type(self).__name__} needs `total_steps`, the number of "
                "training steps (epochs * steps per epoch), to place the switch "
                f"at `{name}`={fraction!r} of training."
            )
        self.total_steps = _validation.positive_int(total_steps, "total_steps")
        self._fraction = check_number(name, fraction, 0.0, 1.0)
        #: The first step of the second phase.
        self.switch_step = round(self._fraction * self.total_steps)

    def _after_switch(self, step):
        return ops.greater_equal(ops.cast(step, "int"), self.switch_step)


@register("latesam", "late_phase_sam")
class LatePhaseSAM(_Phase):
    """Plain steps (d = g, one pass) until `start` of training, SAM from
    then on (d = gs, two passes).

    Zhou et al. (ICLR 2025) find that SAM picks a flatter minimum even when
    switched on only for the last part of training, at a fraction of the
    cost. Steps before ``round(start * total_steps)`` take one pass each
    (counted in `gradient_passes`).

    ```python
    steps = epochs * steps_per_epoch
    variant = LatePhaseSAM(total_steps=steps, start=0.75)  # SAM on the last 25%
    model = keras_sam.sam(model, rho=0.05, variant=variant)
    ```

    Args:
        total_steps: the training's step count (epochs * steps per epoch).
        start: fraction of training after which SAM runs, in [0, 1]
            (0: SAM throughout; 1: plain steps throughout).

    Raises:
        ValueError: for a missing `total_steps` or one that is not a positive
            integer, or a `start` outside [0, 1].
    """

    def __init__(self, total_steps: int | None = None, start: float = 0.5):
        super().__init__(total_steps, start, "start")
        self.start = self._fraction

    def needs_second_pass(self, step, gradients, state):
        return self._after_switch(step)

    def get_config(self):
        return {"total_steps": self.total_steps, "start": self.start}


@register("earlysam", "early_phase_sam")
class EarlyPhaseSAM(_Phase):
    """The reverse of `LatePhaseSAM`, for ablations: SAM (two passes) until
    `stop` of training, plain steps (d = g, one pass) from then on.

    ```python
    variant = EarlyPhaseSAM(total_steps=epochs * steps_per_epoch, stop=0.25)
    ```

    Args:
        total_steps: the training's step count (epochs * steps per epoch).
        stop: fraction of training after which SAM stops, in [0, 1]
            (1: SAM throughout; 0: plain steps throughout).

    Raises:
        ValueError: for a missing `total_steps` or one that is not a positive
            integer, or a `stop` outside [0, 1].
    """

    def __init__(self, total_steps: int | None = None, stop: float = 0.5):
        super().__init__(total_steps, stop, "stop")
        self.stop = self._fraction

    def needs_second_pass(self, step, gradients, state):
        return ops.logical_not(self._after_switch(step))

    def get_config(self):
        return {"total_steps": self.total_steps, "stop": self.stop}

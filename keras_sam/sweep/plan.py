"""The runs of a sweep: sizes x {baseline, SAM at each rho} x seeds."""

from __future__ import annotations

from dataclasses import dataclass

from keras_sam.workloads.presets import Preset

BASELINE = "baseline"
SAM = "sam"


@dataclass(frozen=True)
class RunSpec:
    """One training run. ``rho`` is None for the baseline optimizer.

    ``variant`` is ``"dense"`` today; sparse-at-fixed-budget runs will add
    variants (e.g. ``"snip@budget"``) without changing the other fields.
    """

    workload: str
    config_id: str
    size: float
    method: str
    rho: float | None
    seed: int
    variant: str = "dense"

    @property
    def key(self) -> str:
        """Identity in the results file: equal keys are the same run."""
        rho = "-" if self.rho is None else f"{self.rho:g}"
        return (
            f"{self.workload}|{self.config_id}|{self.variant}|{self.size:g}|"
            f"{self.method}|{rho}|{self.seed}"
        )

    @property
    def label(self) -> str:
        name = "baseline" if self.rho is None else f"SAM rho={self.rho:g}"
        return f"size {self.size:g}, {name}, seed {self.seed}"


def plan_runs(preset: Preset) -> list[RunSpec]:
    """All runs of ``preset``, size by size (small first), seeds inner-most."""
    config_id = preset.config_id()
    runs = []
    for size in sorted(preset.sizes):
        methods = [(BASELINE, None)] + [(SAM, float(r)) for r in preset.rhos]
        for method, rho in methods:
            for seed in preset.seeds:
                runs.append(
                    RunSpec(preset.workload, config_id, size, method, rho, seed)
                )
    return runs

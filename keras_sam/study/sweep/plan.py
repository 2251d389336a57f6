"""The runs of a sweep: sizes x {baseline, SAM at each rho} x seeds, and for
a fixed-budget sweep, each wider size pruned at init by each method."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from keras_sam.study.workloads.presets import Preset

BASELINE = "baseline"
SAM = "sam"
DENSE = "dense"
RESCALED = "-rescaled"


class Pruning(NamedTuple):
    """How a sparse variant is pruned at init (see `prune_at_init`)."""

    method: str
    budget: float
    rescale: bool


@dataclass(frozen=True)
class RunSpec:
    """One training run. ``rho`` is None for the baseline optimizer;
    ``method`` is ``"baseline"``, ``"sam"`` or a `keras_sam.variants` name.

    ``variant`` is ``"dense"``, or ``"METHOD@BUDGET"`` for a model pruned at
    init by METHOD (``random``, ``snip``) to the non-zero weight count of
    the dense model of size BUDGET (e.g. ``"snip@16"``), or
    ``"METHOD-rescaled@BUDGET"`` with the kept weights rescaled.
    """

    workload: str
    config_id: str
    size: float
    method: str
    rho: float | None
    seed: int
    variant: str = DENSE

    @property
    def key(self) -> str:
        """Identity in the results file: equal keys are the same run."""
        rho = "-" if self.rho is None else f"{self.rho:g}"
        return (
            f"{self.workload}|{self.config_id}|{self.variant}|{self.size:g}|"
            f"{self.method}|{rho}|{self.seed}"
        )

    @property
    def pruning(self) -> Pruning | None:
        """How a sparse variant is pruned, None if dense."""
        if self.variant == DENSE:
            return None
        method, budget = self.variant.split("@")
        rescale = method.endswith(RESCALED)
        method = method.removesuffix(RESCALED)
        return Pruning(method, float(budget), rescale)

    @property
    def label(self) -> str:
        name = "baseline" if self.rho is None else f"SAM rho={self.rho:g}"
        if self.method not in (BASELINE, SAM):
            name = f"{self.method} rho={self.rho:g}"
        variant = "" if self.variant == DENSE else f" ({self.variant})"
        return f"size {self.size:g}{variant}, {name}, seed {self.seed}"


def sparse_variant(method: str, budget: float, rescale: bool = False) -> str:
    return f"{method}{RESCALED if rescale else ''}@{budget:g}"


def planned_variants(preset: Preset) -> list[tuple[float, str]]:
    """``(size, variant)`` pairs, small sizes first: every size dense, or,
    with ``sparse_budget``, the budget size dense and every wider size
    pruned by each of ``sparse_methods``."""
    if preset.sparse_budget is None:
        return [(size, DENSE) for size in sorted(preset.sizes)]
    budget = preset.sparse_budget
    pairs = [(budget, DENSE)]
    for size in sorted(s for s in set(preset.sizes) if s > budget):
        pairs += [
            (size, sparse_variant(m, budget, preset.sparse_rescale))
            for m in preset.sparse_methods
        ]
    return pairs


def plan_runs(preset: Preset) -> list[RunSpec]:
    """All runs of ``preset``, size by size (small first), seeds inner-most."""
    config_id = preset.config_id()
    methods = [(BASELINE, None)] + [(SAM, float(r)) for r in preset.rhos]
    methods += [(v, float(r)) for v in preset.sam_variants for r in preset.rhos]
    return [
        RunSpec(preset.workload, config_id, size, method, rho, seed, variant)
        for size, variant in planned_variants(preset)
        for method, rho in methods
        for seed in preset.seeds
    ]


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> ``(K, N)``: shard K (1-based) of N."""
    try:
        k, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        k = n = 0
    if not 1 <= k <= n:
        raise ValueError(
            "`shard` must be K/N with 1 <= K <= N (e.g. 2/4: the second of four "
            f"shards), got shard={text!r}."
        )
    return k, n


def shard_runs(runs: list[RunSpec], shard: tuple[int, int] | None) -> list[RunSpec]:
    """Shard ``(k, n)``'s runs: every n-th run of the plan from the k-th, so
    the shards' loads mix small and large sizes; together they are the
    plan, each run in exactly one shard."""
    if shard is None:
        return list(runs)
    k, n = shard
    return [run for i, run in enumerate(runs) if i % n == k - 1]

"""Summary of a results file: per size, baseline vs SAM at the best rho.

Gap = SAM's improvement over the baseline (baseline - SAM for a loss, SAM -
baseline for an accuracy), so a positive gap means SAM is better. The best
rho maximizes the seed-mean improvement. Standard errors are
``std(ddof=1) / sqrt(n)`` over seeds; the gap's is that of the per-seed
paired differences when both have the same seeds (else the two standard
errors combined in quadrature).

A best rho at an edge of the rhos tried (the largest or the smallest, a
diverged rho counting as tried) is marked in the table: the optimum may lie
past the grid (`keras_sam.study.sweep.rho_search` extends it).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from keras_sam.study.sweep.results import latest_by_key, latest_ok


@dataclass(frozen=True)
class Stat:
    mean: float
    se: float  # NaN with one seed
    n: int

    def format(self, digits: int = 4) -> str:
        if math.isnan(self.mean):
            return "n/a"
        text = f"{self.mean:.{digits}f}"
        if self.n > 1:
            text += f" ± {self.se:.{digits}f}"
        return text


def stat(values: list[float]) -> Stat:
    """Mean, standard error (ddof 1) and count; NaN mean if empty."""
    n = len(values)
    if n == 0:
        return Stat(math.nan, math.nan, 0)
    mean = sum(values) / n
    if n == 1:
        return Stat(mean, math.nan, 1)
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return Stat(mean, math.sqrt(var / n), n)


@dataclass(frozen=True)
class SizeSummary:
    """One size (and variant) of a sweep: baseline, SAM per rho, best, gap.

    ``variant`` is ``"dense"`` or ``"METHOD@BUDGET"`` (pruned at init);
    ``sparsity`` and ``nonzero`` are the pruned models' measured figures
    (0 and ``params`` when dense).
    """

    size: float
    params: int
    baseline: Stat
    by_rho: dict[float, Stat]
    best_rho: float | None
    best: Stat
    gap: Stat
    failed: int
    variant: str = "dense"
    sparsity: float = 0.0
    nonzero: int = 0
    diverged_rhos: tuple[float, ...] = ()

    @property
    def pruning_method(self) -> str | None:
        return None if self.variant == "dense" else self.variant.split("@")[0]

    @property
    def edge(self) -> str | None:
        """Where the best rho lies among the rhos tried (those with a
        result, and those that diverged: a non-finite metric): `rho_edge`."""
        return rho_edge(self.best_rho, {*self.by_rho, *self.diverged_rhos})


def rho_edge(best: float | None, rhos) -> str | None:
    """``"top"`` or ``"bottom"`` if ``best`` is the largest or smallest of
    ``rhos`` (the rhos with a result), ``"only"`` if it is the only one,
    None if it is interior (or there is no best)."""
    if best is None:
        return None
    rhos = sorted(rhos)
    if len(rhos) == 1:
        return "only"
    if best == rhos[-1]:
        return "top"
    if best == rhos[0]:
        return "bottom"
    return None


def edge_text(edge: str | None) -> str:
    """The table cell of `rho_edge`: a marked edge, or "interior"."""
    if edge is None:
        return "interior"
    return "**only rho**" if edge == "only" else f"**{edge} edge**"


def summarize(
    records: list[dict[str, Any]], higher_is_better: bool, keys: set[str] | None = None
) -> list[SizeSummary]:
    """Per-size (and variant) summaries of the latest ``ok`` records
    (restricted to ``keys`` if given), sorted by size, dense first."""
    latest = latest_by_key(records)
    if keys is not None:
        latest = {k: r for k, r in latest.items() if k in keys}
    sign = 1.0 if higher_is_better else -1.0

    def group(r):
        variant = r.get("variant", "dense")
        return float(r["size"]), variant != "dense", variant

    out = []
    for size, _, variant in sorted({group(r) for r in latest.values()}):
        rows = [r for r in latest.values() if group(r)[::2] == (size, variant)]
        ok = [r for r in rows if r.get("status") == "ok" and r.get("value") is not None]
        diverged = {
            float(r["rho"])
            for r in rows
            if r.get("status") == "ok"
            and r.get("value") is None
            and r["method"] == "sam"
        }
        base = {r["seed"]: r["value"] for r in ok if r["method"] == "baseline"}
        sam: dict[float, dict[int, float]] = {}
        for r in ok:
            if r["method"] == "sam":
                sam.setdefault(float(r["rho"]), {})[r["seed"]] = r["value"]
        by_rho = {rho: stat(list(v.values())) for rho, v in sorted(sam.items())}
        base_stat = stat(list(base.values()))
        best_rho = None
        if by_rho:
            best_rho = max(by_rho, key=lambda rho: sign * by_rho[rho].mean)
        best = by_rho[best_rho] if best_rho is not None else stat([])
        if best_rho is None or not base:
            gap = stat([])
        elif set(sam[best_rho]) == set(base):
            gap = stat([sign * (sam[best_rho][s] - base[s]) for s in sorted(base)])
        else:
            se = math.sqrt(
                (base_stat.se if base_stat.n > 1 else 0.0) ** 2
                + (best.se if best.n > 1 else 0.0) ** 2
            )
            gap = Stat(
                sign * (best.mean - base_stat.mean), se, min(best.n, base_stat.n)
            )
        params = max((int(r.get("params") or 0) for r in rows), default=0)
        failed = sum(r.get("status") == "failed" for r in rows)
        sparsities = [r["sparsity"] for r in ok if r.get("sparsity") is not None]
        nonzero = [r["nonzero_params"] for r in ok if r.get("nonzero_params")]
        out.append(
            SizeSummary(
                size,
                params,
                base_stat,
                by_rho,
                best_rho,
                best,
                gap,
                failed,
                variant,
                sum(sparsities) / len(sparsities) if sparsities else 0.0,
                max(nonzero) if nonzero else params,
                tuple(sorted(diverged - set(by_rho))),
            )
        )
    return out


def _params(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}m"
    if n >= 10_000:
        return f"{n / 1e3:.1f}k"
    return f"{n:,}"


def markdown_table(
    summaries: list[SizeSummary],
    metric: str,
    size_name: str = "size",
    digits: int = 4,
) -> str:
    """The summary as a Markdown table, one row per size (with pruning
    method, sparsity and non-zero parameters when any row is pruned)."""
    sparse = any(s.variant != "dense" for s in summaries)
    extra = " pruning | sparsity | non-zero |" if sparse else ""
    lines = [
        f"| {size_name} | params |{extra} baseline {metric} | best SAM {metric} | "
        "best rho | gap (SAM better > 0) | seeds | failed | best rho in grid |",
        "|---:|---:|" + ("---|---:|---:|" if sparse else "") + "---:|" * 6 + "---|",
    ]
    for s in summaries:
        rho = "n/a" if s.best_rho is None else f"{s.best_rho:g}"
        cells = ""
        if sparse:
            cells = (
                f" {s.pruning_method or 'dense'} | {s.sparsity:.3f} | "
                f"{_params(s.nonzero)} |"
            )
        lines.append(
            f"| {s.size:g} | {_params(s.params)} |{cells} {s.baseline.format(digits)} "
            f"| {s.best.format(digits)} | {rho} | {s.gap.format(digits)} | "
            f"{s.baseline.n} | {s.failed} | {edge_text(s.edge)} |"
        )
    table = "\n".join(lines) + "\n"
    edges = sum(s.edge is not None for s in summaries if s.best_rho is not None)
    if edges:
        table += (
            f"\n{edges} of {len(summaries)} best rhos lie at an edge of the rhos "
            "tried: the optimum may lie past it (`--rhos auto` extends the grid).\n"
        )
    return table


def rho_table(summaries: list[SizeSummary], metric: str, digits: int = 4) -> str:
    """Mean ± standard error of ``metric`` at every rho, one row per size."""
    rhos = sorted({rho for s in summaries for rho in s.by_rho})
    head = "| size | baseline | " + " | ".join(f"rho={r:g}" for r in rhos) + " |"
    lines = [head, "|" + "---:|" * (len(rhos) + 2)]
    for s in summaries:
        cells = [s.by_rho[r].format(digits) if r in s.by_rho else "" for r in rhos]
        size = f"{s.size:g}" + ("" if s.variant == "dense" else f" {s.variant}")
        lines.append(
            f"| {size} | {s.baseline.format(digits)} | " + " | ".join(cells) + " |"
        )
    return f"{metric} by rho:\n\n" + "\n".join(lines) + "\n"


def _per_run_table(
    records: list[dict[str, Any]],
    keys: set[str] | None,
    field: str,
    value: Callable[[Any, str], float | None],
    columns: dict[str, str],
    digits: int,
) -> str | None:
    """Seed-mean ± s.e. of ``value(record[field], name)`` for each name in
    ``columns`` (name -> header), one row per size, variant and method, over
    the runs that have ``field``; None if none has."""
    rows: dict[tuple[float, str, float], dict[str, list[float]]] = {}
    for r in latest_ok(records, keys):
        if not r.get(field):
            continue
        found = {name: value(r[field], name) for name in columns}
        rho = -1.0 if r["rho"] is None else float(r["rho"])
        group = (float(r["size"]), r.get("variant", "dense"), rho)
        cell = rows.setdefault(group, {name: [] for name in columns})
        for name, v in found.items():
            if v is not None:
                cell[name].append(v)
    if not rows:
        return None
    lines = [
        "| size | method | " + " | ".join(columns.values()) + " |",
        "|---:|---|" + "---:|" * len(columns),
    ]
    for (size, variant, rho), cell in sorted(rows.items()):
        method = "baseline" if rho < 0 else f"SAM rho={rho:g}"
        label = f"{size:g}" + ("" if variant == "dense" else f" {variant}")
        stats = " | ".join(stat(cell[name]).format(digits) for name in columns)
        lines.append(f"| {label} | {method} | {stats} |")
    return "\n".join(lines) + "\n"


def hessian_table(
    records: list[dict[str, Any]], keys: set[str] | None = None, digits: int = 3
) -> str | None:
    """Seed-mean sharpness and s2 at the end of training per size and method
    (None if no record has Hessian metrics)."""
    columns = {"sharpness": "sharpness lambda_max(H)", "s2": "non-uniformity s2"}
    return _per_run_table(records, keys, "hessian", dict.get, columns, digits)


def smoothness_table(
    records: list[dict[str, Any]], keys: set[str] | None = None, digits: int = 3
) -> str | None:
    """Seed-mean of each run's median ``beta_hat`` and ``alpha_hat`` along
    training, per size and method (None if no record tracked them)."""

    def value(track, name):
        points = [p[name] for p in track if p.get(name) is not None]
        return statistics.median(points) if points else None

    columns = {
        "beta_hat": "median beta_hat (smoothness)",
        "alpha_hat": "median alpha_hat (PL)",
    }
    return _per_run_table(records, keys, "smoothness", value, columns, digits)

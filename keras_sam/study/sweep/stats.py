"""Paired statistics of a sweep: SAM's gap over the baseline per seed, and
the trend of that gap with model size.

The runs of one seed share the batches' order and the initial weights
(SAM and the baseline build the same model from the same seed), so the
per-seed difference ``sign * (SAM_seed - baseline_seed)`` (SAM better > 0)
removes what the seeds have in common. Per size, its mean, standard error
(``std(ddof=1) / sqrt(n)``) and 95% t-interval over seeds.

A "grows with size" claim is tested by the slope of the gap against
``log10(parameters)``: the ordinary least-squares line through the sizes'
seed-mean gaps, ``slope = sum_i c_i * gap_i`` with ``c_i = (x_i - mean x) /
sum_j (x_j - mean x)^2``. The sizes' models are trained independently, so
``var(slope) = sum_i c_i^2 se_i^2``, with Welch-Satterthwaite degrees of
freedom ``var^2 / sum_i (c_i^2 se_i^2)^2 / (n_i - 1)``; the 95% interval is
``slope +- t(0.975, df) * sqrt(var)``. With 3-5 seeds per size this is
wider, and more honest, than a percentile bootstrap over the seeds (whose
intervals are too narrow for so few). Verdict: "grows" if the interval is
above 0, "shrinks" if below, else "no trend"; and, whatever the slope,
"peaks at SIZE" when the largest gap is at an inner size and the largest
size's gap is below it by more than twice their combined standard error.

The best rho of each size is chosen on the same seeds as the gap it
reports, which biases each gap up a little (more so with few seeds and
many rhos); the bias is alike at every size and cancels mostly in the slope.

```python
from keras_sam.study.sweep import stats
lines = stats.gap_lines(records, higher_is_better=True)
print(stats.gap_trend(lines["sam"]).format())   # grows: slope +0.021 ...
```
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from keras_sam.study.sweep.plan import BASELINE, SAM
from keras_sam.study.sweep.results import latest_ok
from keras_sam.study.sweep.summary import Stat, stat

CONFIDENCE = 0.95


def t_quantile(probability: float, df: float) -> float:
    """Student's t quantile (scipy; ``df`` may be fractional)."""
    from scipy import stats as scipy_stats

    return float(scipy_stats.t.ppf(probability, df))


@dataclasses.dataclass(frozen=True)
class PairedGap:
    """One size's paired differences at its best rho, by seed."""

    size: float
    params: int
    rho: float | None
    diffs: dict[int, float]
    variant: str = "dense"

    @property
    def stat(self) -> Stat:
        return stat([self.diffs[s] for s in sorted(self.diffs)])

    def interval(self, confidence: float = CONFIDENCE) -> tuple[float, float]:
        """The t-interval of the mean paired difference (NaN with < 2 seeds)."""
        s = self.stat
        if s.n < 2:
            return math.nan, math.nan
        half = t_quantile(0.5 + confidence / 2, s.n - 1) * s.se
        return s.mean - half, s.mean + half


def gap_lines(
    records: Sequence[Mapping[str, Any]],
    higher_is_better: bool,
    keys: set[str] | None = None,
) -> dict[str, list[PairedGap]]:
    """The paired gaps of each line of the sweep, sizes ascending: one line
    per method for the dense sizes (``"sam"``, a variant's name), and for a
    fixed-budget sweep one per method and pruning (``"sam, random"``: the
    dense budget size, then the wider sizes pruned by ``random``). Each
    size's rho is the one of best seed-mean metric, as in `summarize`."""
    sign = 1.0 if higher_is_better else -1.0
    ok = [r for r in latest_ok(records, keys) if r.get("value") is not None]
    cells: dict[tuple[float, str], list[Mapping[str, Any]]] = {}
    for r in ok:
        cells.setdefault((float(r["size"]), r.get("variant", "dense")), []).append(r)
    methods = sorted({r["method"] for r in ok} - {BASELINE}, key=lambda m: m != SAM)
    dense = [cell for cell in sorted(cells) if cell[1] == "dense"]
    prunings = sorted({v.split("@")[0] for _, v in cells if v != "dense"})
    lines: dict[str, list[PairedGap]] = {}
    for method in methods:
        gaps = {cell: _best_gap(cells[cell], method, sign) for cell in cells}
        if not prunings:
            lines[method] = [gaps[c] for c in dense if gaps[c] is not None]
        for pruning in prunings:
            line = dense + sorted(
                c for c in cells if c[1] != "dense" and c[1].split("@")[0] == pruning
            )
            lines[f"{method}, {pruning}"] = [
                gaps[c] for c in line if gaps[c] is not None
            ]
    return {name: line for name, line in lines.items() if line}


def _best_gap(runs, method: str, sign: float) -> PairedGap | None:
    base = {r["seed"]: r["value"] for r in runs if r["method"] == BASELINE}
    by_rho: dict[float, dict[int, float]] = {}
    for r in runs:
        if r["method"] == method:
            by_rho.setdefault(float(r["rho"]), {})[r["seed"]] = r["value"]
    if not by_rho or not base:
        return None
    best = max(
        by_rho, key=lambda rho: sign * sum(by_rho[rho].values()) / len(by_rho[rho])
    )
    diffs = {s: sign * (v - base[s]) for s, v in by_rho[best].items() if s in base}
    if not diffs:
        return None
    params = max(int(r.get("params") or 0) for r in runs)
    return PairedGap(
        float(runs[0]["size"]), params, best, diffs, runs[0].get("variant", "dense")
    )


@dataclasses.dataclass(frozen=True)
class Trend:
    """The slope of the gap per decade of parameters, its interval and verdict."""

    slope: float
    se: float
    df: float
    low: float
    high: float
    sizes: int
    verdict: str
    peak: float | None = None

    def format(self, digits: int = 4) -> str:
        if self.verdict == "n/a":
            return "n/a (needs 2 sizes with 2 seeds each)"
        text = (
            f"{self.verdict}: slope {self.slope:+.{digits}f} per decade of "
            f"parameters [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"
        )
        if self.peak is not None:
            text += f"; not monotone: peaks at size {self.peak:g}"
        return text


def gap_trend(line: Sequence[PairedGap], confidence: float = CONFIDENCE) -> Trend:
    """The trend of ``line``'s gaps against log10(parameters) (module
    docstring); sizes with fewer than 2 seeds are left out."""
    points = [g for g in line if g.stat.n >= 2 and g.params > 0]
    nan = math.nan
    if len({g.params for g in points}) < 2:
        return Trend(nan, nan, nan, nan, nan, len(points), "n/a")
    x = [math.log10(g.params) for g in points]
    x_mean = sum(x) / len(x)
    sxx = sum((v - x_mean) ** 2 for v in x)
    c = [(v - x_mean) / sxx for v in x]
    stats = [g.stat for g in points]
    slope = sum(ci * s.mean for ci, s in zip(c, stats))
    terms = [ci**2 * s.se**2 for ci, s in zip(c, stats)]
    var = sum(terms)
    if var > 0:
        df = var**2 / sum(t**2 / (s.n - 1) for t, s in zip(terms, stats))
        half = t_quantile(0.5 + confidence / 2, df) * math.sqrt(var)
    else:  # every size's seeds agree exactly
        df, half = math.inf, 0.0
    low, high = slope - half, slope + half
    verdict = "grows" if low > 0 else "shrinks" if high < 0 else "no trend"
    return Trend(
        slope, math.sqrt(var), df, low, high, len(points), verdict, _peak(points)
    )


def _peak(points: Sequence[PairedGap]) -> float | None:
    stats = [g.stat for g in points]
    top = max(range(len(points)), key=lambda i: stats[i].mean)
    last = stats[-1]
    if top == len(points) - 1:
        return None
    combined = math.sqrt(stats[top].se ** 2 + last.se**2)
    if stats[top].mean - last.mean > 2 * combined:
        return points[top].size
    return None


def paired_table(line: Sequence[PairedGap], size_name: str = "size") -> str:
    """Per size: best rho, paired gap mean ± s.e., its 95% interval, seeds."""
    lines = [
        f"| {size_name} | params | rho | paired gap (SAM better > 0) | "
        "95% interval | seeds |",
        "|---:|---:|---:|---:|---|---:|",
    ]
    for g in line:
        low, high = g.interval()
        interval = "n/a" if math.isnan(low) else f"[{low:+.4f}, {high:+.4f}]"
        label = f"{g.size:g}" + ("" if g.variant == "dense" else f" {g.variant}")
        rho = "n/a" if g.rho is None else f"{g.rho:g}"
        lines.append(
            f"| {label} | {g.params:,} | {rho} | {g.stat.format()} | {interval} | "
            f"{g.stat.n} |"
        )
    return "\n".join(lines) + "\n"


def stats_section(
    records: Sequence[Mapping[str, Any]],
    higher_is_better: bool,
    keys: set[str] | None = None,
    size_name: str = "size",
) -> str | None:
    """The summary's section: each line's paired table and its trend
    verdict (None without a baseline and SAM run to pair)."""
    lines = gap_lines(records, higher_is_better, keys)
    if not lines:
        return None
    parts = [
        "Paired gaps (SAM - baseline on the same seed: same batches, same "
        "initial weights; at each size's best rho) and the trend of the gap "
        "against log10(parameters), 95% t-interval (Welch-Satterthwaite over "
        "the sizes' seeds). The best rho is picked on the same seeds, which "
        "biases each gap up a little.\n"
    ]
    for name, line in lines.items():
        parts.append(
            f"{name}: {gap_trend(line).format()}\n\n" + paired_table(line, size_name)
        )
    return "\n".join(parts)

"""Cost versus gain of SAM variants in a sweep: per size, each method's best
rho, its gap over the baseline as a share of plain SAM's gap, and its
training time over the baseline's.

Gap as in `summary` (positive: better than the baseline), from seed means;
the best rho of each method maximizes its seed-mean gap. Cost = mean
``train_seconds`` at that rho / mean ``train_seconds`` of the baseline (same
size), so it includes what the two passes do not (input, evaluation-free
fit overhead); passes per step = ``gradient_passes`` relative to SAM's 2.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from keras_sam.study.sweep.plan import BASELINE, SAM
from keras_sam.study.sweep.results import latest_ok
from keras_sam.study.sweep.summary import edge_text, rho_edge


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def cost_gain_rows(
    records: list[dict[str, Any]], higher_is_better: bool, keys: set[str] | None
) -> list[dict[str, Any]]:
    """One row per (size, method other than the baseline)."""
    ok = [r for r in latest_ok(records, keys) if r.get("variant", "dense") == "dense"]
    sign = 1.0 if higher_is_better else -1.0
    rows = []
    for size in sorted({float(r["size"]) for r in ok}):
        here = [r for r in ok if float(r["size"]) == size]
        base = [r for r in here if r["method"] == BASELINE]
        if not base:
            continue
        base_value = _mean([r["value"] for r in base])
        base_seconds = _mean([r.get("train_seconds", math.nan) for r in base])
        best = {}
        for method in sorted({r["method"] for r in here} - {BASELINE}):
            by_rho: dict[float, list[dict[str, Any]]] = {}
            for r in here:
                if r["method"] == method:
                    by_rho.setdefault(float(r["rho"]), []).append(r)
            rho, runs = max(
                by_rho.items(),
                key=lambda item: sign * _mean([r["value"] for r in item[1]]),
            )
            value = _mean([r["value"] for r in runs])
            best[method] = {
                "size": size,
                "params": runs[0].get("params"),
                "method": method,
                "rho": rho,
                "edge": rho_edge(rho, by_rho),
                "value": value,
                "gap": sign * (value - base_value),
                "cost": _mean([r.get("train_seconds", math.nan) for r in runs])
                / base_seconds,
                "passes": _mean([r.get("gradient_passes") or math.nan for r in runs]),
            }
        sam = best.get(SAM)
        for method in [SAM] + sorted(set(best) - {SAM}):
            if method not in best:
                continue
            row = best[method]
            row["share"] = row["gap"] / sam["gap"] if sam and sam["gap"] else None
            row["passes_per_step"] = (
                2.0 * row["passes"] / sam["passes"] if sam else math.nan
            )
            rows.append(row)
    return rows


def cost_gain_table(
    records: list[dict[str, Any]],
    metric: str,
    size_name: str,
    higher_is_better: bool,
    keys: set[str] | None = None,
) -> str:
    """Markdown table of `cost_gain_rows` ("" when only SAM was run)."""
    methods = {r.get("method") for r in latest_ok(records, keys)}
    if not methods - {BASELINE, SAM}:
        return ""
    rows = cost_gain_rows(records, higher_is_better, keys)
    lines = [
        f"| {size_name} | method | best rho | {metric} | gap | share of SAM's gap "
        "| passes / step | train time x baseline | best rho in grid |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        share = "n/a" if r["share"] is None else f"{100 * r['share']:.0f}%"
        lines.append(
            f"| {r['size']:g} | {r['method']} | {r['rho']:g} | {r['value']:.4f} | "
            f"{r['gap']:+.4f} | {share} | {r['passes_per_step']:.2f} | "
            f"{r['cost']:.2f} | {edge_text(r['edge'])} |"
        )
    return "\n".join(lines) + "\n"

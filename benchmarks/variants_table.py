"""Gain table of a variant study: per method, its best rho (the seed-mean
test accuracy's maximum; ``edge`` when it is the grid's largest or smallest
rho), the paired gap over the baseline (same seed: same data, initial weights
and batches) with its standard error, and that gap as a share of plain SAM's.

    python benchmarks/variants_table.py docs/sweep-variants-mnist1d/results.jsonl

Reads a `keras-sam sweep` results.jsonl (method "baseline", metric
``value``) or a `variants_readme.py` one (method "sgd", ``test_accuracy``).
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections import defaultdict


def load(path):
    by = defaultdict(dict)  # (method, rho) -> seed -> accuracy
    seconds = defaultdict(list)
    with open(path) as f:
        for record in map(json.loads, f):
            if record.get("status", "ok") != "ok":
                continue
            method = record["method"]
            method = "baseline" if method == "sgd" else method
            value = record.get("value", record.get("test_accuracy"))
            rho = record["rho"]
            by[(method, rho)][record["seed"]] = value
            seconds[(method, rho)].append(record["train_seconds"])
    return by, seconds


def paired(a, b):
    """Mean and standard error of a[s] - b[s] over the seeds both have."""
    diffs = [a[s] - b[s] for s in sorted(set(a) & set(b))]
    if not diffs:
        return math.nan, math.nan, 0
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.nan
    return statistics.fmean(diffs), se, len(diffs)


def table(path):
    by, _ = load(path)
    base = by[("baseline", None)]
    rows = []
    for method in sorted({m for m, _ in by} - {"baseline"}):
        grid = sorted(r for m, r in by if m == method)
        best = max(grid, key=lambda r: statistics.fmean(by[(method, r)].values()))
        gap, se, n = paired(by[(method, best)], base)
        edge = "edge" if len(grid) > 1 and best in (grid[0], grid[-1]) else ""
        rows.append(
            (
                method,
                best,
                edge,
                grid,
                statistics.fmean(by[(method, best)].values()),
                gap,
                se,
                n,
            )
        )
    sam_gap, sam_se = next((r[5], r[6]) for r in rows if r[0] == "sam")
    # A share of a gap that is noise means nothing.
    meaningful = abs(sam_gap) > 2 * sam_se
    print(f"baseline {statistics.fmean(base.values()):.4f} ({len(base)} seeds)")
    print(
        "| method | best rho | grid | test accuracy | gap over baseline "
        "| share of SAM's gap |"
    )
    print("|---|---:|---|---:|---:|---:|")
    for method, best, edge, grid, value, gap, se, n in sorted(
        rows, key=lambda r: -r[5]
    ):
        grid_text = ", ".join(f"{r:g}" for r in grid)
        flag = " (edge)" if edge else ""
        print(
            f"| {method} | {best:g}{flag} | {grid_text} | {value:.4f} | "
            f"{100 * gap:+.1f} ± {100 * se:.1f} pts ({n} seeds) | "
            + (f"{100 * gap / sam_gap:.0f}% |" if meaningful else "n/a |")
        )


if __name__ == "__main__":
    table(sys.argv[1])

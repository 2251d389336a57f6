"""Paired statistics and the gap's trend against a hand computation, and the
edge marks of the summary tables."""

import math

import numpy as np
import pytest

from keras_sam.study.sweep import cost_gain, stats
from keras_sam.study.sweep.summary import markdown_table, summarize


def rec(size, method, rho, seed, value, params, variant="dense", status="ok"):
    rho_text = "-" if rho is None else f"{rho:g}"
    return {
        "key": f"w|c|{variant}|{size:g}|{method}|{rho_text}|{seed}",
        "size": size,
        "method": method,
        "rho": rho,
        "seed": seed,
        "value": value,
        "status": status,
        "params": params,
        "variant": variant,
    }


# Accuracy (higher is better). Paired differences at the best rho (0.2):
# size 1 (100 params): 0.01, 0.03; size 2 (1,000): 0.04, 0.06, 0.05;
# size 3 (10,000): 0.07, 0.09. rho 0.1 is worse everywhere.
DIFFS = {1: [0.01, 0.03], 2: [0.04, 0.06, 0.05], 3: [0.07, 0.09]}
PARAMS = {1: 100, 2: 1000, 3: 10000}


def records(diffs=DIFFS):
    out = []
    for size, ds in diffs.items():
        for seed, d in enumerate(ds):
            base = 0.5 + 0.1 * seed  # what the seed shares: pairing removes it
            out.append(rec(size, "baseline", None, seed, base, PARAMS[size]))
            out.append(rec(size, "sam", 0.2, seed, base + d, PARAMS[size]))
            out.append(rec(size, "sam", 0.1, seed, base + d - 0.02, PARAMS[size]))
    return out


def test_paired_gaps_and_intervals_by_hand():
    line = stats.gap_lines(records(), higher_is_better=True)["sam"]
    assert [g.rho for g in line] == [0.2, 0.2, 0.2]
    first = line[0]
    assert first.diffs == pytest.approx({0: 0.01, 1: 0.03})
    # mean 0.02, sd sqrt(2e-4), se 0.01; t(0.975, 1) = 12.7062
    assert first.stat.mean == pytest.approx(0.02)
    assert first.stat.se == pytest.approx(0.01)
    low, high = first.interval()
    assert (low, high) == pytest.approx((0.02 - 0.127062, 0.02 + 0.127062), abs=1e-5)
    second = line[1]  # se = 0.01 / sqrt(3); t(0.975, 2) = 4.302653
    assert second.interval() == pytest.approx(
        (0.05 - 4.302653 * 0.01 / math.sqrt(3), 0.05 + 4.302653 * 0.01 / math.sqrt(3))
    )


def test_trend_by_hand():
    trend = stats.gap_trend(stats.gap_lines(records(), True)["sam"])
    # x = 2, 3, 4: c = -0.5, 0, 0.5. slope = 0.5 * (0.08 - 0.02) = 0.03.
    # var = 0.25 * 0.01^2 * 2 = 5e-5; df = (5e-5)^2 / (2 * (2.5e-5)^2 / 1) = 2.
    assert trend.slope == pytest.approx(0.03)
    assert trend.se == pytest.approx(math.sqrt(5e-5))
    assert trend.df == pytest.approx(2.0)
    half = 4.302653 * math.sqrt(5e-5)
    assert (trend.low, trend.high) == pytest.approx(
        (0.03 - half, 0.03 + half), abs=1e-7
    )
    assert trend.verdict == "no trend" and trend.low < 0  # -0.0004: just
    # The slope is the least-squares line through the seed means (NumPy).
    means = [np.mean(DIFFS[s]) for s in (1, 2, 3)]
    assert trend.slope == pytest.approx(np.polyfit([2, 3, 4], means, 1)[0])
    assert trend.format().startswith("no trend: slope +0.0300 per decade")


def test_trend_verdicts_grows_shrinks_and_peak():
    tight = {1: [0.01, 0.011], 2: [0.04, 0.041], 3: [0.07, 0.071]}
    grows = stats.gap_trend(stats.gap_lines(records(tight), True)["sam"])
    assert grows.verdict == "grows" and grows.low > 0 and grows.peak is None
    falling = {1: [0.07, 0.071], 2: [0.04, 0.041], 3: [0.01, 0.011]}
    shrinks = stats.gap_trend(stats.gap_lines(records(falling), True)["sam"])
    assert shrinks.verdict == "shrinks" and shrinks.high < 0
    peaked = {1: [0.01, 0.011], 2: [0.08, 0.081], 3: [0.03, 0.031]}
    peak = stats.gap_trend(stats.gap_lines(records(peaked), True)["sam"])
    assert peak.peak == 2 and "peaks at size 2" in peak.format()
    # One seed per size: no interval.
    single = stats.gap_trend(
        stats.gap_lines(records({1: [0.1], 2: [0.2]}), True)["sam"]
    )
    assert single.verdict == "n/a" and single.format().startswith("n/a")


def test_a_loss_gap_has_the_baseline_minus_sam_sign():
    rows = [
        rec(1, "baseline", None, 0, 1.0, 100),
        rec(1, "sam", 0.1, 0, 0.7, 100),
        rec(1, "baseline", None, 1, 2.0, 100),
        rec(1, "sam", 0.1, 1, 1.9, 100),
    ]
    (gap,) = stats.gap_lines(rows, higher_is_better=False)["sam"]
    assert gap.diffs == pytest.approx({0: 0.3, 1: 0.1})


def test_sparse_lines_start_at_the_dense_budget():
    rows = records({1: [0.01, 0.03]})
    for size, variant in ((2, "random@1"), (3, "random@1"), (2, "snip@1")):
        for seed in (0, 1):
            rows.append(rec(size, "baseline", None, seed, 0.5, PARAMS[size], variant))
            rows.append(rec(size, "sam", 0.2, seed, 0.6, PARAMS[size], variant))
    lines = stats.gap_lines(rows, True)
    assert sorted(lines) == ["sam, random", "sam, snip"]
    assert [g.size for g in lines["sam, random"]] == [1, 2, 3]
    assert [g.variant for g in lines["sam, snip"]] == ["dense", "snip@1"]
    section = stats.stats_section(rows, True, size_name="width")
    assert "| 2 random@1 | 1,000 | 0.2 | 0.1000 ± 0.0000 |" in section


def test_summary_marks_best_rhos_at_an_edge():
    rows = records()
    for seed in (0, 1):  # size 1: a larger rho diverged (NaN stored as None)
        rows.append(rec(1, "sam", 0.4, seed, None, 100))
    # Sizes 2 and 3: the best is the top of 0.1, 0.2; size 4: one rho;
    # size 5: the best is the bottom.
    rows.append(rec(4, "baseline", None, 0, 0.5, 20000))
    rows.append(rec(4, "sam", 0.1, 0, 0.6, 20000))
    rows.append(rec(5, "baseline", None, 0, 0.5, 40000))
    rows.append(rec(5, "sam", 0.1, 0, 0.6, 40000))
    rows.append(rec(5, "sam", 0.2, 0, 0.55, 40000))
    table = markdown_table(summarize(rows, True), "accuracy")
    lines = {line.split("|")[1].strip(): line for line in table.splitlines()[2:7]}
    assert lines["1"].endswith("| interior |")  # 0.4 diverged above the best
    assert lines["2"].endswith("| **top edge** |")
    assert lines["4"].endswith("| **only rho** |")
    assert lines["5"].endswith("| **bottom edge** |")
    assert "4 of 5 best rhos lie at an edge" in table


def test_cost_gain_marks_edges():
    rows = records()
    for seed in (0, 1):
        rows.append(rec(1, "looksam", 0.1, seed, 0.6, 100))
        rows.append(rec(1, "looksam", 0.2, seed, 0.5, 100))
    table = cost_gain.cost_gain_table(rows, "accuracy", "size", True)
    assert "| 1 | looksam | 0.1 |" in table and "| **bottom edge** |" in table


def test_plots_mark_the_edges(tmp_path, monkeypatch):
    from keras_sam.study.sweep import plots

    marked = []
    real = plots._mark_edges

    def spy(ax, rows, y, x=lambda s: s.params):
        marked.append(sorted((x(s), s.edge) for s in rows if s.edge))
        return real(ax, rows, y, x)

    monkeypatch.setattr(plots, "_mark_edges", spy)
    rows = records()
    rows.append(rec(1, "sam", 0.4, 0, 0.9, 100))  # size 1: top edge at 0.4
    rows.append(rec(1, "sam", 0.4, 1, 0.9, 100))
    rows.append(rec(2, "sam", 0.05, 0, 0.9, 1000))  # size 2: bottom edge
    rows.append(rec(2, "sam", 0.05, 1, 0.9, 1000))
    paths = plots.plot_summary(summarize(rows, True), "accuracy", str(tmp_path), "t")
    assert all((tmp_path / p.rsplit("/", 1)[1]).exists() for p in paths)
    assert marked == [[(100, "top"), (1000, "bottom"), (10000, "top")]] * 2
    sparse = records({1: [0.01, 0.03]})
    for seed in (0, 1):
        sparse.append(rec(2, "baseline", None, seed, 0.5, 1000, "random@1"))
        sparse.append(rec(2, "sam", 0.2, seed, 0.6, 1000, "random@1"))
    marked.clear()
    plots.plot_sparse(summarize(sparse, True), "accuracy", str(tmp_path), "t")
    assert marked == [[(0.0, "only"), (0.0, "top")]]  # no sparsity recorded here

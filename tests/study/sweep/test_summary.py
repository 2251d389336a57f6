"""Summary numbers against a hand computation on a fabricated results file."""

import math

import pytest

from keras_sam.study.sweep import append_result, markdown_table, read_results, stat
from keras_sam.study.sweep.summary import hessian_table, rho_table, summarize


def rec(size, method, rho, seed, value, status="ok", key=None, params=1000):
    rho_text = "-" if rho is None else f"{rho:g}"
    return {
        "key": key or f"w|c|dense|{size:g}|{method}|{rho_text}|{seed}",
        "size": size,
        "method": method,
        "rho": rho,
        "seed": seed,
        "value": value,
        "status": status,
        "params": params,
    }


RECORDS = [
    rec(10, "baseline", None, 0, 1.0),
    rec(10, "baseline", None, 1, 1.2),
    rec(10, "sam", 0.1, 0, 7.0, status="failed"),  # superseded below
    rec(10, "sam", 0.1, 0, 0.9),
    rec(10, "sam", 0.1, 1, 1.0),
    rec(10, "sam", 0.5, 0, 1.1),
    rec(10, "sam", 0.5, 1, 1.3),
    rec(10, "sam", 1.0, 0, None, status="failed"),
    rec(20, "baseline", None, 0, 2.0, params=4000),
    rec(20, "sam", 0.5, 0, 1.5, params=4000),
]


def test_stat_by_hand():
    s = stat([1.0, 1.2])
    assert s.mean == pytest.approx(1.1)
    assert s.se == pytest.approx(math.sqrt(0.02) / math.sqrt(2))  # = 0.1
    assert math.isnan(stat([3.0]).se) and stat([]).n == 0


def test_summary_of_a_loss_by_hand():
    small, large = summarize(RECORDS, higher_is_better=False)
    assert small.params == 1000 and small.failed == 1
    assert small.baseline.mean == pytest.approx(1.1)
    assert small.baseline.se == pytest.approx(0.1)
    assert small.best_rho == 0.1
    assert small.best.mean == pytest.approx(0.95)
    assert small.best.se == pytest.approx(0.05)
    # Paired differences 1.0 - 0.9 and 1.2 - 1.0.
    assert small.gap.mean == pytest.approx(0.15)
    assert small.gap.se == pytest.approx(0.05)
    assert small.by_rho[0.5].mean == pytest.approx(1.2)
    assert large.gap.mean == pytest.approx(0.5) and large.gap.n == 1


def test_accuracy_gap_sign_and_best_rho():
    records = [
        rec(1, "baseline", None, 0, 0.90),
        rec(1, "sam", 0.05, 0, 0.93),
        rec(1, "sam", 0.2, 0, 0.91),
    ]
    (s,) = summarize(records, higher_is_better=True)
    assert s.best_rho == 0.05 and s.gap.mean == pytest.approx(0.03)


def test_unpaired_seeds_combine_standard_errors():
    records = [
        rec(1, "baseline", None, 0, 1.0),
        rec(1, "baseline", None, 1, 1.2),
        rec(1, "sam", 0.1, 2, 0.9),
        rec(1, "sam", 0.1, 3, 1.0),
    ]
    (s,) = summarize(records, higher_is_better=False)
    assert s.gap.mean == pytest.approx(0.15)
    assert s.gap.se == pytest.approx(math.sqrt(0.1**2 + 0.05**2))


def test_markdown_from_a_results_file(tmp_path):
    path = str(tmp_path / "results.jsonl")
    for r in RECORDS:
        append_result(path, r)
    summaries = summarize(read_results(path), higher_is_better=False)
    table = markdown_table(summaries, "test_loss", "hidden")
    assert (
        "| 10 | 1,000 | 1.1000 ± 0.1000 | 0.9500 ± 0.0500 | 0.1 | 0.1500 ± 0.0500 "
        "| 2 | 1 |" in table
    )
    assert "| 20 | 4,000 | 2.0000 | 1.5000 | 0.5 | 0.5000 | 1 | 0 |" in table
    assert "rho=0.5" in rho_table(summaries, "test_loss")


def test_keys_restrict_the_summary():
    keys = {r["key"] for r in RECORDS if r["size"] == 20}
    (only,) = summarize(RECORDS, higher_is_better=False, keys=keys)
    assert only.size == 20


def test_hessian_table():
    records = [
        dict(rec(1, "baseline", None, 0, 1.0), hessian={"sharpness": 4.0, "s2": 2.0})
    ]
    records.append(
        dict(rec(1, "sam", 0.1, 0, 1.0), hessian={"sharpness": 1.0, "s2": 0.5})
    )
    table = hessian_table(records)
    assert "| 1 | baseline | 4.000 | 2.000 |" in table
    assert "| 1 | SAM rho=0.1 | 1.000 | 0.500 |" in table
    assert hessian_table(RECORDS) is None


def sparse_rec(size, variant, method, rho, seed, value, sparsity, nonzero):
    r = rec(size, method, rho, seed, value, params=size * 100)
    r["key"] = r["key"].replace("|dense|", f"|{variant}|")
    r.update(variant=variant, sparsity=sparsity, nonzero_params=nonzero)
    return r


def test_sparse_variants_are_summarized_apart_by_hand():
    records = [
        rec(10, "baseline", None, 0, 1.0),
        rec(10, "sam", 0.1, 0, 0.9),
        sparse_rec(40, "random@10", "baseline", None, 0, 0.8, 0.75, 1030),
        sparse_rec(40, "random@10", "sam", 0.1, 0, 0.6, 0.75, 1030),
        sparse_rec(40, "snip@10", "baseline", None, 0, 0.7, 0.75, 1030),
        sparse_rec(40, "snip@10", "sam", 0.1, 0, 0.65, 0.75, 1030),
    ]
    dense, rand, snip = summarize(records, higher_is_better=False)
    assert (dense.variant, dense.sparsity, dense.nonzero) == ("dense", 0.0, 1000)
    assert dense.pruning_method is None and rand.pruning_method == "random"
    assert rand.variant == "random@10" and snip.variant == "snip@10"
    assert rand.gap.mean == pytest.approx(0.2) and snip.gap.mean == pytest.approx(0.05)
    assert rand.sparsity == 0.75 and rand.nonzero == 1030 and rand.params == 4000
    table = markdown_table([dense, rand, snip], "test_loss", "hidden")
    lines = table.splitlines()
    assert "| pruning | sparsity | non-zero |" in lines[0]
    assert len(lines[1].split("|")) == len(lines[0].split("|"))
    assert "| 40 | 4,000 | random | 0.750 | 1,030 | 0.8000 | 0.6000 | 0.1 |" in table
    assert "| 10 | 1,000 | dense | 0.000 | 1,000 |" in table
    assert "40 snip@10" in rho_table([dense, rand, snip], "test_loss")
    # Dense-only tables keep their columns.
    assert "sparsity" not in markdown_table([dense], "test_loss")


def test_smoothness_table_by_hand():
    from keras_sam.study.sweep.summary import smoothness_table

    a = rec(10, "baseline", None, 0, 1.0)
    a["smoothness"] = [
        {"epoch": 0, "beta_hat": 4.0, "alpha_hat": 0.1},
        {"epoch": 1, "beta_hat": 2.0, "alpha_hat": 0.3},
        {"epoch": 2, "beta_hat": 3.0, "alpha_hat": None},
    ]
    b = rec(10, "baseline", None, 1, 1.0)
    b["smoothness"] = [{"epoch": 0, "beta_hat": 5.0, "alpha_hat": 0.5}]
    table = smoothness_table([a, b, rec(10, "sam", 0.1, 0, 0.9)], digits=2)
    # Medians 3.0 and 5.0 (beta), 0.2 and 0.5 (alpha); then mean ± s.e.
    assert "| 10 | baseline | 4.00 ± 1.00 | 0.35 ± 0.15 |" in table
    assert "SAM" not in table  # no estimates for that run
    assert smoothness_table([rec(10, "sam", 0.1, 0, 0.9)]) is None

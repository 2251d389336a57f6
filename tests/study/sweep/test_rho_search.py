"""The rho search (``--rhos auto``) on a fake runner whose optima are known:
it lands inside the grid, stops at a divergence and at "no gain", resumes
after a kill, gives the same result in shards, and reuses recorded runs."""

import io

import pytest

from keras_sam.study import cli
from keras_sam.study.sweep import rho_search, run_sweep
from keras_sam.study.sweep.plan import plan_runs
from keras_sam.study.sweep.results import latest_by_key, read_folder
from keras_sam.study.sweep.rho_search import (
    BOTTOM_LIMIT,
    INTERIOR,
    NO_GAIN,
    TOP_EDGE,
    TOP_LIMIT,
    RhoPoint,
    SearchOptions,
    decide,
)
from tests.study.sweep.runs import preset

EXPECTED = {  # size -> (best rho, verdict, rhos added)
    4: (0.8, INTERIOR, (0.4, 0.8, 1.6)),
    8: (0.025, INTERIOR, (0.025, 0.0125)),
    16: (0.4, INTERIOR, (0.4, 0.8)),
    32: (0.05, NO_GAIN, ()),
}


def outcome(state):
    return {
        int(g.size): (g.decision.best_rho, g.decision.verdict, g.extensions)
        for g in state
    }


def search(out, **kwargs):
    return rho_search.run_rho_search(
        preset(), str(out), make_plots=False, stream=io.StringIO(), **kwargs
    )


def test_search_finds_the_known_optima_inside_the_grid(tmp_path, fake):
    calls, _ = fake
    state = search(tmp_path)
    assert outcome(state) == EXPECTED
    assert all(g.done for g in state)
    assert len(calls) == len(set(calls)) == 48 + (3 + 2 + 2) * 3
    by_size = {int(g.size): g for g in state}
    assert (
        "rho 0.8 diverged (3/3 seeds: non-finite metric)" in by_size[16].decision.note
    )
    assert by_size[16].points[0.8].diverged
    summary = (tmp_path / "summary.md").read_text()
    assert "| 4 | sam | 0.05, 0.1, 0.2, 0.4+, 0.8+, 1.6+ | 0.8 | interior |" in summary
    assert (
        "| 16 | sam | 0.05, 0.1, 0.2, 0.4+, 0.8+! | 0.4 | interior (rho 0.8" in summary
    )
    assert "| 32 | sam | 0.05, 0.1, 0.2 | 0.05 | no gain (SAM no better" in summary
    # The main table: every best rho interior except the no-gain size's.
    assert summary.count("| interior |") >= 3 and "**bottom edge**" in summary
    # A second call has nothing left to run.
    calls.clear()
    assert outcome(search(tmp_path)) == EXPECTED and calls == []


def test_killed_search_resumes_where_it_stopped(tmp_path, fake):
    calls, kill = fake
    kill.append(55)  # in the second round (the first has 4 x 4 x 3 = 48 runs)
    with pytest.raises(KeyboardInterrupt):
        search(tmp_path)
    first = list(calls)
    calls.clear()
    assert outcome(search(tmp_path)) == EXPECTED
    # Only the interrupted run is trained twice.
    assert set(first) & set(calls) == {first[-1]}
    assert len(set(first) | set(calls)) == 69


def test_shards_in_rounds_give_the_same_search(tmp_path, fake):
    calls, _ = fake
    whole = outcome(search(tmp_path / "whole"))
    calls.clear()
    out = tmp_path / "sharded"
    rounds = 0
    while True:
        before = len(calls)
        for k in (1, 2, 3):
            search(out, shard=(k, 3))
        rounds += 1
        if len(calls) == before:
            break
    assert rounds > 2  # the extensions needed rounds
    assert len(calls) == len(set(calls)) == 69  # each run once, in some shard
    records = read_folder(str(out))
    assert {r["shard"] for r in records} == {"1/3", "2/3", "3/3"}
    assert not (out / "summary.md").exists()  # shards write none
    state = rho_search.write_search_summary(
        preset(), str(out), make_plots=False, stream=io.StringIO()
    )
    assert outcome(state) == whole == EXPECTED
    assert "Rho search" in (out / "summary.md").read_text()


def test_extension_shard_does_not_depend_on_what_is_known(tmp_path, fake):
    state = search(tmp_path)
    runs = rho_search.search_runs(preset(), state)
    for n in (2, 3):
        parts = [rho_search.shard_search_runs(preset(), runs, (k, n)) for k in
                 range(1, n + 1)]  # fmt: skip
        assert sorted(r.key for p in parts for r in p) == sorted(r.key for r in runs)
        # Fewer extensions known: the ones left keep their shard.
        fewer = runs[:-6]
        for k in range(1, n + 1):
            mine = {
                r.key for r in rho_search.shard_search_runs(preset(), fewer, (k, n))
            }
            assert mine == {r.key for r in parts[k - 1]} & {r.key for r in fewer}


def test_search_reuses_runs_recorded_at_the_doubled_rhos(tmp_path, fake):
    calls, _ = fake
    grid = preset(rhos=(0.05, 0.1, 0.2, 0.4, 0.8))
    run_sweep(grid, str(tmp_path), make_plots=False, stream=io.StringIO())
    assert len(calls) == 4 * 6 * 3
    calls.clear()
    found = outcome(search(tmp_path))
    assert {k: v[:2] for k, v in found.items()} == {
        k: v[:2] for k, v in EXPECTED.items()
    }
    # Rhos recorded for every seed join the grid (they count as extensions).
    assert found[8][2] == (0.4, 0.8, 0.025, 0.0125) and found[32][2] == (0.4, 0.8)
    trained = {(k.split("|")[3], k.split("|")[5]) for k in calls}
    assert trained == {("4", "1.6"), ("8", "0.025"), ("8", "0.0125")}
    assert len(calls) == 3 * 3
    keys = latest_by_key(read_folder(str(tmp_path)))
    assert f"synthetic|{grid.config_id()}|dense|4|sam|0.4|0" in keys


def test_rho_keys_of_doubling_and_halving():
    rho = 0.2
    for expected in ("0.4", "0.8", "1.6", "3.2", "6.4"):
        rho = rho_search.next_rho(rho, +1)
        assert f"{rho:g}" == expected
    rho = 0.05
    for expected in ("0.025", "0.0125", "0.00625", "0.003125"):
        rho = rho_search.next_rho(rho, -1)
        assert f"{rho:g}" == expected
    assert (
        rho_search.next_rho(0.3, +1) == 0.6 and rho_search.canonical_rho(0.1 * 3) == 0.3
    )


def points(gaps, diverged=()):
    return {
        rho: RhoPoint(rho, gap, 0.5 + gap, 3, "non-finite" if rho in diverged else None)
        for rho, gap in gaps.items()
    }


def test_decide_edges_limits_and_no_gain():
    start = (0.05, 0.1, 0.2)
    opts = SearchOptions(max_extensions=2)
    up = decide(points({0.05: 0.0, 0.1: 0.01, 0.2: 0.02}), start, opts)
    assert (up.best_rho, up.next_rho, up.verdict) == (0.2, 0.4, TOP_EDGE)
    limit = decide(points({0.05: 0, 0.1: 0.01, 0.2: 0.02, 0.4: 0.03, 0.8: 0.04}),
                   start, opts)  # fmt: skip
    assert (limit.best_rho, limit.next_rho, limit.verdict) == (0.8, None, TOP_LIMIT)
    down = decide(points({0.05: 0.03, 0.1: 0.02, 0.2: 0.01}), start, opts)
    assert down.next_rho == 0.025
    floor = decide(points({0.0125: 0.05, 0.025: 0.04, 0.05: 0.03, 0.1: 0.02,
                           0.2: 0.01}), start, opts)  # fmt: skip
    assert (floor.best_rho, floor.next_rho, floor.verdict) == (
        0.0125,
        None,
        BOTTOM_LIMIT,
    )
    low = SearchOptions(max_extensions=4, min_rho=0.04)
    assert decide(points({0.05: 0.03, 0.1: 0.02, 0.2: 0.01}), start, low).verdict == (
        BOTTOM_LIMIT
    )
    none = decide(points({0.05: -0.01, 0.1: -0.02, 0.2: -0.03}), start, opts)
    assert (none.best_rho, none.next_rho, none.verdict) == (0.05, None, NO_GAIN)
    # A diverged rho ranks last: the best below it is interior.
    stop = decide(points({0.05: 0, 0.1: 0.01, 0.2: 0.02, 0.4: 0.9}, {0.4}), start)
    assert (stop.best_rho, stop.next_rho, stop.verdict) == (0.2, None, INTERIOR)
    assert "0.4 diverged" in stop.note
    # Ties go to the smaller rho; every rho diverged: try smaller ones.
    tie = decide(points({0.05: 0.01, 0.1: 0.02, 0.2: 0.02}), start)
    assert tie.best_rho == 0.1 and tie.verdict == INTERIOR
    assert decide(points({0.05: 0, 0.1: 0, 0.2: 0}, {0.05, 0.1, 0.2}),
                  start).next_rho == 0.025  # fmt: skip


def test_a_single_rho_goes_up_if_it_helps_else_down():
    assert decide(points({0.1: 0.01}), (0.1,)).next_rho == 0.2
    assert decide(points({0.1: -0.01}), (0.1,)).next_rho == 0.05
    # Then the two rhos decide as any grid: smaller better, still no gain.
    two = decide(points({0.05: -0.005, 0.1: -0.01}), (0.1,))
    assert (two.best_rho, two.next_rho, two.verdict) == (0.05, None, NO_GAIN)
    none = SearchOptions(max_extensions=0)
    assert decide(points({0.1: -0.01}), (0.1,), none).verdict == NO_GAIN


def seeded(rho, by_seed):
    gap = sum(by_seed.values()) / len(by_seed)
    return RhoPoint(rho, gap, 0.5 + gap, len(by_seed), None, by_seed)


def test_an_edge_within_the_noise_of_the_best_is_extended_past():
    # MNIST-1D width 100 had 0.1 ~ 0.2 (a plateau), and 0.4 far better.
    low = seeded(0.05, {0: 0.0, 1: 0.01, 2: 0.0})
    best = seeded(0.1, {0: 0.02, 1: 0.03, 2: 0.01})
    tied = seeded(0.2, {0: 0.025, 1: 0.015, 2: 0.012})
    # per-seed best - top: -0.005, 0.015, -0.002: mean 0.00267, s.e. 0.00623
    pts = {0.05: low, 0.1: best, 0.2: tied}
    d = decide(pts, (0.05, 0.1, 0.2))
    assert (d.best_rho, d.next_rho, d.verdict) == (0.1, 0.4, TOP_EDGE)
    assert "rho 0.2 within 1 s.e. of the best 0.1" in d.note
    # Within 0.4 s.e. it is no tie: 0.00267 > 0.4 * 0.00623 = 0.00249.
    assert decide(pts, (0.05, 0.1, 0.2), SearchOptions(tie=0.4)).next_rho is None
    assert decide(pts, (0.05, 0.1, 0.2), SearchOptions(tie=0.45)).next_rho == 0.4
    # A tie with no extension left is not an interior optimum.
    d = decide(pts, (0.05, 0.1, 0.2), SearchOptions(max_extensions=0))
    assert (d.best_rho, d.next_rho, d.verdict) == (0.1, None, TOP_LIMIT)
    # The same mean difference on every seed (s.e. 0): the best is interior.
    clear = seeded(0.2, {0: 0.0, 1: 0.01, 2: -0.01})
    d = decide({0.05: low, 0.1: best, 0.2: clear}, (0.05, 0.1, 0.2))
    assert (d.best_rho, d.next_rho, d.verdict) == (0.1, None, INTERIOR)
    # A tie at the bottom extends down only where SAM still gains there.
    pts = {0.05: seeded(0.05, {0: 0.025, 1: 0.015, 2: 0.012}), 0.1: best,
           0.2: clear}  # fmt: skip
    assert decide(pts, (0.05, 0.1, 0.2)).next_rho == 0.025
    losing = seeded(0.05, {0: 0.025, 1: -0.015, 2: -0.012})
    assert (
        decide({0.05: losing, 0.1: best, 0.2: clear}, (0.05, 0.1, 0.2)).next_rho is None
    )
    # A tie with a top edge where SAM does not gain is not extended past.
    worse = seeded(0.2, {0: -0.01, 1: 0.0, 2: -0.02})  # ties: 0.01 <= s.e. 0.0115
    lower = seeded(0.05, {0: -0.01, 1: -0.01, 2: -0.01})
    d = decide({0.05: lower, 0.1: seeded(0.1, {0: -0.02, 1: 0.03, 2: -0.01}),
                0.2: worse}, (0.05, 0.1, 0.2))  # fmt: skip
    assert (d.best_rho, d.next_rho, d.verdict) == (0.1, None, INTERIOR)
    with pytest.raises(ValueError, match="tie"):
        SearchOptions(tie=-1.0)


def test_collapse_is_named():
    pts = {
        0.1: RhoPoint(0.1, 0.01, 0.70, 3),
        0.2: RhoPoint(0.2, 0.05, 0.74, 3),
        0.4: RhoPoint(0.4, -0.25, 0.45, 3),
    }
    decision = decide(pts, (0.1, 0.2, 0.4))
    assert (
        decision.best_rho == 0.2 and "rho 0.4 collapsed (0.74 -> 0.45)" in decision.note
    )


def test_bad_options_name_the_argument():
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="max_extensions"):
            SearchOptions(max_extensions=bad)
    with pytest.raises(ValueError, match="min_rho"):
        SearchOptions(min_rho=0.0)
    with pytest.raises(ValueError, match="collapse"):
        SearchOptions(collapse=1.0)
    for rhos in ((), (0.0, 0.1)):
        with pytest.raises(ValueError, match="rhos"):
            rho_search.search_state(preset(rhos=rhos), [], SearchOptions(), True)


def test_run_diverged_reasons():
    ok = {"status": "ok", "value": 0.5, "history": {"loss": [1.0, 0.5]}}
    assert rho_search.run_diverged(ok) is None
    assert rho_search.run_diverged(dict(ok, status="failed")) == "failed"
    assert rho_search.run_diverged(dict(ok, value=None)) == "non-finite metric"
    assert rho_search.run_diverged(dict(ok, history={"loss": [1.0, None]})) == (
        "non-finite loss"
    )
    assert rho_search.run_diverged(dict(ok, history={"loss": [1.0, 3.0]})) == (
        "loss exploded"
    )


ARGS = [
    "--sizes", "4,8,16,32", "--seeds", "0,1,2", "--epochs", "1",
    "--num-train", "64", "--num-test", "32", "--batch-size", "32",
]  # fmt: skip


def test_cli_rhos_auto(tmp_path, fake, capsys):
    calls, _ = fake
    out = str(tmp_path / "cli")
    assert cli.main(["sweep", "synthetic", *ARGS, "--rhos", "auto", "--out", out,
                     "--dry-run"]) == 0  # fmt: skip
    assert "rho search: extends" in capsys.readouterr().out and calls == []
    assert cli.main(["sweep", "synthetic", *ARGS, "--rhos", "auto", "--out", out,
                     "--no-plots"]) == 0  # fmt: skip
    # From the quick preset's grid 0.2, 0.5, 1, 2: four halvings at size 8.
    assert len(calls) == 4 * 5 * 3 + 4 * 3
    row = (
        "| 8 | sam | 0.0125+, 0.025+, 0.05+, 0.1+, 0.2, 0.5, 1, 2 | 0.025 | interior |"
    )
    assert row in open(f"{out}/summary.md").read()
    assert cli.main(["sweep", "synthetic", *ARGS, "--rhos", "auto", "--out", out,
                     "--summarize", "--no-plots"]) == 0  # fmt: skip
    capsys.readouterr()
    assert cli.main(["sweep", "synthetic", "--rhos", "auto",
                     "--max-extensions", "-1"]) == 2  # fmt: skip
    assert "max_extensions" in capsys.readouterr().err
    assert cli.main(["sweep", "synthetic", "--max-extensions", "2"]) == 2
    assert "needs `--rhos auto`" in capsys.readouterr().err
    assert cli.main(["sweep", "synthetic", "--rhos", "auto", "--launcher",
                     "submitit", "--shards", "2"]) == 2  # fmt: skip
    assert "--shard K/N" in capsys.readouterr().err
    assert len(plan_runs(preset())) == 48

"""The sweep runs SAM variants beside SAM: the plan, a tiny end-to-end sweep
and the cost-versus-gain table on hand-made records."""

import pytest

from keras_sam.study import cli
from keras_sam.study.sweep import cost_gain, plan_runs, read_results, run_sweep
from keras_sam.study.workloads import get_preset

pytestmark = pytest.mark.backend_independent

TINY = dict(
    sizes=(4,),
    rhos=(0.1,),
    seeds=(0,),
    epochs=1,
    num_train=128,
    num_test=64,
    batch_size=64,
    lr=0.01,
)


def test_plan_adds_each_variant_at_each_rho():
    preset = get_preset("synthetic", "quick").replace(
        rhos=(0.5, 1.0), sam_variants=("looksam", "gsam")
    )
    runs = plan_runs(preset)
    methods = {(r.method, r.rho) for r in runs}
    assert {("looksam", 0.5), ("looksam", 1.0), ("gsam", 1.0)} <= methods
    assert len(runs) == len(preset.sizes) * len(preset.seeds) * (1 + 3 * 2)
    # The variants do not change the id of the baseline and SAM runs.
    assert preset.config_id() == get_preset("synthetic", "quick").config_id()


def test_unknown_variant_names_the_argument():
    with pytest.raises(ValueError, match="sam_variants"):
        get_preset("synthetic", "quick").replace(sam_variants=("bsam",))


def test_tiny_sweep_records_passes_and_writes_the_table(tmp_path):
    preset = get_preset("synthetic", "quick").replace(**TINY, sam_variants=("lazysam",))
    run_sweep(preset, str(tmp_path), make_plots=False)
    records = {r["method"]: r for r in read_results(str(tmp_path / "results.jsonl"))}
    steps = 2  # 128 examples, batch 64, 1 epoch
    assert records["sam"]["gradient_passes"] == 2 * steps
    assert records["lazysam"]["gradient_passes"] == steps + 1  # step 0 only
    assert "SAM variants, cost versus gain" in (tmp_path / "summary.md").read_text()


def test_cli_takes_sam_variants(capsys):
    argv = ["sweep", "synthetic", "--sam-variants", "looksam,wsam", "--dry-run"]
    assert cli.main(argv) == 0
    assert "SAM variants: looksam, wsam" in capsys.readouterr().out


def record(method, rho, seed, value, seconds, passes=None):
    return {
        "key": f"{method}|{rho}|{seed}",
        "status": "ok",
        "size": 100,
        "params": 1000,
        "method": method,
        "rho": rho,
        "seed": seed,
        "value": value,
        "train_seconds": seconds,
        "gradient_passes": passes,
    }


def test_cost_gain_rows_by_hand():
    records = [
        record("baseline", None, 0, 1.0, 10.0),
        record("baseline", None, 1, 1.2, 10.0),
        record("sam", 0.5, 0, 0.8, 20.0, 200),
        record("sam", 0.5, 1, 1.0, 20.0, 200),
        record("sam", 1.0, 0, 0.9, 20.0, 200),
        record("sam", 1.0, 1, 1.1, 20.0, 200),
        record("looksam", 0.5, 0, 0.95, 12.0, 120),
        record("looksam", 0.5, 1, 1.05, 12.0, 120),
    ]
    rows = {r["method"]: r for r in cost_gain.cost_gain_rows(records, False, None)}
    assert rows["sam"]["rho"] == 0.5
    assert rows["sam"]["gap"] == pytest.approx(0.2)
    assert rows["looksam"]["share"] == pytest.approx(0.1 / 0.2)
    assert rows["looksam"]["cost"] == pytest.approx(1.2)
    assert rows["looksam"]["passes_per_step"] == pytest.approx(1.2)
    table = cost_gain.cost_gain_table(records, "test_loss", "hidden", False)
    assert "| 100 | looksam | 0.5 | 1.0000 | +0.1000 | 50% | 1.20 | 1.20 |" in table

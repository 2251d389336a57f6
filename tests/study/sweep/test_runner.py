import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from keras_sam.study import cli
from keras_sam.study.sweep import plan_runs, read_results, run_sweep, runner, train
from keras_sam.study.workloads import DatasetUnavailableError, get_preset
from tests.study.sweep.runs import ROOT, TINY_ARGS, tiny


def test_failed_run_is_recorded_and_retried(tmp_path, counted):
    calls, fail = counted
    preset = tiny()
    runs = plan_runs(preset)
    assert len(runs) == 4
    fail.add(runs[1].key)
    out = io.StringIO()
    summaries = run_sweep(preset, str(tmp_path), stream=out)
    records = read_results(str(tmp_path / "results.jsonl"))
    assert [r["status"] for r in records] == ["ok", "failed", "ok", "ok"]
    assert "boom: injected failure" in records[1]["error"]
    assert records[1]["params"] == 102 * 4 + 1
    assert summaries[0].failed == 1 and summaries[1].failed == 0
    assert "FAILED" in out.getvalue() and "[3/4 done, 1 left" in out.getvalue()
    for name in ["summary.md", "gap_vs_params.png", "best_rho_vs_params.png"]:
        assert (tmp_path / name).exists(), name
    assert (tmp_path / "convergence.png").exists()
    # The next call only retries the failed run.
    fail.clear()
    calls.clear()
    run_sweep(preset, str(tmp_path), make_plots=False, stream=io.StringIO())
    assert calls == [runs[1].key]
    # A larger grid reuses what is finished.
    calls.clear()
    run_sweep(preset.replace(seeds=(0, 1)), str(tmp_path), make_plots=False,
              stream=io.StringIO())  # fmt: skip
    assert len(calls) == 4 and all(k.endswith("|1") for k in calls)


def test_records_carry_history_and_metric(tmp_path):
    run_sweep(tiny(sizes=(4,), epochs=2), str(tmp_path), make_plots=False,
              stream=io.StringIO())  # fmt: skip
    base, sam = read_results(str(tmp_path / "results.jsonl"))
    assert base["method"] == "baseline" and base["rho"] is None
    assert sam["method"] == "sam" and sam["rho"] == 0.1
    assert len(sam["history"]["loss"]) == 2 and "perturbed_loss" in sam["history"]
    assert sam["metric"] == "test_loss" and sam["value"] == sam["scores"]["test_loss"]
    assert base["params"] == 102 * 4 + 1


def test_hessian_metrics_at_the_end(tmp_path):
    preset = tiny(sizes=(4,), rhos=(), hessian=True, hessian_examples=16)
    run_sweep(preset, str(tmp_path), make_plots=False, stream=io.StringIO())
    (record,) = read_results(str(tmp_path / "results.jsonl"))
    h = record["hessian"]
    assert h["sharpness"] > 0 and h["hessian_examples"] == 16
    assert "sharpness" in (tmp_path / "summary.md").read_text()


def test_killed_sweep_resumes_without_redoing_runs(tmp_path, counted, whole_sweep):
    calls, _ = counted
    out = tmp_path / "killed"
    results = out / "results.jsonl"
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [sys.executable, "-m", "keras_sam", "sweep", "synthetic", *TINY_ARGS]
    proc = subprocess.Popen(
        [*cmd, "--out", str(out), "--no-plots"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if results.exists() and len(results.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {r["key"] for r in read_results(str(results))}
    assert 2 <= len(done) < 6, "the sweep must be killed part-way"
    assert cli.main(["sweep", "synthetic", *TINY_ARGS, "--out", str(out),
                     "--no-plots"]) == 0  # fmt: skip
    assert set(calls).isdisjoint(done) and len(calls) == 6 - len(done)
    # Same table as an uninterrupted sweep.
    table = (out / "summary.md").read_text().split("Total run time")[0]
    fresh = (whole_sweep / "summary.md").read_text().split("Total run time")[0]
    assert table == fresh


def test_dry_run_prints_plan_and_counts(capsys, tmp_path):
    assert cli.main(["sweep", "cifar10", "--preset", "paper", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "210 runs" in text and "base_filters=256: 178,585,866 parameters" in text
    assert cli.main(["sweep", "mnist", "--sizes", "10", "--dry-run"]) == 0
    assert "width=10: 5,366,010 parameters" in capsys.readouterr().out


def test_unavailable_dataset_stops_the_sweep_once_before_the_first_run(
    tmp_path, capsys
):
    preset = get_preset("mnist", "quick").replace(sizes=(0.25, 1.0), rhos=(0.1,))
    with pytest.raises(DatasetUnavailableError, match="--data-dir"):
        run_sweep(preset, str(tmp_path), data_dir=str(tmp_path / "tfds"),
                  download=False, make_plots=False, stream=io.StringIO())  # fmt: skip
    assert read_results(str(tmp_path / "results.jsonl")) == []  # no failed runs
    tfds_dir, out = str(tmp_path / "tfds"), str(tmp_path / "cli")
    args = ["sweep", "mnist", "--sizes", "0.25,1", "--no-download", "--no-plots",
            "--data-dir", tfds_dir, "--out", out]  # fmt: skip
    assert cli.main(args) == 2
    captured = capsys.readouterr()
    assert captured.err.count("is not available") == 1
    assert "done," not in captured.out  # no run started


def test_cli_rejects_bad_values(capsys):
    assert cli.main(["sweep", "synthetic", "--epochs", "0", "--dry-run"]) == 2
    assert "epochs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["sweep", "synthetic", "--rhos", "a,b"])


def test_configs_json_lists_the_training_config(tmp_path):
    preset = tiny(sizes=(4,), rhos=())
    run_sweep(preset, str(tmp_path), make_plots=False, stream=io.StringIO())
    configs = json.loads((tmp_path / "configs.json").read_text())
    assert configs[preset.config_id()]["epochs"] == 1
    assert runner.SUMMARY_NAME == "summary.md"


def test_matrix_factorization_sweep_uses_usam(tmp_path, monkeypatch):
    seen = []
    real = train.keras_sam.sam

    def spy(model, **kwargs):
        seen.append(kwargs["perturbation"])
        return real(model, **kwargs)

    monkeypatch.setattr(train.keras_sam, "sam", spy)
    preset = get_preset("matrix-factorization", "quick").replace(
        epochs=2, num_train=100, num_test=20, rhos=(0.01,)
    )
    sizes = run_sweep(preset, str(tmp_path), stream=io.StringIO())
    assert seen == ["usam", "usam"] and [s.params for s in sizes] == [64, 160]
    assert (tmp_path / "convergence.png").exists()
    with pytest.raises(ValueError, match="perturbation"):
        preset.replace(perturbation="adam")


def test_summary_without_matplotlib(tmp_path, monkeypatch):
    from keras_sam.study.sweep import plots

    def missing(*args, **kwargs):
        raise ImportError("Plots need matplotlib")

    monkeypatch.setattr(plots, "subplots", missing)
    run_sweep(tiny(sizes=(4,), rhos=()), str(tmp_path), stream=io.StringIO())
    text = (tmp_path / "summary.md").read_text()
    assert "| 4 |" in text and "No plots: Plots need matplotlib" in text


def test_fixed_budget_sweep_prunes_to_the_budget(tmp_path):
    # The Hessian metrics of a pruned model: test_snip_keeps_the_highest_scores_
    # of_the_first_batch (train.curvature, as a run's record has them).
    preset = tiny(sizes=(4, 16), sparse_budget=4, epochs=2)
    summaries = run_sweep(preset, str(tmp_path), stream=io.StringIO())
    records = {
        (r["variant"], r["method"]): r
        for r in read_results(str(tmp_path / "results.jsonl"))
    }
    assert len(records) == 6 and all(r["status"] == "ok" for r in records.values())
    budget_kernels = 100 * 4 + 4 * 1
    wide_kernels, wide_params = 100 * 16 + 16, 102 * 16 + 1
    for method in ("random", "snip"):
        for opt in ("baseline", "sam"):
            r = records[(f"{method}@4", opt)]
            # Non-zero kernel weights after training = the budget's kernels.
            assert r["nonzero_params"] == wide_params - wide_kernels + budget_kernels
            assert r["sparsity"] == pytest.approx(1 - budget_kernels / wide_kernels)
    assert "sparsity" not in records[("dense", "baseline")]
    assert [s.variant for s in summaries] == ["dense", "random@4", "snip@4"]
    text = (tmp_path / "summary.md").read_text()
    assert "Fixed budget" in text and "| 16 | 1,633 | snip |" in text
    for name in ["metric_vs_sparsity.png", "gap_vs_sparsity.png"]:
        assert (tmp_path / name).exists(), name
    assert not (tmp_path / "gap_vs_params.png").exists()


def test_snip_keeps_the_highest_scores_of_the_first_batch(tmp_path):
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_sam.study.sweep.plan import RunSpec
    from keras_sam.study.workloads import get_workload

    preset = tiny(sizes=(4, 16), sparse_budget=4)
    workload = get_workload("synthetic")
    data = workload.load(num_train=128, num_test=64)
    spec = RunSpec("synthetic", preset.config_id(), 16, "baseline", None, 0, "snip@4")
    model = workload.build(16, seed=0)
    before = [v.numpy() for v in model.trainable_variables]
    x, y = data.train[0][:64], data.train[1][:64]
    with tf.GradientTape() as tape:
        loss = keras.ops.mean((model(x) - y) ** 2)
    grads = tape.gradient(loss, model.trainable_variables)
    train.prune(model, spec, workload, preset, data, {})
    kernels = [i for i, v in enumerate(model.trainable_variables) if len(v.shape) == 2]
    scores = np.concatenate(
        [np.abs(before[i] * grads[i].numpy()).ravel() for i in kernels]
    )
    kept = np.concatenate(
        [model.trainable_variables[i].numpy().ravel() != 0 for i in kernels]
    )
    assert kept.sum() == 100 * 4 + 4
    assert scores[kept].min() >= scores[~kept].max()
    # A run's Hessian metrics on the pruned model (restricted to the kept
    # weights: tests/hessian/test_operators.py checks that against a dense one).
    curvature = train.curvature(model, workload, data, 8)
    assert curvature["sharpness"] > 0 and curvature["s2"] > 0
    assert curvature["hessian_examples"] == 8
    # The rescaled variant: kept weights / sqrt(density), per kernel.
    model = workload.build(16, seed=0)
    spec = RunSpec("synthetic", preset.config_id(), 16, "sam", 0.1, 0,
                   "random-rescaled@4")  # fmt: skip
    before = [v.numpy() for v in model.trainable_variables]
    train.prune(model, spec, workload, preset, data, {})
    for i in kernels:
        after = model.trainable_variables[i].numpy()
        density = np.mean(after != 0)
        np.testing.assert_allclose(
            after, before[i] * (after != 0) / np.sqrt(density), rtol=1e-6
        )


def test_smoothness_estimates_along_training(tmp_path):
    preset = tiny(sizes=(4,), rhos=(0.1,), smoothness=True, hessian_examples=16,
                  epochs=4)  # fmt: skip
    run_sweep(preset, str(tmp_path), stream=io.StringIO())
    records = read_results(str(tmp_path / "results.jsonl"))
    for r in records:
        track = r["smoothness"]
        assert [p["epoch"] for p in track] == [0, 1, 2, 3]
        assert all(p["beta_hat"] > 0 and p["alpha_hat"] > 0 for p in track)
    assert preset.config_id() == preset.replace(smoothness=False).config_id()
    assert "median beta_hat" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "smoothness.png").exists()


def test_mnist_stability_run_on_mock_data(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    from keras_sam.study.workloads.registry import Workload

    kinds = []
    real = Workload.loss

    def spy(self, kind="default"):
        kinds.append(kind)
        return real(self, kind)

    monkeypatch.setattr(Workload, "loss", spy)
    from keras_sam.study.workloads import datasets

    samples = []
    real_sample = datasets.train_sample

    def sample_spy(*args, **kwargs):
        samples.append(args)
        return real_sample(*args, **kwargs)

    monkeypatch.setattr(datasets, "train_sample", sample_spy)
    preset = get_preset("mnist", "stability").replace(
        sizes=(0.25,), rhos=(0.1,), epochs=1, num_train=64, num_test=32,
        batch_size=32, hessian_examples=16, keras_verbose=0,
    )  # fmt: skip
    with tfds.testing.mock_data(num_examples=100):
        run_sweep(preset, str(tmp_path), make_plots=False, stream=io.StringIO())
    base, sam = read_results(str(tmp_path / "results.jsonl"))
    for record in (base, sam):
        assert record["status"] == "ok", record.get("error")
        h = record["hessian"]
        assert h["sharpness"] > 0 and h["s2"] > 0 and h["hessian_examples"] == 16
    assert kinds == ["squared"] * 4  # training and Hessian metrics, both runs
    assert len(samples) == 1  # drawn once, though the pipeline is fresh per run
    text = (tmp_path / "summary.md").read_text()
    assert "Loss: squared" in text and "non-uniformity s2" in text


def test_cli_loss_override_and_mnist_stability_plan(capsys):
    parser_args = ["sweep", "mnist", "--preset", "stability", "--dry-run"]
    assert cli.main([*parser_args, "--loss", "default"]) == 0
    text = capsys.readouterr().out
    assert "width=10: 5,366,010 parameters, 6 runs" in text
    assert "loss:" not in text and "1000 random training examples" in text
    assert cli.main(["sweep", "synthetic", "--loss", "squared", "--dry-run"]) == 0
    assert "loss: squared" in capsys.readouterr().out
    assert cli.main(["sweep", "synthetic", "--loss", "hinge", "--dry-run"]) == 2
    assert "`loss` must be one of" in capsys.readouterr().err


def test_mirrored_strategy_run_equals_the_plain_run():
    from keras_sam.study.workloads import get_workload

    preset = tiny(sizes=(4,), hessian=True, hessian_examples=16)
    workload = get_workload("synthetic")
    data = workload.load(num_train=128, num_test=64, seed=0)
    spec = plan_runs(preset)[1]  # SAM
    plain = train.train_run(spec, workload, preset, data)
    mirrored = train.train_run(spec, workload, preset, data, strategy="mirrored")
    assert plain["replicas"] == mirrored["replicas"] == 1
    assert mirrored["value"] == pytest.approx(plain["value"], abs=1e-6)
    assert mirrored["hessian"]["sharpness"] == pytest.approx(
        plain["hessian"]["sharpness"], rel=1e-4
    )


def test_sweep_creates_one_strategy_for_all_runs(tmp_path, monkeypatch):
    import tensorflow as tf

    seen = []

    def fake(spec, workload, preset, data, verbose=0, strategy=None):
        seen.append(strategy)
        return {"value": 1.0, "params": 1, "replicas": 1}

    monkeypatch.setattr(train, "train_run", fake)
    run_sweep(tiny(), str(tmp_path), make_plots=False, stream=io.StringIO(),
              strategy="mirrored")  # fmt: skip
    assert len(seen) == 4 and all(s is seen[0] for s in seen)
    assert isinstance(seen[0], tf.distribute.MirroredStrategy)


def test_bad_strategy_names_the_accepted_values(tmp_path):
    with pytest.raises(ValueError, match=r"`strategy` must be one of \['none', 'm"):
        run_sweep(tiny(), str(tmp_path), strategy="tpu", stream=io.StringIO())
    assert not (tmp_path / "results.jsonl").exists()
    with pytest.raises(SystemExit):
        cli.main(["sweep", "synthetic", "--strategy", "tpu", "--dry-run"])


def test_tfds_run_does_not_depend_on_the_runs_before_it(tmp_path):
    import shutil

    import tensorflow_datasets as tfds

    preset = get_preset("mnist", "quick").replace(
        sizes=(0.25,), rhos=(0.1,), seeds=(0,), epochs=1, num_train=64,
        num_test=32, batch_size=16,
    )  # fmt: skip
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    with tfds.testing.mock_data(num_examples=100):
        run_sweep(preset, str(whole), make_plots=False, stream=io.StringIO())
        base, sam = read_results(str(whole / "results.jsonl"))
        resumed.mkdir()
        shutil.copy(whole / "configs.json", resumed)
        with open(resumed / "results.jsonl", "w") as f:
            f.write(json.dumps(base) + "\n")  # as if killed after the first run
        run_sweep(preset, str(resumed), make_plots=False, stream=io.StringIO())
    again = read_results(str(resumed / "results.jsonl"))[-1]
    assert again["key"] == sam["key"] and sam["status"] == "ok"
    assert again["history"]["loss"] == sam["history"]["loss"]
    assert again["value"] == sam["value"]


def test_eval_every_epoch_records_the_test_curve_and_its_best_epoch(tmp_path):
    preset = tiny(epochs=3, rhos=(), eval_every_epoch=True)
    assert preset.config_id() == tiny(epochs=3, rhos=()).config_id()
    run_sweep(preset, str(tmp_path), make_plots=False, stream=io.StringIO())
    for record in read_results(str(tmp_path / "results.jsonl")):
        curve = record["history"]["val_loss"]
        assert len(curve) == 3
        assert record["scores"]["best_epoch_test_loss"] == min(curve)
        assert curve[-1] == pytest.approx(record["value"], rel=1e-4)


def test_cli_init_option_keeps_the_default_out_of_the_config(monkeypatch):
    import keras_sam.study.sweep

    seen = []
    monkeypatch.setattr(
        keras_sam.study.sweep, "describe_plan", lambda preset: seen.append(preset) or []
    )
    for init in ("he", "torch"):
        assert cli.main(["sweep", "synthetic", "--preset", "paper", "--init", init,
                         "--dry-run"]) == 0  # fmt: skip
    he, torch = seen
    assert he.model_options == {} and torch.model_options == {"init": "torch"}
    assert he.config_id() == "70030c81d0"  # the recorded docs/sweep-paper-subset
    assert torch.config_id() == get_preset("synthetic", "paper").config_id()
    assert cli.main(["sweep", "synthetic", "--init", "lecun", "--dry-run"]) == 2
    assert cli.main(["sweep", "mnist", "--init", "lecun", "--dry-run"]) == 0
    assert seen[-1].model_options == {"init": "lecun"}

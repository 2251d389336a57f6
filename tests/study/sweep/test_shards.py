"""Sharded sweeps: a deterministic partition, concurrent shards into one
folder (the documented launchers), resuming a killed shard, --summarize."""

import io
import os
import subprocess
import sys

import pytest

from keras_sam.study import cli
from keras_sam.study.sweep import plan_runs, run_sweep, train
from keras_sam.study.sweep.plan import parse_shard, shard_runs
from keras_sam.study.sweep.results import read_folder, read_results
from tests.study.sweep.runs import ROOT, TINY_ARGS, tiny

CLUSTER = os.path.join(ROOT, "docs", "cluster")


def test_shards_partition_the_plan():
    runs = plan_runs(tiny(rhos=(0.1, 0.2, 0.5), seeds=(0, 1)))
    parts = [shard_runs(runs, (k, 3)) for k in (1, 2, 3)]
    assert sorted(r.key for p in parts for r in p) == sorted(r.key for r in runs)
    assert [len(p) for p in parts] == [6, 5, 5]
    assert parts[0] == shard_runs(plan_runs(tiny(rhos=(0.1, 0.2, 0.5),
                                                 seeds=(0, 1))), (1, 3))  # fmt: skip
    assert shard_runs(runs, None) == runs and parse_shard("2/4") == (2, 4)
    for bad in ("0/2", "3/2", "1", "a/b", "1/0"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)
    assert cli.main(["sweep", "synthetic", "--shard", "3/2", "--dry-run"]) == 2


def _env(**extra):
    return dict(
        os.environ,
        PYTHONPATH=ROOT,
        TF_CPP_MIN_LOG_LEVEL="3",
        KERAS_SAM=f"{sys.executable} -m keras_sam",
        **extra,
    )


def _by_key(records):
    return {r["key"]: r for r in records}


def _check_equals_whole_sweep(out, whole):
    records = read_folder(str(out))
    keys = [r["key"] for r in records]
    assert len(keys) == len(set(keys)) == 6  # each run recorded once
    assert all(r["status"] == "ok" for r in records)
    expected = _by_key(read_results(str(whole / "results.jsonl")))
    assert set(expected) == set(keys)
    for key, record in _by_key(records).items():
        assert record["value"] == pytest.approx(expected[key]["value"], rel=1e-5)
    return records


def test_workstation_launcher_runs_one_shard_per_gpu_into_one_folder(
    tmp_path, whole_sweep
):
    out = tmp_path / "sweep"
    script = os.path.join(CLUSTER, "workstation_sweep.sh")
    env = _env(GPUS="0,1", LOG_DIR=str(tmp_path / "logs"))
    # The shards run as keras-sam processes; the summary command the script
    # runs after them is recorded and run here (a third process would import
    # TensorFlow only to read the records).
    wrapper, recorded = tmp_path / "keras-sam", tmp_path / "summarize.args"
    wrapper.write_text(
        'case " $* " in\n'
        f'  *" --summarize "*) printf "%s\\n" "$@" > {recorded} ;;\n'
        f'  *) exec {env["KERAS_SAM"]} "$@" ;;\n'
        "esac\n"
    )
    env["KERAS_SAM"] = f"bash {wrapper}"
    args = ["synthetic", *TINY_ARGS, "--out", str(out), "--no-plots"]
    proc = subprocess.run(
        ["bash", script, *args],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    command = recorded.read_text().splitlines()
    assert command == ["sweep", *args, "--summarize"]
    assert not (out / "summary.md").exists()
    assert cli.main(command) == 0
    records = _check_equals_whole_sweep(out, whole_sweep)
    for record in records:  # shard k ran on the k-th listed GPU
        k = record["shard"].split("/")[0]
        assert record["cuda_visible_devices"] == {"1": "0", "2": "1"}[k]
    assert sorted(os.listdir(out)) == [
        "configs.json", "results.shard-1-of-2.jsonl", "results.shard-2-of-2.jsonl",
        "summary.md",
    ]  # fmt: skip
    assert "| 8 |" in (out / "summary.md").read_text()


def test_slurm_array_task_runs_its_shard(capsys):
    # The script's command printed instead of run (each run would import
    # TensorFlow; the workstation launcher above runs real shards), then run
    # here.
    script = os.path.join(CLUSTER, "slurm_sweep.sh")
    args = ["bash", script, "synthetic", *TINY_ARGS, "--dry-run"]
    tasks = [{"SLURM_ARRAY_TASK_ID": "0"}, {"SLURM_ARRAY_TASK_ID": "5",
                                            "SLURM_ARRAY_TASK_MIN": "4"}]  # fmt: skip
    for k, task in enumerate(tasks, start=1):
        env = _env(SLURM_ARRAY_TASK_COUNT="2", **task)
        env["KERAS_SAM"] = "printf %s\\n"  # one argument a line
        proc = subprocess.run(args, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        command = proc.stdout.splitlines()
        assert command == ["sweep", "synthetic", *TINY_ARGS, "--dry-run",
                           "--shard", f"{k}/2"]  # fmt: skip
        assert cli.main(command) == 0
        assert f"shard {k}/2: 3 of these runs" in capsys.readouterr().out


def test_killed_shard_resumes_without_redoing_finished_runs(tmp_path, counted):
    calls, _ = counted
    preset = tiny(rhos=(0.1, 0.2))
    mine = shard_runs(plan_runs(preset), (2, 2))
    assert len(mine) == 3
    real = train.train_run
    finished = []

    def killed_on_second(spec, *args, **kwargs):
        if finished:
            raise KeyboardInterrupt  # the kill, mid-shard
        finished.append(spec.key)
        return real(spec, *args, **kwargs)

    train.train_run = killed_on_second
    try:
        with pytest.raises(KeyboardInterrupt):
            run_sweep(preset, str(tmp_path), shard="2/2", stream=io.StringIO())
    finally:
        train.train_run = real
    path = tmp_path / "results.shard-2-of-2.jsonl"
    assert [r["key"] for r in read_results(str(path))] == finished
    calls.clear()
    run_sweep(preset, str(tmp_path), shard=(2, 2), stream=io.StringIO())
    assert calls == [r.key for r in mine[1:]]  # the finished run not redone
    assert len(read_results(str(path))) == 3
    assert read_folder(str(tmp_path)) == read_results(str(path))
    # Shard 1 never ran: the summary shows what is finished.
    same = ["--rhos", "0.1,0.2", "--epochs", "1", "--batch-size", "64"]
    args = ["sweep", "synthetic", *TINY_ARGS, *same, "--out", str(tmp_path),
            "--summarize", "--no-plots"]  # fmt: skip
    assert cli.main(args) == 0
    text = (tmp_path / "summary.md").read_text()
    assert "| 4 |" in text and "| 8 |" in text

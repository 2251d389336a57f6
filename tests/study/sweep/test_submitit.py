"""`keras-sam sweep ... --launcher submitit`: shards as submitit jobs on its
local executor (subprocesses, no SLURM), a preempted task requeued through
submitit's checkpoint mechanism, then the summary."""

import json
import os
import signal
import sys

import pytest
import submitit

from keras_sam.study import cli, sweep
from keras_sam.study.sweep import submitit_launcher, train
from keras_sam.study.sweep.results import read_folder, read_results
from tests.study.sweep.runs import ROOT, TINY_ARGS

CALLS = "calls.jsonl"


#: The shard that is preempted; the other runs through (one interpreter start
#: less than preempting both, each one imports TensorFlow).
PREEMPTED = "1/2"


class PreemptedOnce(submitit_launcher.ShardTask):
    """A shard task that, on shard PREEMPTED's first attempt, is preempted
    (SIGUSR2, the signal SLURM and submitit's local controller send) as soon
    as its first run has finished: in the middle of its second run. Every run
    it starts is logged to OUT/calls.jsonl with the attempt."""

    attempt = 1

    def __call__(self):
        out, shard = self.args.out, self.args.shard
        real, finished = train.train_run, []

        def logged(spec, *args, **kwargs):
            with open(os.path.join(out, CALLS), "a") as f:
                f.write(json.dumps([shard, self.attempt, spec.key]) + "\n")
            if shard == PREEMPTED and self.attempt == 1 and finished:
                os.kill(os.getpid(), signal.SIGUSR2)
                signal.pause()  # submitit's handler requeues and exits
            result = real(spec, *args, **kwargs)
            finished.append(spec.key)
            return result

        train.train_run = logged
        try:
            return super().__call__()
        finally:
            train.train_run = real

    def checkpoint(self, *args, **kwargs):
        requeued = PreemptedOnce(self.args, self.run_shard)
        requeued.attempt = self.attempt + 1
        return submitit.helpers.DelayedSubmission(requeued)


def test_local_shards_preempted_and_requeued_equal_the_whole_sweep(
    tmp_path, monkeypatch, capsys, whole_sweep
):
    monkeypatch.setenv("PYTHONPATH", ROOT)  # the tasks unpickle PreemptedOnce
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    monkeypatch.setattr(submitit_launcher, "ShardTask", PreemptedOnce)
    out = tmp_path / "sweep"
    args = ["sweep", "synthetic", *TINY_ARGS, "--out", str(out), "--no-plots",
            "--launcher", "submitit", "--shards", "2", "--cluster", "local",
            "--timeout-min", "10"]  # fmt: skip
    assert cli.main(args) == 0, _logs(out)
    assert "submitted 2 shards of synthetic/quick to local" in capsys.readouterr().out
    calls = [json.loads(line) for line in (out / CALLS).read_text().splitlines()]
    for shard in ("1/2", "2/2"):
        first = [key for s, attempt, key in calls if s == shard and attempt == 1]
        second = [key for s, attempt, key in calls if s == shard and attempt == 2]
        if shard == PREEMPTED:
            # Preempted in its second run; the requeued task starts from there.
            assert len(first) == 2 and second == [first[1], *second[1:]], calls
            assert len(second) == 2, calls  # 3 runs per shard: 1 + 2
            first = first[:1]
        else:
            assert len(first) == 3 and second == [], calls  # never requeued
        number = shard.replace("/", "-of-")
        path = out / f"results.shard-{number}.jsonl"
        assert [r["key"] for r in read_results(str(path))] == [*first, *second]
    records = read_folder(str(out))
    keys = [r["key"] for r in records]
    assert len(keys) == len(set(keys)) == 6 and all(
        r["status"] == "ok" for r in records
    )
    assert "| 8 |" in (out / "summary.md").read_text()  # the launcher summarized
    # The same records as the unsharded sweep.
    results = whole_sweep / "results.jsonl"
    expected = {r["key"]: r for r in read_results(str(results))}
    assert set(expected) == set(keys)
    for record in records:
        assert record["value"] == pytest.approx(
            expected[record["key"]]["value"], rel=1e-5
        )
        assert record["history"]["loss"] == pytest.approx(
            expected[record["key"]]["history"]["loss"], rel=1e-5
        )


def _logs(out):
    folder = out / "submitit"
    if not folder.exists():
        return "no submitit folder"
    return "\n".join(
        f"--- {p.name}\n{p.read_text()[-3000:]}"
        for p in sorted(folder.glob("*.out")) + sorted(folder.glob("*.err"))
    )


@pytest.mark.parametrize(
    "options, message",
    [
        (["--shards", "2"], "`--shards` needs `--launcher submitit`"),
        (["--launcher", "submitit"], "`--launcher submitit` needs `--shards N`"),
        (["--launcher", "submitit", "--shards", "0"], "got --shards=0"),
        (["--launcher", "submitit", "--shards", "2", "--shard", "1/2"],
         "`--shard` and `--launcher submitit` exclude each other"),
        (["--launcher", "submitit", "--shards", "2", "--timeout-min", "0"],
         "`--timeout-min` must be >= 1"),
    ],
)  # fmt: skip
def test_launcher_options_are_checked_by_name(capsys, options, message):
    assert cli.main(["sweep", "synthetic", "--dry-run", *options]) == 2
    assert message in capsys.readouterr().err


def test_dry_run_shows_the_array(capsys):
    args = ["sweep", "synthetic", *TINY_ARGS, "--dry-run", "--launcher", "submitit",
            "--shards", "4"]  # fmt: skip
    assert cli.main(args) == 0
    assert "4 array tasks of 1-2 runs" in capsys.readouterr().out


def test_missing_submitit_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)
    monkeypatch.delitem(sys.modules, submitit_launcher.__name__)
    monkeypatch.delattr(sweep, "submitit_launcher")
    args = ["sweep", "synthetic", *TINY_ARGS, "--out", str(tmp_path),
            "--launcher", "submitit", "--shards", "2"]  # fmt: skip
    assert cli.main(args) == 2
    assert "pip install 'keras-sam[study]'" in capsys.readouterr().err
    assert not os.listdir(tmp_path)  # nothing submitted


def test_executor_parameters_follow_the_options():
    parser_args = cli_args(["--launcher", "submitit", "--shards", "3",
                            "--slurm-partition", "gpu", "--cpus-per-task", "8",
                            "--array-parallelism", "2"])  # fmt: skip
    slurm = submitit_launcher.executor_parameters(parser_args, "slurm")
    assert slurm == {
        "name": "keras-sam-synthetic", "timeout_min": 1440, "gpus_per_node": 1,
        "tasks_per_node": 1, "nodes": 1, "cpus_per_task": 8,
        "slurm_partition": "gpu", "slurm_array_parallelism": 2,
    }  # fmt: skip
    assert (
        submitit_launcher.executor_parameters(parser_args, "local")["gpus_per_node"]
        == 0
    )
    shard = submitit_launcher.shard_arguments(parser_args, 2, 3)
    assert (shard.shard, shard.launcher, shard.shards) == ("2/3", "none", None)
    assert parser_args.launcher == "submitit"  # the original is left alone


def cli_args(options):
    import argparse

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    cli._sweep_parser(sub)
    return parser.parse_args(["sweep", "synthetic", *options])

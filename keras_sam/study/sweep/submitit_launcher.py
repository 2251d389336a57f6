"""``keras-sam sweep ... --launcher submitit --shards N``: one submitit job
array task per shard, requeued on preemption and time-out, then the summary.

```python
from keras_sam.study import cli
cli.main(["sweep", "cifar10", "--preset", "paper", "--out", "/shared/c10",
          "--launcher", "submitit", "--shards", "8", "--slurm-partition", "gpu"])
```

Each task runs ``keras-sam sweep ... --shard K/N`` in its own process (the
same code path as the shell launchers in docs/cluster/): `launch` is handed
the sweep command (``run_shard``, `keras_sam.study.sweep_cli.run_sweep_command`)
and imports neither the command line nor the command. Its checkpoint is
the shard's results file: every finished run is on disk, so a requeued task
skips them and reruns only the run it was cut off in. Imported only with
``--launcher submitit`` (submitit is in the ``study`` extra).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from collections.abc import Callable
from typing import Any, TextIO

import submitit

#: submitit's clusters: SLURM, or subprocesses on this machine (no SLURM).
CLUSTERS = ("slurm", "local")


class ShardTask(submitit.helpers.Checkpointable):
    """One array task: the sweep's shard K of N, resumable.

    On preemption or time-out submitit calls `checkpoint` and requeues the
    task; the requeued task runs the same shard again, which skips the runs
    already in the folder.
    """

    def __init__(self, args: argparse.Namespace, run_shard: Callable[..., int]):
        self.args = args
        self.run_shard = run_shard  # pickled by reference: a module's function

    def __call__(self) -> int:
        return self.run_shard(self.args)

    def checkpoint(self, *args: Any, **kwargs: Any):
        # Nothing to save: the shard's results file is the checkpoint.
        return submitit.helpers.DelayedSubmission(self)


def shard_arguments(args: argparse.Namespace, k: int, n: int) -> argparse.Namespace:
    """The options of shard ``k`` of ``n``: the sweep's own, run here."""
    shard = _here(args)
    shard.shard, shard.summarize = f"{k}/{n}", False
    return shard


def _here(args: argparse.Namespace) -> argparse.Namespace:
    # The launcher's options, cleared: the copy runs in this process.
    here = copy.copy(args)
    here.launcher, here.shards = "none", None
    return here


def executor_parameters(args: argparse.Namespace, cluster: str) -> dict[str, Any]:
    """submitit's parameters from the launcher options (those given)."""
    gpus = args.gpus_per_task
    if gpus is None:  # one GPU per shard on SLURM, as docs/cluster/slurm_sweep.sh
        gpus = 1 if cluster == "slurm" else 0
    parameters = {
        "name": f"keras-sam-{args.workload}",
        "timeout_min": args.timeout_min,
        "gpus_per_node": gpus,
        "tasks_per_node": 1,
        "nodes": 1,
    }
    if args.cpus_per_task is not None:
        parameters["cpus_per_task"] = args.cpus_per_task
    if args.slurm_partition is not None:
        parameters["slurm_partition"] = args.slurm_partition
    if args.array_parallelism is not None:
        parameters["slurm_array_parallelism"] = args.array_parallelism
    return parameters


def launch(
    args: argparse.Namespace,
    out: str,
    stream: TextIO | None = None,
    *,
    run_shard: Callable[[argparse.Namespace], int],
) -> int:
    """Submits ``args.shards`` array tasks into ``out``, each calling
    ``run_shard`` (the sweep command) on its shard's options; unless
    ``args.no_wait``, waits for all of them and writes the summary (with
    ``run_shard`` and ``--summarize``).

    Returns 0 when every task ran all its runs, 1 when a task failed or
    recorded failed runs.
    """
    stream = stream or sys.stdout
    n = args.shards
    folder = args.submitit_folder or os.path.join(out, "submitit")
    executor = submitit.AutoExecutor(folder=folder, cluster=args.cluster)
    executor.update_parameters(**executor_parameters(args, executor.cluster))
    tasks = [ShardTask(shard_arguments(args, k, n), run_shard) for k in range(1, n + 1)]
    with executor.batch():
        jobs = [executor.submit(task) for task in tasks]
    ids = ", ".join(job.job_id for job in jobs)
    print(
        f"submitted {n} shards of {args.workload}/{args.preset} to {executor.cluster} "
        f"(jobs {ids}); logs in {folder}",
        file=stream,
        flush=True,
    )
    if args.no_wait:
        print(
            f"when every shard is done: keras-sam sweep {args.workload} ... "
            f"--out {out} --summarize",
            file=stream,
        )
        return 0
    status = 0
    for k, job in enumerate(jobs, start=1):
        try:
            code = job.result()
        except (
            submitit.core.utils.FailedJobError,
            submitit.core.utils.UncompletedJobError,
        ) as error:
            print(f"shard {k}/{n} (job {job.job_id}) failed: {error}", file=stream)
            code = 1
        status = status or int(code != 0)
    summary = _here(args)
    summary.summarize = True
    run_shard(summary)
    return status

"""``keras-sam sweep``: the preset named on the command line with its
overrides, then the sweep, its dry run, its summary or its submitit launch
(`keras_sam.study.cli` parses the options)."""

from __future__ import annotations

import argparse
import os
import sys

from keras_sam.study import cli


def _check_launcher(args: argparse.Namespace) -> None:
    if args.launcher == "none":
        if args.shards is not None:
            raise ValueError(
                "`--shards` needs `--launcher submitit` (to run one shard in "
                f"this process use --shard K/N), got --shards={args.shards}."
            )
        return
    if args.shard is not None:
        raise ValueError(
            "`--shard` and `--launcher submitit` exclude each other: the "
            f"launcher gives each task its shard, got --shard={args.shard}."
        )
    if args.shards is None or args.shards < 1:
        raise ValueError(
            "`--launcher submitit` needs `--shards N` with N >= 1, got "
            f"--shards={args.shards}."
        )
    for name in ("timeout_min", "cpus_per_task", "array_parallelism"):
        value = getattr(args, name)
        if value is not None and value < 1:
            option = "--" + name.replace("_", "-")
            raise ValueError(f"`{option}` must be >= 1, got {option}={value}.")
    if args.gpus_per_task is not None and args.gpus_per_task < 0:
        raise ValueError(
            f"`--gpus-per-task` must be >= 0, got --gpus-per-task={args.gpus_per_task}."
        )


def _launch_submitit(args: argparse.Namespace, out: str) -> int:
    try:
        from keras_sam.study.sweep import submitit_launcher
    except ModuleNotFoundError as error:
        if error.name != "submitit":
            raise
        print(
            "keras-sam sweep: error: `--launcher submitit` needs the submitit "
            "package: pip install 'keras-sam[study]' (or pip install submitit).",
            file=sys.stderr,
        )
        return 2
    return submitit_launcher.launch(args, out, run_shard=run_sweep_command)


def sweep_preset(args: argparse.Namespace):
    """The preset named on the command line with the overrides applied."""
    from keras_sam.study.workloads import get_preset

    preset = get_preset(args.workload, args.preset)
    changes = {
        name: getattr(args, name)
        for name, _, _ in cli._OVERRIDES
        if getattr(args, name) is not None
    }
    if changes.get("rhos") == "auto":  # the search starts from the preset's grid
        del changes["rhos"]
    if args.hessian:
        changes["hessian"] = True
    if args.smoothness:
        changes["smoothness"] = True
    if args.sparse_rescale:
        changes["sparse_rescale"] = True
    if args.eval_every_epoch:
        changes["eval_every_epoch"] = True
    if args.init is not None:
        from keras_sam.study.workloads import get_workload

        # The builder's default is left out, so that the config id (and the
        # recorded runs it finds) is the same as without the option.
        options = dict(preset.model_options, init=args.init)
        inits = get_workload(args.workload).inits
        if inits and args.init == inits[0]:
            del options["init"]
        changes["model_options"] = options
    return preset.replace(**changes) if changes else preset


def run_sweep_command(args: argparse.Namespace) -> int:
    from keras_sam.study.sweep import describe_plan, run_sweep, write_summary
    from keras_sam.study.sweep.plan import parse_shard, shard_runs
    from keras_sam.study.workloads import get_workload

    try:
        preset = sweep_preset(args)
    except ValueError as error:
        print(f"keras-sam sweep: error: {error}", file=sys.stderr)
        return 2
    shard = None
    inits = get_workload(args.workload).inits
    try:
        if args.shard is not None:
            shard = parse_shard(args.shard)
        _check_launcher(args)
        if args.init is not None and args.init not in inits:
            raise ValueError(
                f"`--init` for {args.workload!r} must be one of {list(inits)}, "
                f"got --init={args.init!r}."
            )
    except ValueError as error:
        print(f"keras-sam sweep: error: {error}", file=sys.stderr)
        return 2
    out = args.out or os.path.join("results", f"{args.workload}-{args.preset}")
    if args.rhos == "auto" or args.max_extensions is not None:
        from keras_sam.study.sweep import rho_search

        return rho_search.run_command(args, preset, out, shard)
    if args.dry_run:
        runs = shard_runs(describe_plan(preset), shard)
        if shard is not None:
            print(f"shard {shard[0]}/{shard[1]}: {len(runs)} of these runs")
        if args.launcher != "none":
            counts = [len(shard_runs(runs, (k, args.shards))) for k in
                      range(1, args.shards + 1)]  # fmt: skip
            print(f"{args.shards} array tasks of {min(counts)}-{max(counts)} runs")
        return 0
    if args.summarize:
        write_summary(preset, out, make_plots=not args.no_plots)
        return 0
    if args.launcher == "submitit":
        return _launch_submitit(args, out)
    from keras_sam.study.workloads import DatasetUnavailableError

    try:
        summaries = run_sweep(
            preset,
            out,
            data_dir=args.data_dir,
            download=False if args.no_download else None,
            make_plots=not args.no_plots,
            verbose=args.verbose,
            strategy=args.strategy,
            shard=shard,
        )
    except DatasetUnavailableError as error:
        print(f"keras-sam sweep: error: {error}", file=sys.stderr)
        return 2
    failed = sum(s.failed for s in summaries)
    return 1 if failed else 0

"""Command line (also ``python -m keras_sam ...``):

- ``keras-sam sweep WORKLOAD [options]``: the overparameterization sweep
  (sizes x {SGD, SAM at each rho} x seeds), resumable, with a summary table
  and plots in ``--out``;
- ``keras-sam demo``: one SGD vs SAM comparison on the synthetic workload;
- ``keras-sam compare MODEL.keras --data DATA.npz``: your model on your data,
  base optimizer vs SAM for the same budget (``keras_sam.study.compare``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _demo_parser(sub) -> None:
    demo = sub.add_parser(
        "demo",
        help="SAM vs SGD on the synthetic teacher-student workload (no download).",
    )
    demo.add_argument("--hidden", type=int, default=512, help="student width")
    demo.add_argument("--epochs", type=int, default=20)
    demo.add_argument("--rho", type=float, default=0.1)
    demo.add_argument("--num-train", type=int, default=4096)
    demo.add_argument("--num-test", type=int, default=2048)
    demo.add_argument("--batch-size", type=int, default=128)
    demo.add_argument("--lr", type=float, default=0.01)
    demo.add_argument("--momentum", type=float, default=0.9)
    demo.add_argument("--seed", type=int, default=0)


def run_demo(args: argparse.Namespace) -> dict[str, float]:
    """Trains the same student with SGD and with SAM; returns test losses."""
    import keras

    import keras_sam
    from keras_sam.study.workloads import student, teacher_student

    (x, y), (x_test, y_test) = teacher_student(
        num_train=args.num_train, num_test=args.num_test, seed=args.seed
    )
    results = {}
    for name, rho in [("sgd", None), ("sam", args.rho)]:
        keras.utils.set_random_seed(args.seed)
        model = student(args.hidden, seed=args.seed)
        if rho is not None:
            model = keras_sam.sam(model, rho=rho)
        model.compile(keras.optimizers.SGD(args.lr, momentum=args.momentum), loss="mse")
        start = time.perf_counter()
        model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, verbose=0)
        seconds = time.perf_counter() - start
        results[name] = model.evaluate(x_test, y_test, verbose=0, batch_size=1024)
        label = "SGD" if rho is None else f"SAM (rho={rho})"
        print(f"{label:>16}: test loss {results[name]:.4f}  ({seconds:.1f} s)")
    gap = results["sgd"] - results["sam"]
    params = (100 + 2) * args.hidden + 1
    print(f"{'gap SGD - SAM':>16}: {gap:+.4f}  (student with {params:,} parameters)")
    return results


def _numbers(kind):
    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {kind.__name__} values, got {text!r}"
            ) from None
        if not values:
            raise argparse.ArgumentTypeError("expected at least one value")
        return values

    return parse


def _rhos(text: str) -> tuple | str:
    # "auto": the rho search (keras_sam.study.sweep.rho_search).
    return "auto" if text.strip() == "auto" else _numbers(float)(text)


def _size(text: str) -> float | int:
    value = float(text)
    return int(value) if value.is_integer() else value


_OVERRIDES = [
    ("sizes", _numbers(_size), "model sizes, e.g. 100,400,1000 (the size knob)"),
    (
        "rhos",
        _rhos,
        "SAM rho grid, e.g. 0.05,0.1; or 'auto': from the preset's grid, "
        "extended x2 past whichever edge holds the best rho (see "
        "--max-extensions)",
    ),
    ("seeds", _numbers(int), "seeds, e.g. 0,1,2"),
    ("epochs", int, None),
    ("batch_size", int, None),
    ("lr", float, "initial learning rate"),
    ("momentum", float, None),
    ("weight_decay", float, "weight decay (see --weight-decay-form)"),
    (
        "weight_decay_form",
        str,
        "decoupled (Keras SGD weight_decay) or coupled (L2 added to the SAM "
        "gradient before momentum, the paper's code)",
    ),
    (
        "schedule",
        str,
        "constant, step (x0.1 at 50%%, 75%%), step3 (x0.1 at 25%%, 50%%, 75%%) "
        "or cosine",
    ),
    (
        "label_noise",
        float,
        "flip this fraction of the training labels (seeded, symmetric; "
        "classification workloads; test labels stay clean)",
    ),
    ("loss", str, "default or squared (classifiers: MSE of logits vs one-hot)"),
    ("num_train", int, "use the first N training examples"),
    ("num_test", int, "use the first N test examples"),
    ("hessian_examples", int, "random training examples for the Hessian metrics"),
    (
        "sparse_budget",
        _size,
        "fixed-budget sweep: prune every larger size at init to this size's "
        "weight count",
    ),
    ("sparse_methods", _numbers(str), "pruning methods: random,snip"),
    (
        "sam_variants",
        _numbers(str),
        "SAM variants run beside SAM at each rho, e.g. looksam,gsam "
        "(keras_sam.variants names)",
    ),
]


def _sweep_parser(sub) -> None:
    from keras_sam.study.workloads.presets import PRESETS

    workloads = sorted({w for w, _ in PRESETS})
    presets = sorted({n for _, n in PRESETS})
    sweep = sub.add_parser(
        "sweep",
        help="SAM vs SGD across model sizes: resumable runs, table and plots.",
        description="Runs WORKLOAD's sizes x {baseline SGD, SAM at each rho} x "
        "seeds; finished runs in OUT/results.jsonl are skipped, so a killed sweep "
        "continues where it stopped. Writes OUT/summary.md and PNG plots.",
    )
    sweep.add_argument("workload", choices=workloads)
    sweep.add_argument(
        "--preset",
        default="quick",
        choices=presets,
        help="hyperparameters: 'paper' (the paper's full grid), 'quick' (small, "
        "CPU-friendly; default), 'stability' (synthetic, mnist: near-zero loss, "
        "constant lr, Hessian metrics), 'sparse' (wider models pruned at init "
        "to a fixed budget), 'smoothness' (synthetic: Fig. 21 estimates)",
    )
    for name, kind, text in _OVERRIDES:
        sweep.add_argument(
            "--" + name.replace("_", "-"), type=kind, default=None, help=text
        )
    sweep.add_argument(
        "--out", default=None, help="results folder (default results/WORKLOAD-PRESET)"
    )
    sweep.add_argument("--data-dir", default=None, help="tensorflow-datasets folder")
    sweep.add_argument(
        "--no-download", action="store_true", help="never download data sets"
    )
    sweep.add_argument(
        "--hessian",
        action="store_true",
        default=None,
        help="measure sharpness and s2 at the end of every run",
    )
    sweep.add_argument(
        "--sparse-rescale",
        action="store_true",
        default=None,
        help="fixed-budget sweep: rescale kept weights by 1/sqrt(density)",
    )
    sweep.add_argument(
        "--smoothness",
        action="store_true",
        default=None,
        help="track the smoothness and PL estimates (paper Fig. 21) along training",
    )
    sweep.add_argument(
        "--strategy",
        default="none",
        choices=["none", "mirrored"],
        help="'mirrored': each run on all visible GPUs (tf.distribute."
        "MirroredStrategy; the global batch is split across them)",
    )
    sweep.add_argument(
        "--eval-every-epoch",
        action="store_true",
        default=None,
        help="evaluate the test set after every epoch: record the test curve and "
        "the best epoch's metric (what the authors' code reports)",
    )
    sweep.add_argument(
        "--init",
        default=None,
        help="model init: he (He-normal hidden, Glorot head) or lecun (Flax's "
        "LeCun-normal, the paper's code); synthetic: he or torch",
    )
    sweep.add_argument(
        "--shard",
        default=None,
        metavar="K/N",
        help="run only shard K of N (1 <= K <= N) of the plan, into its own "
        "results file in --out; N processes may share --out (see docs/cluster.md)",
    )
    _launcher_options(sweep)
    sweep.add_argument(
        "--summarize",
        action="store_true",
        help="no training: write summary.md and the plots from the runs "
        "finished so far in --out (all shards)",
    )
    sweep.add_argument(
        "--max-extensions",
        type=int,
        default=None,
        help="--rhos auto: rhos added past an edge, at most, per size and method "
        "(default 4)",
    )
    sweep.add_argument("--dry-run", action="store_true", help="print the plan only")
    sweep.add_argument("--no-plots", action="store_true")
    sweep.add_argument(
        "--verbose", type=int, default=None, help="Keras fit verbosity 0, 1 or 2"
    )


def _launcher_options(sweep) -> None:
    launch = sweep.add_argument_group(
        "launching the shards from here (see docs/cluster.md)"
    )
    launch.add_argument(
        "--launcher",
        default="none",
        choices=["none", "submitit"],
        help="'submitit': submit --shards N array tasks (SLURM, or local "
        "processes without SLURM), requeued on preemption and time-out; wait "
        "for them, then write the summary",
    )
    launch.add_argument(
        "--shards", type=int, default=None, help="--launcher submitit: N shards"
    )
    launch.add_argument(
        "--cluster",
        default=None,
        choices=["slurm", "local"],
        help="--launcher submitit: where the tasks run (default: SLURM if it "
        "is installed, else processes on this machine)",
    )
    launch.add_argument("--slurm-partition", default=None)
    launch.add_argument(
        "--timeout-min",
        type=int,
        default=24 * 60,
        help="each task's time limit in minutes (default 1440); a task that "
        "reaches it is requeued and resumes",
    )
    launch.add_argument(
        "--gpus-per-task",
        type=int,
        default=None,
        help="default: 1 on SLURM, 0 on the local cluster",
    )
    launch.add_argument("--cpus-per-task", type=int, default=None)
    launch.add_argument(
        "--array-parallelism",
        type=int,
        default=None,
        help="SLURM: at most this many tasks at once",
    )
    launch.add_argument(
        "--submitit-folder",
        default=None,
        help="submitit's pickles and logs (default OUT/submitit)",
    )
    launch.add_argument(
        "--no-wait",
        action="store_true",
        help="submit and exit; run --summarize when the tasks are done",
    )


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
    return submitit_launcher.launch(args, out)


def sweep_preset(args: argparse.Namespace):
    """The preset named on the command line with the overrides applied."""
    from keras_sam.study.workloads import get_preset

    preset = get_preset(args.workload, args.preset)
    changes = {
        name: getattr(args, name)
        for name, _, _ in _OVERRIDES
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="keras-sam",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _sweep_parser(sub)
    _demo_parser(sub)
    from keras_sam.study import compare_cli

    compare_cli.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "sweep":
        return run_sweep_command(args)
    if args.command == "compare":
        return compare_cli.run(args)
    run_demo(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
import importlib
import importlib.util
import sys

# What `__doc__` above lists; this module only parses. Each command lives in
# its own module, imported (with Keras and its backend) after parsing: the
# `--help` of every command imports no framework.
_COMMANDS = {
    "sweep": ("keras_sam.study.sweep_cli", "run_sweep_command"),
    "demo": ("keras_sam.study.demo", "run"),
    "compare": ("keras_sam.study.compare_cli", "run"),
}
#: Optional modules a command may miss, and the extra that installs each.
EXTRAS = {
    "tensorflow": "study",
    "tensorflow_datasets": "study",
    "matplotlib": "study",
    "sklearn": "study",
    "mnist1d": "study",
    "submitit": "study",
    "tensorflow_model_optimization": "study",
    "jax": "jax",
    "torch": "torch",
}


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
    from keras_sam.study.workloads.registry import PRESETS

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


def _compare_rho(text: str) -> float | str:
    if text.strip() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number or 'auto', got {text!r}"
        ) from None


def _compare_parser(sub) -> None:
    parser = sub.add_parser(
        "compare",
        help="your model on your data: base optimizer vs SAM, same budget.",
        description=(
            "Trains the saved model twice from its saved weights, with its "
            "optimizer and with SAM, for the same epochs, and prints every "
            "setting used, then test loss and metrics, sharpness and wall time "
            "side by side (compare.json and compare.png in --out). An arm whose "
            "training loss turns non-finite or exceeds 10x the starting loss is "
            "flagged DIVERGED and the exit status is 1."
        ),
    )
    parser.add_argument("model", help="a saved Keras model (.keras)")
    parser.add_argument(
        "--data", required=True, help=".npz with x_train, y_train, x_test, y_test"
    )
    parser.add_argument("--epochs", type=int, default=10, help="default 10")
    parser.add_argument("--batch-size", type=int, default=32, help="default 32")
    parser.add_argument(
        "--rho",
        type=_compare_rho,
        default=0.05,
        help="SAM's rho (default 0.05), or 'auto': search it (from 0.025, 0.05, "
        "0.1, doubled or halved past the edge that holds the best; "
        "keras_sam.study.search_rho)",
    )
    parser.add_argument(
        "--variant", default=None, help="a keras_sam.variants name (default: SAM)"
    )
    parser.add_argument(
        "--optimizer",
        default=None,
        help="optimizer name (default: the saved model's, else sgd with lr 0.01 "
        "and momentum 0.9)",
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate of --optimizer (default: the saved optimizer's, else "
        "SGD's 0.01)",
    )
    parser.add_argument(
        "--loss",
        default=None,
        help="the training loss: a Keras loss name (sparse_categorical_crossentropy) "
        'or a serialized loss as JSON ({"class_name": '
        '"SparseCategoricalCrossentropy", "config": {"from_logits": true}}); '
        "default: the loss the model was saved compiled with",
    )
    parser.add_argument(
        "--from-logits",
        action="store_true",
        default=None,
        help="with a --loss name: the model outputs logits (from_logits=True)",
    )
    parser.add_argument("--metrics", default=None, help="comma-separated metric names")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sharpness-examples",
        type=int,
        default=512,
        help="training examples for lambda_max (0: skip)",
    )
    parser.add_argument("--out", default="compare-results")
    parser.add_argument("--no-plots", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    """The ``keras-sam`` parser and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="keras-sam",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _sweep_parser(sub)
    _demo_parser(sub)
    _compare_parser(sub)
    return parser


def missing_extra_message(command: str, error: ModuleNotFoundError) -> str | None:
    """The one-line error for a missing optional module, naming the extra
    that installs it; None for any other module."""
    name = (error.name or "").partition(".")[0]
    extra = EXTRAS.get(name)
    if extra is None:
        return None
    if command == "compare" and name == "tensorflow":
        how = (
            "pip install 'keras-sam[tensorflow]' (or set KERAS_BACKEND to an "
            "installed backend: jax, torch)"
        )
    else:
        how = f"pip install 'keras-sam[{extra}]'"
    return (
        f"keras-sam {command}: error: this command needs {name!r}, which is not "
        f"installed: {how}"
    )


def _start_library(command: str) -> None:
    """`import keras_sam`'s imports (Keras and its backend included), with
    TensorFlow's start-up notices hidden (`keras_sam._quiet`)."""
    import keras_sam
    from keras_sam import _quiet

    with _quiet.command_line_start():
        for name in keras_sam.__all__:
            getattr(keras_sam, name)
        if command != "demo" and importlib.util.find_spec("tensorflow"):
            # Where it is installed, Keras imports TensorFlow on any backend
            # when it saves a model (compare), and the sweep's data pipelines
            # use it: imported here, where its start-up notices are hidden.
            import tensorflow  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module, function = _COMMANDS[args.command]
    try:
        _start_library(args.command)
        command = getattr(importlib.import_module(module), function)
        code = command(args)
    except ModuleNotFoundError as error:
        message = missing_extra_message(args.command, error)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())

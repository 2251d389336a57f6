"""Shared flags and training loop of the example scripts.

Every script trains one model of the chosen size with plain SGD
(``--optimizer sgd``) or SAM (``sam``, ``usam``, ``asam``) using the paper's
hyperparameters for that workload (overridable), optionally under a
`tf.distribute` strategy, and prints the test metrics.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

OPTIMIZERS = ("sgd", "sam", "usam", "asam")
STRATEGIES = ("none", "mirrored", "multiworker")


def parser(description: str, size_flag: str, size_type, size_default, size_help):
    p = argparse.ArgumentParser(description=description)
    p.add_argument(f"--{size_flag}", type=size_type, default=size_default,
                   dest="size", help=size_help)  # fmt: skip
    p.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default="sam",
        help="sgd: the baseline; sam/usam/asam: SAM rules on top of SGD",
    )
    p.add_argument("--rho", type=float, default=0.05)
    p.add_argument("--epochs", type=int, default=None, help="default: the paper's")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--num-train", type=int, default=None, help="first N examples")
    p.add_argument("--num-test", type=int, default=None)
    p.add_argument("--data-dir", default=None, help="tensorflow-datasets folder")
    p.add_argument("--strategy", choices=STRATEGIES, default="none",
                   help="multiworker reads the cluster from TF_CONFIG")  # fmt: skip
    p.add_argument(
        "--replica-eps",
        choices=("synchronized", "per_replica"),
        default="synchronized",
        help="per_replica: eps from each replica's gradient (paper)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", type=int, default=2)
    return p


def _strategy(name: str):
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def train(args: argparse.Namespace, workload_name: str, **build_options) -> dict:
    """Trains and evaluates; returns the test scores."""
    import keras

    import keras_sam
    from keras_sam.study.sweep.train import make_optimizer
    from keras_sam.study.workloads import get_preset, get_workload

    workload = get_workload(workload_name)
    preset = get_preset(workload_name, "paper")
    changes = {
        k: getattr(args, k)
        for k in ("epochs", "batch_size", "lr", "num_train", "num_test")
        if getattr(args, k) is not None
    }
    preset = preset.replace(**changes)
    keras.utils.set_random_seed(args.seed)
    data = workload.load(
        num_train=preset.num_train,
        num_test=preset.num_test,
        batch_size=preset.batch_size,
        data_dir=args.data_dir,
        seed=args.seed,
        **build_options,
        **preset.data_options,
    )
    strategy = _strategy(args.strategy)
    with strategy.scope():
        model = workload.build(
            args.size, seed=args.seed, **preset.model_options, **build_options
        )
        if args.optimizer != "sgd":
            model = keras_sam.sam(
                model,
                rho=args.rho,
                perturbation=args.optimizer,
                replica_eps=args.replica_eps,
            )
        steps = max(1, -(-data.num_train // preset.batch_size))
        model.compile(
            make_optimizer(preset, steps),
            loss=workload.loss(),
            metrics=workload.metrics(),
        )
    params = workload.count_params(args.size)
    print(
        f"{workload.name}: {workload.size_name}={args.size:g} ({params:,} params), "
        f"{args.optimizer} rho={args.rho:g}, {preset.epochs} epochs, "
        f"{strategy.num_replicas_in_sync} replica(s)"
    )
    fit = dict(epochs=preset.epochs, verbose=args.verbose)
    if data.batched:
        model.fit(data.train, shuffle=False, **fit)  # shuffled by tf.data
        scores = model.evaluate(data.test, verbose=0, return_dict=True)
    else:
        model.fit(*data.train, batch_size=preset.batch_size, shuffle=True, **fit)
        scores = model.evaluate(*data.test, verbose=0, return_dict=True)
    print("test: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    return scores

"""Command line: ``keras-sam demo`` (also ``python -m keras_sam demo``)."""

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
    from keras_sam.workloads import student, teacher_student

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


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    parser = argparse.ArgumentParser(prog="keras-sam", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _demo_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "demo":
        run_demo(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

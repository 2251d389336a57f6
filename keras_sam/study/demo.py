"""``keras-sam demo``: SAM against SGD on the synthetic teacher-student
workload, one width, no download."""

from __future__ import annotations

import argparse
import time


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


def run(args: argparse.Namespace) -> int:
    """``keras-sam demo``: `run_demo`, exit status 0."""
    run_demo(args)
    return 0

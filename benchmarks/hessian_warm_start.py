"""Products per `sharpness` during training: a cold start (random vector)
against `HessianMetrics`' warm start (the previous evaluation's top
eigenvector), on the same weights.

    python benchmarks/hessian_warm_start.py [--epochs 8] [--examples 256]

LeNet-300-100 trained on 5,000 teacher-labelled examples (batch 128, SGD
0.1); after each epoch, Lanczos (tol 1e-3, the callback's default) on the
first ``--examples`` examples, once from a random vector and once from the
previous epoch's eigenvector. Printed per epoch: lambda_max and the products
each start took.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--examples", type=int, default=256)
    args = parser.parse_args()

    import sys

    # This checkout's keras_sam, not an installed one.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:0] = [os.path.dirname(here), here]
    import keras
    from _models import lenet, teacher_classes

    from keras_sam.hessian import CurvatureOperator, solvers

    keras.utils.set_random_seed(0)
    x, y = teacher_classes(5000, 0)
    model = lenet()
    data = (x[: args.examples], y[: args.examples])
    previous = None
    totals = [0, 0]
    print("| epoch | lambda_max | products, cold start | products, warm start |")
    print("|---|---|---|---|")
    for epoch in range(1, args.epochs + 1):
        model.fit(x, y, batch_size=128, epochs=1, verbose=0)
        op = CurvatureOperator(model, data)
        cold = solvers.lanczos(op.matvec, op.dim, seed=epoch)
        warm = (
            solvers.lanczos(op.matvec, op.dim, v0=previous)
            if previous is not None
            else cold
        )
        previous = warm.eigenvectors[:, 0]
        if epoch > 1:
            totals[0] += cold.iterations
            totals[1] += warm.iterations
        print(
            f"| {epoch} | {cold.eigenvalues[0]:.4f} | {cold.iterations} | "
            f"{warm.iterations if epoch > 1 else '- (first)'} |"
        )
    print(f"epochs 2-{args.epochs}: {totals[0]} products cold, {totals[1]} warm")
    print("load average: " + ", ".join(f"{a:.1f}" for a in os.getloadavg()))


if __name__ == "__main__":
    main()

"""Curvature-instrument benchmark: prints measured figures beside their targets.

    python benchmarks/hessian.py [--examples 1000] [--seeds 5] [--quick]

1. HVP time / gradient time on LeNet-300-100 (784-300-100-10), 1000 examples
   (target <= 2.0x).
2. HVPs for Lanczos to reach 1e-3 relative error on lambda_max vs power
   iteration (PyHessian defaults: 100 steps, tol 1e-3), over start seeds
   (target: Lanczos median <= 12).
3. Time for s2 and s4 on 1000 examples (targets <= 15 s and <= 30 s).
4. Per-example HVPs: vectorized (chunked vectorized_map) vs a Python loop.
5. `HessianMetrics()` with its defaults: training-time overhead on MNIST-sized
   runs (60,000 examples, batch 128): LeNet-300-100 and the keras-io MNIST
   convnet (target <= 20%).

Data are synthetic MNIST-shaped (uniform pixels, labels from a random linear
teacher); the model is trained one epoch first so the Hessian is not the
one at initialization.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import _models  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_sam import hessian  # noqa: E402
from keras_sam.hessian import solvers  # noqa: E402
from keras_sam.hessian._operators import CurvatureOperator  # noqa: E402


def lenet(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return _models.lenet()


data = _models.teacher_classes


def timed(fn, repeats: int) -> float:
    fn()  # warm-up (tracing)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def lanczos_steps_to(op, target: float, seed: int, rel: float, cap: int) -> int:
    """HVPs until the top Ritz value is within ``rel`` of ``target``."""
    dim = op.dim
    v = np.random.default_rng(seed).standard_normal(dim)
    steps = []

    def stop(alpha, beta):
        theta = solvers._tridiag_eigh(alpha, beta)[0][-1]
        steps.append(abs(theta - target) <= rel * abs(target))
        return steps[-1]

    solvers._lanczos_basis(op.hvp, v / np.linalg.norm(v), cap, stop)
    return len(steps) if steps and steps[-1] else -1


def power_steps(op, target: float, seed: int, rel: float):
    """(HVPs until within rel, HVPs PyHessian's rule stops at, its rel. error)."""
    first = []

    def matvec(v):
        w = op.hvp(v)
        first.append(abs(v @ w - target) <= rel * abs(target))
        return w

    result = solvers.power_iteration(matvec, op.dim, max_iter=100, tol=1e-3, seed=seed)
    reached = first.index(True) + 1 if True in first else -1
    error = abs(result.eigenvalues[0] - target) / abs(target)
    return reached, result.iterations, error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small sizes, smoke run")
    parser.add_argument("--only-overhead", action="store_true", help="run item 5 alone")
    args = parser.parse_args()
    if args.only_overhead or not args.quick:
        overhead({"LeNet-300-100": 5, "convnet": 2})
    if args.only_overhead:
        return
    n = 100 if args.quick else args.examples

    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs (os.cpu_count)")
    print(f"keras {keras.__version__}, numpy {np.__version__}")
    x, y = data(5000, 0)
    model = lenet(0)
    model.fit(x, y, batch_size=128, epochs=1, verbose=0)
    sub = (x[:n], y[:n])
    op = CurvatureOperator(model, sub)
    print(f"LeNet-300-100: {op.dim} weights, {n} examples")

    # 1. HVP vs gradient time.
    v = np.random.default_rng(0).standard_normal(op.dim)
    t_grad = timed(op.gradient, 10)
    t_hvp = timed(lambda: op.hvp(v), 10)
    print(
        f"[1] gradient {t_grad * 1e3:.1f} ms, HVP {t_hvp * 1e3:.1f} ms, "
        f"ratio {t_hvp / t_grad:.2f}x (target <= 2.0x)"
    )

    # 2. Lanczos vs power iteration.
    ref = solvers.lanczos(op.hvp, op.dim, max_iter=200, tol=1e-7, seed=123)
    target = float(ref.eigenvalues[0])
    print(
        f"[2] reference lambda_max {target:.6g} (Lanczos, residual "
        f"{ref.residuals[0]:.2g}, {ref.iterations} HVPs)"
    )
    lz, pw, pw_stop, pw_err = [], [], [], []
    for seed in range(args.seeds):
        lz.append(lanczos_steps_to(op, target, seed, 1e-3, 100))
        reached, stopped, err = power_steps(op, target, seed, 1e-3)
        pw.append(reached)
        pw_stop.append(stopped)
        pw_err.append(err)
    print(f"    HVPs to 1e-3 rel. error, Lanczos per seed: {lz}")
    print(f"    HVPs to 1e-3 rel. error, power iteration:  {pw} (-1: not in 100)")
    print(
        f"    power iteration with PyHessian's stopping rule: {pw_stop} HVPs, "
        f"rel. errors {[f'{e:.1e}' for e in pw_err]}"
    )
    med_lz = statistics.median(lz)
    med_pw = statistics.median([p if p > 0 else 101 for p in pw])
    print(
        f"    median Lanczos {med_lz} vs power {med_pw}: ratio "
        f"{med_pw / med_lz:.1f}x fewer HVPs (target: Lanczos median <= 12)"
    )

    # 3. s2 and s4 on n examples.
    for order, goal in ((2, 15), (4, 30)):
        op.num_products = 0
        hessian.non_uniformity_eigen(op, order=order, max_iter=1, tol=1.0)  # trace
        op.num_products = 0
        start = time.perf_counter()
        result = hessian.non_uniformity_eigen(op, order=order, tol=1e-3)
        elapsed = time.perf_counter() - start
        s = hessian.measures.root(float(result.eigenvalues[0]), order)
        print(
            f"[3] s{order} = {s:.5g} on {n} examples: {elapsed:.1f} s "
            f"({result.iterations} Lanczos steps, rel. residual "
            f"{result.residuals[0] / abs(result.eigenvalues[0]):.1e}; target <= "
            f"{goal} s)"
        )

    # 4. Per-example HVPs: vectorized vs looped.
    m = min(n, 200)
    small = CurvatureOperator(model, (x[:m], y[:m]))
    t_vec = timed(lambda: small.per_example_hvp(v), 2)
    t_loop = timed(lambda: small.per_example_hvp_looped(v), 1)
    print(
        f"[4] per-example HVPs on {m} examples: vectorized {t_vec:.2f} s, looped "
        f"{t_loop:.2f} s, speed-up {t_loop / t_vec:.1f}x"
    )


def convnet(seed: int) -> keras.Model:
    """The keras-io "Simple MNIST convnet"."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def overhead(epochs: dict[str, int]) -> None:
    """[5] fit time with `HessianMetrics()` (defaults) over fit time without."""
    from keras_sam.callbacks import HessianMetrics

    x, y = data(60000, 1)
    for name, build, shape in (
        ("LeNet-300-100", lenet, (784,)),
        ("convnet", convnet, (28, 28, 1)),
    ):
        xs = x.reshape((-1, *shape))
        wall, cpu = {}, {}
        for label in ("without", "with", "without again"):
            model = build(0)
            model.fit(xs[:256], y[:256], batch_size=128, verbose=0)  # trace the step
            callbacks = [HessianMetrics((xs, y))] if label == "with" else []
            start, start_cpu = time.perf_counter(), time.process_time()
            model.fit(
                xs,
                y,
                batch_size=128,
                epochs=epochs[name],
                verbose=0,
                callbacks=callbacks,
            )
            wall[label] = time.perf_counter() - start
            cpu[label] = time.process_time() - start_cpu
        parts = []
        for what, times in (("wall", wall), ("CPU", cpu)):
            base = (times["without"] + times["without again"]) / 2
            parts.append(
                f"{what} {base:.1f} s without, {times['with']:.1f} s with: "
                f"{times['with'] / base - 1:+.0%}"
            )
        print(
            f"[5] {name}, {epochs[name]} epochs of 60,000, HessianMetrics() "
            f"overhead (target <= 20%): " + "; ".join(parts)
        )


if __name__ == "__main__":
    main()

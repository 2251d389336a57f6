"""lambda_max side by side: `keras_sam.hessian.sharpness` vs PyHessian.

    python benchmarks/hessian_vs_pyhessian.py \
        --torch-python /work/venv-pyhessian/bin/python [--repeats 5] [--rounds 2]

LeNet-300-100 (784-300-100-10) trained one epoch on synthetic MNIST-shaped
data (as `benchmarks/hessian.py`), softmax cross-entropy on 1000 examples.
The same weights and examples go to PyTorch (`nn.Linear` layers, weights
transposed), where PyHessian 0.1's ``hessian(model, criterion, data=...,
cuda=False).eigenvalues()`` runs with its defaults (power iteration, 100
steps, tol 1e-3). PyTorch and PyHessian live in another virtual environment
(``--torch-python``), never in this project's: this script runs itself there
as a subprocess with ``--torch-worker``.

Printed: cold (first call in the process, tracing included) and warm times
of both, their relative errors against a tight Lanczos reference, and the
ratio of warm times. Rounds alternate the two sides to spread the noise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time


def torch_worker(path: str, repeats: int) -> None:
    """Runs in the PyTorch environment: times PyHessian, prints JSON."""
    import numpy as np
    import torch
    from pyhessian import hessian

    arrays = np.load(path)
    model = torch.nn.Sequential(
        torch.nn.Linear(784, 300),
        torch.nn.ReLU(),
        torch.nn.Linear(300, 100),
        torch.nn.ReLU(),
        torch.nn.Linear(100, 10),
    )
    with torch.no_grad():
        for i, layer in enumerate(model[::2]):
            layer.weight.copy_(torch.from_numpy(arrays[f"kernel{i}"].T))
            layer.bias.copy_(torch.from_numpy(arrays[f"bias{i}"]))
    x = torch.from_numpy(arrays["x"])
    y = torch.from_numpy(arrays["y"]).long()
    criterion = torch.nn.CrossEntropyLoss()
    torch.manual_seed(0)

    def once() -> tuple[float, float]:
        start = time.perf_counter()
        values, _ = hessian(model, criterion, data=(x, y), cuda=False).eigenvalues()
        return time.perf_counter() - start, float(values[0])

    cold, value = once()
    warm = [once() for _ in range(repeats)]
    print(
        json.dumps(
            {
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "cold": cold,
                "warm": [t for t, _ in warm],
                "values": [value] + [v for _, v in warm],
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--torch-python", default="/work/venv-pyhessian/bin/python")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--torch-worker", metavar="NPZ", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_worker:
        torch_worker(args.torch_worker, args.repeats)
        return

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import importlib.util

    import keras
    import numpy as np

    from keras_sam.hessian import CurvatureOperator, sharpness, solvers

    spec = importlib.util.spec_from_file_location(
        "curvature_benchmark", os.path.join(os.path.dirname(__file__), "hessian.py")
    )
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)

    x, y = common.data(5000, 0)
    model = common.lenet(0)
    model.fit(x, y, batch_size=128, epochs=1, verbose=0)
    sub = (x[: args.examples], y[: args.examples])
    kernels = [layer.get_weights() for layer in model.layers]
    arrays = {"x": sub[0], "y": sub[1].astype("int64")}
    for i, (kernel, bias) in enumerate(kernels):
        arrays[f"kernel{i}"], arrays[f"bias{i}"] = kernel, bias

    modes = {"default": {}, "forward_over_reverse": {"forward_over_reverse": True}}
    cold, values = {}, {}
    for mode, options in modes.items():  # the first call of each traces
        start = time.perf_counter()
        values[mode] = [sharpness(model, sub, **options)]
        cold[mode] = time.perf_counter() - start
    op = CurvatureOperator(model, sub)
    ref = solvers.lanczos(op.hvp, op.dim, max_iter=200, tol=1e-10, seed=123)
    target = float(ref.eigenvalues[0])
    steps = solvers.lanczos(op.hvp, op.dim).iterations

    keras_warm = {mode: [] for mode in modes}
    torch_runs = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "lenet.npz")
        np.savez(path, **arrays)
        for _ in range(args.rounds):
            out = subprocess.run(
                [
                    args.torch_python,
                    os.path.abspath(__file__),
                    "--torch-worker",
                    path,
                    "--repeats",
                    str(args.repeats),
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            torch_runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            for mode, options in modes.items():
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    values[mode].append(sharpness(model, sub, **options))
                    keras_warm[mode].append(time.perf_counter() - start)

    def err(value: float) -> float:
        return abs(value - target) / abs(target)

    torch_warm = [t for run in torch_runs for t in run["warm"]]
    torch_values = [v for run in torch_runs for v in run["values"]]
    print(
        f"keras {keras.__version__}, torch {torch_runs[0]['torch']} "
        f"({torch_runs[0]['threads']} threads), {os.cpu_count()} CPUs"
    )
    print(
        f"LeNet-300-100, {op.dim} weights, {args.examples} examples; "
        f"reference lambda_max {target:.8g} (Lanczos, {ref.iterations} HVPs)"
    )
    torch_cold = statistics.median(r["cold"] for r in torch_runs)
    torch_median = statistics.median(torch_warm)
    print(
        f"PyHessian eigenvalues: cold {torch_cold:.3f} s, warm median "
        f"{torch_median:.3f} s (min {min(torch_warm):.3f}, max "
        f"{max(torch_warm):.3f}), rel. error "
        f"{max(err(v) for v in torch_values):.1e} (max over runs)"
    )
    for mode in modes:
        warm = keras_warm[mode]
        median = statistics.median(warm)
        print(
            f"keras_sam sharpness ({mode}): cold {cold[mode]:.3f} s, warm median "
            f"{median:.3f} s (min {min(warm):.3f}, max {max(warm):.3f}), "
            f"{steps} HVPs, rel. error {max(err(v) for v in values[mode]):.1e}; "
            f"warm ratio to PyHessian {median / torch_median:.2f} (target <= 1)"
        )
    print(
        "load average (1, 5, 15 min): " + ", ".join(f"{a:.1f}" for a in os.getloadavg())
    )


if __name__ == "__main__":
    main()

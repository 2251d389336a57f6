"""`keras_sam.hessian.sharpness` on each Keras backend, side by side.

    python benchmarks/hessian_backends.py [--backends tensorflow,jax,torch]
        [--repeats 5] [--rounds 2] [--examples 1000]

LeNet-300-100 (784-300-100-10, as `benchmarks/hessian.py`) trained one epoch
on synthetic MNIST-shaped data by a first child process (TensorFlow), its
weights and 1,000 examples saved; then one child process per backend and
round (Keras picks its backend at import; the rounds alternate the backends
to spread the machine's load) loads the same weights and times
``sharpness(model, data)`` with its defaults: cold (the first call in the
process: tracing / compilation included) and warm (``--repeats`` calls).
Printed per backend: cold and warm times, the warm median's ratio to
TensorFlow's, the HVPs per call and lambda_max (all backends should agree
to about 1e-3, the default tolerance). Needs jax and torch installed
(``keras-sam[jax,torch]``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time


def _prepare(path: str, examples: int) -> None:
    import keras
    import numpy as np
    from _models import lenet, teacher_classes

    keras.utils.set_random_seed(0)
    x, y = teacher_classes(5000, 0)
    model = lenet()
    model.fit(x, y, batch_size=128, epochs=1, verbose=0)
    weights = {f"w{i}": w for i, w in enumerate(model.get_weights())}
    np.savez(path, x=x[:examples], y=y[:examples], **weights)


def _child(path: str, repeats: int) -> None:
    import keras
    import numpy as np
    from _models import lenet

    from keras_sam.hessian import CurvatureOperator, solvers

    arrays = np.load(path)
    model = lenet()
    model.set_weights([arrays[f"w{i}"] for i in range(len(model.weights))])
    data = (arrays["x"], arrays["y"])

    def once():
        start = time.perf_counter()
        op = CurvatureOperator(model, data)
        result = solvers.lanczos(op.hvp, op.dim)
        return time.perf_counter() - start, float(result.eigenvalues[0]), op

    cold, value, op = once()
    warm = [once()[0] for _ in range(repeats)]
    print(
        json.dumps(
            {
                "backend": keras.backend.backend(),
                "cold": cold,
                "warm": warm,
                "value": value,
                "hvps": op.num_products,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--child", metavar="NPZ", help=argparse.SUPPRESS)
    parser.add_argument("--prepare", metavar="NPZ", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        _prepare(args.prepare, args.examples)
        return
    if args.child:
        _child(args.child, args.repeats)
        return

    backends = args.backends.split(",")
    script = os.path.abspath(__file__)

    def run(backend, *extra):
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
        out = subprocess.run(
            [sys.executable, script, *extra],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""

    results: dict[str, list[dict]] = {b: [] for b in backends}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "lenet.npz")
        run("tensorflow", "--prepare", path, "--examples", str(args.examples))
        for _ in range(args.rounds):
            for backend in backends:
                line = run(backend, "--child", path, "--repeats", str(args.repeats))
                results[backend].append(json.loads(line))

    from importlib.metadata import version

    print(
        f"keras {version('keras')}, jax {version('jax')}, torch {version('torch')}, "
        f"tensorflow {version('tensorflow')}; {platform.machine()}, "
        f"{os.cpu_count()} CPUs; "
        f"LeNet-300-100 (266,610 weights), {args.examples} examples, "
        f"sharpness() defaults; {args.rounds} rounds x {args.repeats} warm calls"
    )
    medians = {
        b: statistics.median(t for r in runs for t in r["warm"])
        for b, runs in results.items()
    }
    base = medians.get("tensorflow")
    print(
        "| backend | cold (s) | warm median (min-max) (s) | ratio to TF | HVPs "
        "| lambda_max |"
    )
    print("|---|---|---|---|---|---|")
    for backend, runs in results.items():
        warm = [t for r in runs for t in r["warm"]]
        colds = ", ".join(f"{r['cold']:.2f}" for r in runs)
        ratio = f"{medians[backend] / base:.2f}" if base else "-"
        print(
            f"| {backend} | {colds} | {medians[backend]:.3f} ({min(warm):.3f}-"
            f"{max(warm):.3f}) | {ratio} | {runs[0]['hvps']} | "
            f"{runs[0]['value']:.6f} |"
        )
    print(
        "load average (1, 5, 15 min): " + ", ".join(f"{a:.1f}" for a in os.getloadavg())
    )


if __name__ == "__main__":
    main()

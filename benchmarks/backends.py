"""SAM / SGD step-time ratio on each Keras backend, side by side; prints ratios.

One child process per backend (Keras picks its backend at import). In each,
the same models (a 784-512-512-10 MLP; a small CNN with batch norm on
CIFAR-sized input) train as a plain `keras.Model` (sgd) and as a
`keras_sam.SAMModel` (sam; the floor is 2.00x: two forward-backward passes),
plus SAM with 4 micro-batches. Variants are interleaved over rounds and the
median per-step wall time is reported, so that load on the machine hits all
of them alike. The ratio is against the same backend's sgd. Wall time on a
shared machine is noisy: run it a couple of times and compare the spread.

jit: on for TensorFlow (XLA) and JAX (as Keras's default there); off on
PyTorch, whose `jit_compile=True` (torch.compile) takes minutes to compile
each model on a CPU and is not what Keras picks by default.

    python benchmarks/backends.py [--steps 20] [--rounds 3] [--backends jax,torch]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

from _timing import interleave

BATCH = 128
JIT = {"tensorflow": True, "jax": True, "torch": False}


def _child(backend: str, steps: int, rounds: int) -> None:
    os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np
    from _models import cnn, mlp

    import keras_sam

    variants = {
        "sgd": lambda i, o: keras.Model(i, o),
        "sam": lambda i, o: keras_sam.SAMModel(i, o, rho=0.05),
        "sam_micro4": lambda i, o: keras_sam.SAMModel(
            i, o, rho=0.05, micro_batch_size=BATCH // 4
        ),
    }

    def fit_all(model, x, y):
        return lambda: model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0)

    results = {}
    for model_name, builder, shape in (
        ("mlp", mlp, (784,)),
        ("cnn", cnn, (32, 32, 3)),
    ):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(BATCH * steps, *shape)).astype("float32")
        y = rng.integers(0, 10, size=(BATCH * steps,))
        models = {}
        for name, make in variants.items():
            if backend == "tensorflow" and model_name == "cnn":
                if name == "sam_micro4":
                    # XLA on CPU runs the micro-batch while loop's convolutions
                    # single-threaded (25-50x; the step warns): not timed.
                    continue
            keras.utils.set_random_seed(0)
            model = make(*builder())
            model.compile(
                keras.optimizers.SGD(0.01, momentum=0.9),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                jit_compile=JIT[backend],
            )
            model.fit(x[: BATCH * 2], y[: BATCH * 2], batch_size=BATCH, verbose=0)
            models[name] = model
        runs = {name: fit_all(model, x, y) for name, model in models.items()}
        samples = interleave(runs, steps, rounds)
        results[model_name] = {
            name: [wall for wall, _ in values] for name, values in samples.items()
        }
    print(json.dumps(results))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.steps, args.rounds)
        return
    print(
        f"{platform.node()} ({os.cpu_count()} CPUs), batch {BATCH}, "
        f"{args.steps} steps x {args.rounds} rounds, median wall time per step"
    )
    print(
        f"{'backend':<11} {'jit':<5} {'model':<5} {'variant':<11} "
        f"{'ms/step':>8} {'vs sgd':>7}"
    )
    for backend in args.backends.split(","):
        command = [sys.executable, __file__, "--child", backend]
        command += ["--steps", str(args.steps), "--rounds", str(args.rounds)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            print(f"{backend}: failed\n{done.stderr[-2000:]}")
            continue
        results = json.loads(done.stdout.strip().splitlines()[-1])
        for model_name, times in results.items():
            base = statistics.median(times["sgd"])
            for name, values in times.items():
                median = statistics.median(values)
                print(
                    f"{backend:<11} {str(JIT[backend]):<5} {model_name:<5} "
                    f"{name:<11} {median * 1e3:8.1f} {median / base:6.2f}x"
                )


if __name__ == "__main__":
    main()

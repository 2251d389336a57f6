"""Step time of two checkouts of keras-sam, side by side in one run; prints
ratios.

Written for issue 28 (one backend-neutral SAM update): is the neutral step
as fast as the three backend steps it replaced? Each checkout is imported
from its own directory (``PYTHONPATH``) in a child process per backend; the
children of the two checkouts alternate (before, after, before, after, ...)
so that load on the machine falls on both alike, and inside each child the
contenders are interleaved over rounds (`_timing.interleave`).

Contenders, batch 128, SGD with momentum, on the 784-512-512-10 MLP: sgd
(plain `keras.Model`), sam, sam_micro4 (4 micro-batches), looksam
(`LookSAM(every=5)`), and under the ``mixed_float16`` policy (loss scaling)
sgd_mixed and sam_mixed; on the small batch-norm CNN: sgd and sam. jit as in
`backends.py` (XLA on TensorFlow and JAX, eager PyTorch).

    python benchmarks/step_before_after.py --before 74aea79^ [--after .]
        [--backends tensorflow,jax,torch] [--steps 20] [--rounds 3] [--passes 2]

``--before`` / ``--after``: a directory holding a checkout, or a git
revision of this repository (checked out into a temporary worktree).
Prints, per backend, model and contender: the median ms/step of each
checkout, after / before, and each checkout's ratio to its own sgd.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BATCH = 128
JIT = {"tensorflow": True, "jax": True, "torch": False}


def _child(backend: str, steps: int, rounds: int) -> None:
    os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np
    from _models import cnn, mlp
    from _timing import interleave

    import keras_sam
    from keras_sam import variants

    def sam(**options):
        return lambda i, o: keras_sam.SAMModel(i, o, rho=0.05, **options)

    plain = {
        "sgd": lambda i, o: keras.Model(i, o),
        "sam": sam(),
    }
    mlp_only = {
        "sam_micro4": sam(micro_batch_size=BATCH // 4),
        "looksam": sam(variant=variants.LookSAM(every=5)),
    }
    mixed = {"sgd_mixed": plain["sgd"], "sam_mixed": plain["sam"]}

    results = {}
    for model_name, builder, shape, contenders in (
        ("mlp", mlp, (784,), {**plain, **mlp_only, **mixed}),
        ("cnn", cnn, (32, 32, 3), plain),
    ):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(BATCH * steps, *shape)).astype("float32")
        y = rng.integers(0, 10, size=(BATCH * steps,))
        runs = {}
        for name, make in contenders.items():
            policy = "mixed_float16" if name.endswith("_mixed") else "float32"
            keras.mixed_precision.set_dtype_policy(policy)
            keras.utils.set_random_seed(0)
            model = make(*builder())
            optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
            if policy == "mixed_float16":
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            model.compile(
                optimizer,
                keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                jit_compile=JIT[backend],
            )
            model.fit(x[: BATCH * 2], y[: BATCH * 2], batch_size=BATCH, verbose=0)
            keras.mixed_precision.set_dtype_policy("float32")
            runs[name] = functools.partial(
                model.fit, x, y, batch_size=BATCH, shuffle=False, verbose=0
            )
        samples = interleave(runs, steps, rounds)
        results[model_name] = {
            name: [wall for wall, _ in values] for name, values in samples.items()
        }
    print(json.dumps(results))


def _checkout(spec: str, scratch: str) -> str:
    if os.path.isdir(spec):
        return os.path.abspath(spec)
    path = os.path.join(scratch, spec.replace("/", "_").replace("^", "-parent"))
    subprocess.run(
        ["git", "-C", ROOT, "worktree", "add", "--detach", "-q", path, spec],
        check=True,
    )
    return path


def _run(checkout: str, backend: str, args) -> dict | None:
    env = dict(os.environ, PYTHONPATH=checkout)
    command = [sys.executable, __file__, "--child", backend]
    command += ["--steps", str(args.steps), "--rounds", str(args.rounds)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=HERE)
    if done.returncode:
        print(f"{backend} at {checkout}: failed\n{done.stderr[-2000:]}")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before")
    parser.add_argument("--after", default=ROOT)
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.steps, args.rounds)
        return
    if args.before is None:
        parser.error("--before (a checkout directory or a git revision) is required")
    with tempfile.TemporaryDirectory() as scratch:
        arms = {
            "before": _checkout(args.before, scratch),
            "after": _checkout(args.after, scratch),
        }
        try:
            _compare(arms, args)
        finally:
            for path in arms.values():
                if path.startswith(scratch):
                    subprocess.run(
                        ["git", "-C", ROOT, "worktree", "remove", "--force", path]
                    )


def _compare(arms: dict, args) -> None:
    print(
        f"{platform.node()} ({os.cpu_count()} CPUs), load {os.getloadavg()[0]:.2f}, "
        f"batch {BATCH}, {args.steps} steps x {args.rounds} rounds x "
        f"{args.passes} passes per checkout; before = {arms['before']}, "
        f"after = {arms['after']}; median wall ms/step"
    )
    print(
        f"{'backend':<11} {'model':<5} {'contender':<11} {'before':>8} "
        f"{'after':>8} {'after/before':>12} {'before/sgd':>10} {'after/sgd':>9}"
    )
    for backend in args.backends.split(","):
        samples = {arm: {} for arm in arms}
        for _ in range(args.passes):
            for arm, checkout in arms.items():
                result = _run(checkout, backend, args)
                for model, times in (result or {}).items():
                    for name, values in times.items():
                        samples[arm].setdefault((model, name), []).extend(values)
        median = {
            arm: {key: statistics.median(v) for key, v in found.items()}
            for arm, found in samples.items()
        }
        for key in median["after"]:
            if key not in median["before"]:
                continue
            model, name = key
            base = "sgd_mixed" if name.endswith("_mixed") else "sgd"
            before, after = median["before"][key], median["after"][key]
            print(
                f"{backend:<11} {model:<5} {name:<11} {before * 1e3:8.1f} "
                f"{after * 1e3:8.1f} {after / before:11.2f}x "
                f"{before / median['before'][(model, base)]:9.2f}x "
                f"{after / median['after'][(model, base)]:8.2f}x"
            )
    print(f"load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

"""Step-time overhead of pruning masks for SAM, side by side in one run.

Models: the 784-512-512-10 MLP and the small CNN of sam_step_time.py (two
3x3 convolutions with batch norm, CIFAR-sized input), `jit_compile` off.
Variants per model:

- sam: dense `keras_sam.SAMModel` (the baseline, ratio 1.00);
- sam_masked: the same model after `prune_at_init(model, 0.9)`: masks on
  g, eps and g2 in the step and the mask constraint after each update;
- sgd, sgd_masked: plain `keras.Model` without and with masks (constraint
  only), for reference.

Masking does not skip any arithmetic (dense kernels with zeros), so the
ratio is the cost of the masks alone. Timing: fixed number of steps through
`fit` after a warm-up; variants interleaved over rounds; median per step.

    python benchmarks/sparsity_overhead.py [--steps 30] [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from sam_step_time import BATCH, cnn, dataset, mlp  # noqa: E402

import keras_sam  # noqa: E402
from keras_sam import sparsity  # noqa: E402

VARIANTS = ("sam", "sam_masked", "sgd", "sgd_masked")


def make_model(builder, variant, jit):
    keras.utils.set_random_seed(0)
    inputs, outputs = builder()
    if variant.startswith("sam"):
        model = keras_sam.SAMModel(inputs, outputs, rho=0.05)
    else:
        model = keras.Model(inputs, outputs)
    if variant.endswith("masked"):
        sparsity.prune_at_init(model, 0.9, seed=0)
    model.compile(
        keras.optimizers.SGD(0.01, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
        steps_per_execution=10,
    )
    return model


def seconds_per_step(model, data, steps):
    start = time.perf_counter()
    model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0)
    return (time.perf_counter() - start) / steps


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30, help="multiple of 10")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--jit", action="store_true", help="also jit_compile=True")
    args = parser.parse_args()
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"TF {tf.__version__}, Keras {keras.__version__}, batch {BATCH}, "
        "sparsity 0.9"
    )
    print(f"{'model':<5} {'xla':<4} {'variant':<11} {'ms/step':>8} {'ratio':>7}")
    for name, builder, shape in [("mlp", mlp, (784,)), ("cnn", cnn, (32, 32, 3))]:
        data = dataset(shape)
        for jit in (False, True) if args.jit else (False,):
            models = {v: make_model(builder, v, jit) for v in VARIANTS}
            for model in models.values():
                model.fit(data, epochs=1, steps_per_epoch=10, verbose=0)  # trace
            times = {v: [] for v in VARIANTS}
            for _ in range(args.rounds):
                for variant, model in models.items():
                    times[variant].append(seconds_per_step(model, data, args.steps))
            medians = {v: statistics.median(t) for v, t in times.items()}
            for variant in VARIANTS:
                base = medians["sam" if variant.startswith("sam") else "sgd"]
                print(
                    f"{name:<5} {'on' if jit else 'off':<4} {variant:<11} "
                    f"{1e3 * medians[variant]:8.2f} {medians[variant] / base:7.3f}"
                )


if __name__ == "__main__":
    main()

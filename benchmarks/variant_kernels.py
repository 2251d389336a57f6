"""The pieces of the SAM variants' extra work, timed alone on gradient-sized
tensors (the 784-512-512-10 MLP's six weights, 669k floats), TensorFlow
kernels and XLA side by side; prints ms per call.

Each piece runs 200 times inside one `tf.function` loop, reading its inputs
from variables and writing list results into variables (so that nothing is
hoisted out of the loop or pruned); median of 5 timings, process CPU and
wall time. `add` (x + y: read two tensors, write one) gives the memory
bandwidth the other figures are bounded by.

    python benchmarks/variant_kernels.py
"""

from __future__ import annotations

import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

SHAPES = [(784, 512), (512,), (512, 512), (512,), (512, 10), (10,)]
CALLS = 200


def pieces(scale, seed):
    def squared_norm_mul_sum(g, v):  # the keras.ops form
        return tf.add_n([tf.reduce_sum(a * a) for a in g])

    def squared_norm_l2_loss(g, v):  # keras_sam.backend.tensorflow
        return 2.0 * tf.add_n([tf.nn.l2_loss(a) for a in g])

    def dot(g, v):
        return tf.add_n([tf.reduce_sum(a * b) for a, b in zip(g, v)])

    def add(g, v):
        return [a + b for a, b in zip(g, v)]

    def axpy(g, v):  # LookSAM's cheap step: g + s gv
        return [scale * b + a for a, b in zip(g, v)]

    def linear_combination(g, v):  # WSAM, GSAM, F-SAM, RWP
        return [scale * a + (1.0 - scale) * b for a, b in zip(g, v)]

    def looksam_reuse(g, v):  # |g|, then g + alpha |g| / |gv| gv
        s = 0.7 * tf.sqrt(2.0 * tf.add_n([tf.nn.l2_loss(a) for a in g])) / 3.0
        return [s * b + a for a, b in zip(g, v)]

    def gaussian_noise(g, v):  # RWP's draw
        return [keras.random.normal(a.shape, seed=seed) for a in g]

    return dict(
        squared_norm_mul_sum=squared_norm_mul_sum,
        squared_norm_l2_loss=squared_norm_l2_loss,
        dot=dot,
        add=add,
        axpy=axpy,
        linear_combination=linear_combination,
        looksam_reuse=looksam_reuse,
        gaussian_noise=gaussian_noise,
    )


def time_piece(piece, inputs, outputs):
    @tf.function
    def loop():
        total = tf.constant(0.0)
        for _ in tf.range(CALLS):
            result = piece(*[[v.read_value() for v in vs] for vs in inputs])
            if isinstance(result, list):
                for out, value in zip(outputs, result):
                    out.assign(value)
            else:
                total += result
        return total

    loop()
    samples = []
    for _ in range(5):
        wall, cpu = time.perf_counter(), time.process_time()
        loop()
        samples.append(
            (
                (time.perf_counter() - wall) / CALLS,
                (time.process_time() - cpu) / CALLS,
            )
        )
    return [statistics.median(s[i] for s in samples) for i in (0, 1)]


def main():
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"TF {tf.__version__}; {sum(int(np.prod(s)) for s in SHAPES)} floats"
    )
    rng = np.random.default_rng(0)
    inputs = [
        [tf.Variable(rng.normal(size=s).astype("float32")) for s in SHAPES]
        for _ in range(2)
    ]
    outputs = [tf.Variable(tf.zeros(s)) for s in SHAPES]
    scale = tf.Variable(0.3)
    print(f"{'piece':<22} {'xla':<4} {'cpu ms':>7} {'wall ms':>8}")
    for name, piece in pieces(scale, keras.random.SeedGenerator(0)).items():
        for jit in (False, True):
            if jit and name == "gaussian_noise":
                continue  # XLA's CPU sampler: ~70x slower (docs/variants.md)
            compiled = tf.function(piece, jit_compile=jit, autograph=False)
            wall, cpu = time_piece(compiled, inputs, outputs)
            print(
                f"{name:<22} {'on' if jit else 'off':<4} {1e3 * cpu:7.3f} "
                f"{1e3 * wall:8.3f}"
            )


if __name__ == "__main__":
    main()

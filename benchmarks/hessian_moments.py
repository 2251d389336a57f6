"""`non_uniformity(order=2)` against a warm `sharpness`, side by side.

    KERAS_BACKEND=jax python benchmarks/hessian_moments.py \
        [--models readme,lenet,transformer] [--examples 250,1000] [--repeats 2]

Per model (the README's 784-512-512-10 MLP and LeNet-300-100 trained two
epochs on synthetic MNIST-shaped data; a one-block transformer classifier
(attention, residual, LayerNormalization) trained two epochs on random
tokens), for each count of ``--examples`` examples, on one
`CurvatureOperator`: the warm process CPU time of `sharpness` and of
`non_uniformity(order=2)` (each run once to compile, then ``--repeats``
times, interleaved; medians), their ratio, the products each used (the
moments': the top Hessian eigenvector's products for the start, then the
moment products), and the 1-minute load average (the machine is shared:
compare the ratio, not the seconds). Issue 31's target: a ratio of at most
10.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))


def _readme():
    import keras
    from _models import mlp, teacher_classes

    x, y = teacher_classes(2000, 0)
    model = keras.Model(*mlp())
    return model, x, y


def _lenet():
    from _models import lenet, teacher_classes

    x, y = teacher_classes(2000, 0)
    return lenet(), x, y


def _transformer():
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.integers(0, 100, size=(2000, 16)).astype("int32")
    y = (x[:, 0] > 50).astype("int32")
    inputs = keras.Input((16,), dtype="int32")
    h = keras.layers.Embedding(100, 32)(inputs)
    a = keras.layers.MultiHeadAttention(num_heads=2, key_dim=16)(h, h)
    h = keras.layers.LayerNormalization()(keras.layers.Add()([h, a]))
    h = keras.layers.GlobalAveragePooling1D()(h)
    return keras.Model(inputs, keras.layers.Dense(2)(h)), x, y


MODELS = {"readme": _readme, "lenet": _lenet, "transformer": _transformer}


def trained(name: str):
    """(model, x, y): the MODELS entry after two epochs of SGD (seed 0)."""
    import keras

    keras.utils.set_random_seed(0)
    model, x, y = MODELS[name]()
    model.compile(
        keras.optimizers.SGD(0.05),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, batch_size=128, epochs=2, verbose=0)
    return model, x, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="readme,lenet,transformer")
    parser.add_argument("--examples", default="250")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import keras

    from keras_sam import hessian

    print(f"backend {keras.backend.backend()}")
    for name in args.models.split(","):
        model, x, y = trained(name)
        for count in (int(c) for c in args.examples.split(",")):
            op = hessian.CurvatureOperator(model, (x[:count], y[:count]))

            def moments(op=op):
                before = op.num_products
                result = hessian.non_uniformity_estimate(op, order=2)
                return result.iterations, op.num_products - before

            def sharp(op=op):
                before = op.num_products
                hessian.sharpness_estimate(op)
                return None, op.num_products - before

            runs = {"sharpness": sharp, "non_uniformity": moments}
            times = {k: [] for k in runs}
            products = {}
            for run in runs.values():
                run()  # compile / trace
            for _ in range(args.repeats):
                for key, run in runs.items():
                    start = time.process_time()
                    products[key] = run()
                    times[key].append(time.process_time() - start)
            a = statistics.median(times["sharpness"])
            s2 = statistics.median(times["non_uniformity"])
            steps, total = products["non_uniformity"]
            print(
                f"{name}, {count} examples: dim {op.dim}, chunk {op.chunk_size}, "
                f"vectorized {op.vectorized}; sharpness {a:.3f} s CPU "
                f"({products['sharpness'][1]} products), non_uniformity(order=2) "
                f"{s2:.3f} s CPU ({steps} moment steps, {total} products in "
                f"all); ratio {s2 / a:.1f}x; load {os.getloadavg()[0]:.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()

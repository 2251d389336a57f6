"""Micro-batches (m-sharpness) in the JAX SAM step: scan or vmap? Prints ratios.

The JAX step runs the full micro-batches of a batch in a `jax.lax.scan`,
threading batch-norm statistics and seeds in order (unrolled up to 16
micro-batches). For a model whose clean pass changes no state, a `jax.vmap`
could run them side by side instead. This script times three ways on the
same models in one process, interleaved over rounds (median wall time per
step):

- ``scan``: the step's scan, rolled (`unroll=False`);
- ``unrolled``: the step's scan, unrolled (one copy of the SAM step per
  micro-batch);
- ``vmap``: the micro-batches side by side: this script's `_vmapped`, in
  place of `keras_sam.backend.jax.micro_batches.scanned` (the same
  per-micro-batch SAM gradients, then their mean); it refuses a model whose
  pass changes its state or metrics.

Models: a 784-512-512-10 MLP and a small CNN (conv 32 / conv 64, ReLU, max
pooling, no batch norm or dropout, so that vmap applies), batch 128 and 512,
micro_batch_size 32 and 128, SGD with momentum, jit on. It selects the way
by patching two names of `keras_sam.backend.jax.micro_batches` while a
model's train function is traced (each model is traced once, then timed).

    KERAS_BACKEND=jax python benchmarks/jax_micro_batches.py [--steps 10]
        [--rounds 3] [--models mlp,cnn] [--batches 128,512] [--micro 32,128]
        [--ways scan,unrolled,vmap]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ["KERAS_BACKEND"] = "jax"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from _models import cnn, mlp  # noqa: E402

import keras_sam  # noqa: E402
from keras_sam.backend.jax import micro_batches  # noqa: E402


def _vmapped(model, fn, batches, state_variables):
    """`micro_batches.scanned` as a `jax.vmap` over the micro-batches."""
    carried = list(model.non_trainable_variables) + list(model.metrics_variables)
    outer = [(v, v.value) for group in state_variables for v in group]
    before = [v.value for v in carried]

    def one(batch):
        with keras.StatelessScope(state_mapping=outer) as scope:
            terms, y_pred = fn(*batch)
        # A stateless scope hands back a variable's own input value where
        # nothing changed it.
        after = [scope.get_current_value(v) for v in carried]
        if any(a is not b for a, b in zip(after, before)):
            raise ValueError("vmap: the model's pass changes its state")
        return terms, y_pred

    terms, y_pred = jax.vmap(one)(batches)
    return jax.tree_util.tree_map(lambda t: jnp.mean(t, axis=0), terms), y_pred


#: way -> (micro-batch function, unroll limit) while a model is traced.
WAYS = {
    "scan": (micro_batches.scanned, 0),
    "unrolled": (micro_batches.scanned, 1 << 30),
    "vmap": (_vmapped, 0),
}


#: name -> (input shape, builder); the CNN without batch norm (a vmap over
#: micro-batches needs a pass that changes no state).
MODELS = {
    "mlp": ((784,), mlp),
    "cnn": ((32, 32, 3), lambda: cnn(batch_norm=False)),
}


def _traced(way, model, x, y, batch):
    """Traces (and warms) `model`'s train function with `way` selected."""
    function, unroll = WAYS[way]
    saved = micro_batches.scanned, micro_batches.MAX_UNROLLED_MICRO_BATCHES
    micro_batches.scanned = function
    micro_batches.MAX_UNROLLED_MICRO_BATCHES = unroll
    try:
        start = time.perf_counter()
        model.fit(x[: batch * 2], y[: batch * 2], batch_size=batch, verbose=0)
        return time.perf_counter() - start
    finally:
        micro_batches.scanned, micro_batches.MAX_UNROLLED_MICRO_BATCHES = saved


def run(model_name, batch, micro, ways, steps, rounds):
    rng = np.random.default_rng(0)
    shape = MODELS[model_name][0]
    x = rng.normal(size=(batch * steps, *shape)).astype("float32")
    y = rng.integers(0, 10, size=(batch * steps,))
    models, first = {}, {}
    for way in ways:
        keras.utils.set_random_seed(0)
        inputs, outputs = MODELS[model_name][1]()
        model = keras_sam.SAMModel(inputs, outputs, rho=0.05, micro_batch_size=micro)
        model.compile(
            keras.optimizers.SGD(0.01, momentum=0.9),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=True,
        )
        first[way] = _traced(way, model, x, y, batch)
        models[way] = model
    # The same two steps from the same weights: the ways must agree.
    weights = {
        way: [v.numpy() for v in m.trainable_variables] for way, m in models.items()
    }
    reference = next(iter(weights.values()))
    gap = {
        way: max(float(np.max(np.abs(a - b))) for a, b in zip(w, reference))
        for way, w in weights.items()
    }
    times = {way: [] for way in ways}
    for _ in range(rounds):
        for way, model in models.items():
            start = time.perf_counter()
            model.fit(x, y, batch_size=batch, shuffle=False, verbose=0)
            times[way].append((time.perf_counter() - start) / steps)
    return {
        way: (statistics.median(t), min(t), max(t), first[way], gap[way])
        for way, t in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--batches", default="128,512")
    parser.add_argument("--micro", default="32,128")
    parser.add_argument("--ways", default="scan,unrolled,vmap")
    args = parser.parse_args()
    ways = args.ways.split(",")
    print(
        f"{platform.node()} ({os.cpu_count()} CPUs), JAX {jax.__version__}, "
        f"keras {keras.__version__}, {args.steps} steps x {args.rounds} rounds, "
        "median wall time per step (min-max); first: compile + 2 steps; "
        "gap: max |w - w of the first way| after those 2 steps"
    )
    print(
        f"{'model':<5} {'batch':>5} {'m':>4} {'k':>3} {'way':<9} "
        f"{'ms/step':>9} {'(min-max)':>15} {'first s':>8} {'gap':>8} "
        f"{'vs unrolled':>11}"
    )
    for model_name in args.models.split(","):
        for batch in map(int, args.batches.split(",")):
            for micro in map(int, args.micro.split(",")):
                if micro >= batch:
                    continue
                result = run(model_name, batch, micro, ways, args.steps, args.rounds)
                base = result.get("unrolled", next(iter(result.values())))[0]
                for way, (median, low, high, first, gap) in result.items():
                    print(
                        f"{model_name:<5} {batch:>5} {micro:>4} {batch // micro:>3} "
                        f"{way:<9} {median * 1e3:9.1f} "
                        f"{f'({low * 1e3:.1f}-{high * 1e3:.1f})':>15} "
                        f"{first:8.1f} {gap:8.1e} {median / base:10.2f}x",
                        flush=True,
                    )


if __name__ == "__main__":
    main()

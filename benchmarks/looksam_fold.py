"""LookSAM's cost over SGD: where it goes, and whether folding its reuse
step into the optimizer's update helps.

    python benchmarks/looksam_fold.py [--model mlp|cnn|both] [--steps 40] [--rounds 5]

Contenders (TensorFlow, SGD with momentum 0.9, every=5, interleaved rounds,
median per-step process CPU time; `_timing.py`):

- sgd, lazysam: plain Keras, and LazySAM(5) (the same passes as LookSAM,
  none of its arithmetic: LookSAM's floor);
- looksam: LookSAM(5) as shipped (d = g + s gv formed, then handed to SGD);
- look-fold: the cheap steps hand g to the optimizer and store the scalar
  s = alpha |g| / |gv|; an SGD subclass adds s gv inside its own update
  (m = mu m - lr (g + s gv)), so d is never a separate list of tensors. This
  is what Keras allows without touching its kernels: the same arithmetic,
  moved into `update_step` (on the SAM steps s = 0 and the product is wasted).

Then the pieces, each a `tf.function` on tensors shaped like the model's
weights, timed alone (process CPU time per call, minus an empty function's):
|g| (one l2_loss kernel per tensor), the reuse g + s gv, and the SAM step's
store (two dot products, gv = gs - c g, |gv|). The printed floor is
lazysam's ratio + (4/5 (|g| + reuse) + 1/5 store) / sgd's step: what
LookSAM would cost if nothing but its arithmetic were added to LazySAM.

Models: the 784-512-512-10 MLP (670k weights, batch 128: cheap gradient,
weight-sized arithmetic matters) and the CNN of `_models.cnn` (batch norm,
CIFAR-sized input, 20k weights, batch 64: the gradient dominates).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from _models import cnn, mlp  # noqa: E402
from _timing import fit_steps, interleave, medians  # noqa: E402

import keras_sam  # noqa: E402
from keras_sam import _gradient_math, variants  # noqa: E402
from keras_sam.backend.tensorflow import gradient_math  # noqa: E402
from keras_sam.variants.base import norm, safe_ratio  # noqa: E402

EVERY = 5


class FoldedLookSAM(variants.LookSAM):
    """LookSAM whose cheap steps return g and store s (the last state
    scalar) for `FoldedSGD` to add s gv inside the optimizer's update."""

    def state_shapes(self, weights):
        return super().state_shapes(weights) + [((), "float32")]

    def combine(self, gradients, perturbed_gradients, state, step, second_pass):
        *gv, gv_norm, _ = state
        if second_pass is True:
            d, stored = self._store(gradients, perturbed_gradients)
            return d, stored + [keras.ops.zeros((), "float32")]
        if second_pass is False:
            scale = self.alpha * safe_ratio(norm(gradients), gv_norm)
            return list(gradients), list(gv) + [gv_norm, scale]
        raise NotImplementedError("the TF step branches before combine")


class FoldedSGD(keras.optimizers.SGD):
    """SGD whose update for variable i uses g_i + s gv_i (benchmark only)."""

    def attach(self, model):
        self._fold_state = model.variant_state
        return self

    def update_step(self, gradient, variable, learning_rate):
        state = self._fold_state
        gv = state[self._get_variable_index(variable)]
        gradient = gradient + tf.cast(state[-1], gradient.dtype) * gv
        super().update_step(gradient, variable, learning_rate)


def make(name, model_name, batch):
    keras.utils.set_random_seed(0)
    inputs, outputs = (mlp if model_name == "mlp" else cnn)()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    if name == "sgd":
        model = keras.Model(inputs, outputs)
    else:
        variant = {
            "lazysam": variants.LazySAM(every=EVERY),
            "looksam": variants.LookSAM(every=EVERY),
            "look-fold": FoldedLookSAM(every=EVERY),
        }[name]
        model = keras_sam.SAMModel(inputs, outputs, rho=0.05, variant=variant)
        if name == "look-fold":
            optimizer = FoldedSGD(0.01, momentum=0.9).attach(model)
    model.compile(optimizer, loss, steps_per_execution=10, jit_compile=False)
    return model


def dataset(model_name, batch):
    rng = np.random.default_rng(0)
    shape = (784,) if model_name == "mlp" else (32, 32, 3)
    x = rng.normal(size=(batch * 4, *shape)).astype("float32")
    y = rng.integers(0, 10, size=(batch * 4,))
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).cache().repeat()


def time_call(fn, args, calls=300):
    """Process CPU seconds of one call of the tf.function `fn` (the mean of
    `calls`; CPU time is the steadier figure on a shared machine). The
    results stay tensors: copying them out would add weight-sized copies."""
    fn(*args)
    start = time.process_time()
    for _ in range(calls):
        fn(*args)
    return (time.process_time() - start) / calls


def pieces(weights):
    """Seconds of |g|, the reuse and the store on tensors shaped like
    `weights`, each minus an empty function's call (TF's kernels for the
    dot products, as inside the SAM step)."""
    rng = np.random.default_rng(1)

    def like():
        return [
            tf.constant(rng.normal(size=w.shape).astype("float32")) for w in weights
        ]

    g, gs, gv = like(), like(), like()
    rule = variants.LookSAM(every=EVERY)

    def in_kernel(fn):
        def run(*args):
            with _gradient_math.dot_kernel(gradient_math.dot):
                return fn(*args)

        return tf.function(run)

    empty = tf.function(lambda g: tf.constant(0.0))
    grad_norm = in_kernel(lambda g: norm(g))
    reuse = in_kernel(lambda g, gv: rule._reuse(g, gv + [norm(gv)])[0])
    store = in_kernel(lambda g, gs: rule._store(g, gs)[1])
    overhead = time_call(empty, (g,))
    return {
        "|g|": time_call(grad_norm, (g,)) - overhead,
        "reuse": time_call(reuse, (g, gv)) - overhead - time_call(grad_norm, (gv,)),
        "store": time_call(store, (g, gs)) - overhead,
    }


def run_model(model_name, steps, rounds):
    batch = 128 if model_name == "mlp" else 64
    data = dataset(model_name, batch)
    names = ["sgd", "lazysam", "looksam", "look-fold"]
    models = {name: make(name, model_name, batch) for name in names}
    for model in models.values():
        model.fit(data, epochs=1, steps_per_epoch=10, verbose=0)  # trace
    same = max(
        float(np.max(np.abs(a.numpy() - b.numpy())))
        for a, b in zip(
            models["looksam"].trainable_variables,
            models["look-fold"].trainable_variables,
        )
    )
    runs = {name: fit_steps(model, data, steps) for name, model in models.items()}
    per_step = medians(interleave(runs, steps, rounds))
    sgd_wall, sgd_cpu = per_step["sgd"]
    weights = models["sgd"].trainable_variables
    count = sum(int(np.prod(w.shape)) for w in weights)
    print(
        f"\n## {model_name}: {count:,} weights, batch {batch}, "
        f"SGD step {1e3 * sgd_cpu:.2f} ms CPU ({1e3 * sgd_wall:.2f} ms wall)"
    )
    print(f"look-fold vs looksam after 10 steps: max |dw| = {same:.1e}")
    print(f"{'contender':<10} {'cpu ms':>8} {'x sgd':>6} {'wall ms':>8} {'x sgd':>6}")
    for name, (wall, cpu) in per_step.items():
        print(
            f"{name:<10} {1e3 * cpu:8.2f} {cpu / sgd_cpu:6.2f} "
            f"{1e3 * wall:8.2f} {wall / sgd_wall:6.2f}"
        )
    parts = pieces(weights)
    print(
        "pieces (ms CPU, alone): "
        + ", ".join(f"{k} {1e3 * v:.3f}" for k, v in parts.items())
    )
    cheap = parts["|g|"] + parts["reuse"]
    added = ((EVERY - 1) * cheap + parts["store"]) / EVERY
    lazy = per_step["lazysam"][1] / sgd_cpu
    print(
        f"arithmetic per step on average {1e3 * added:.3f} ms = "
        f"{added / sgd_cpu:.3f} x SGD's step (CPU): floor = lazysam "
        f"{lazy:.2f} + {added / sgd_cpu:.2f} = {lazy + added / sgd_cpu:.2f}x"
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="both", choices=["mlp", "cnn", "both"])
    parser.add_argument("--steps", type=int, default=40, help="multiple of 10")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}, "
        f"Keras {keras.__version__}, TF {tf.__version__}"
    )
    for model_name in ["mlp", "cnn"] if args.model == "both" else [args.model]:
        run_model(model_name, args.steps, args.rounds)
    print(f"# load average at the end {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()

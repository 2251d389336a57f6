"""SAM vs SGD step time, side by side in one run; prints ratios.

Models: a 784-512-512-10 MLP and a small CNN with batch norm (CIFAR-sized
input), `jit_compile` off and on. Variants per model:

- sgd: plain `keras.Model` (the baseline, ratio 1.00);
- sam: `keras_sam.SAMModel` (floor 2.00x: two forward-backward passes);
- sam_micro4: SAMModel with 4 micro-batches (m-sharpness);
- naive: assign eps into the variables, run the perturbed pass with state
  updates, subtract eps back (what the stateless design replaces).

Timing (`_timing.py`): fixed number of steps through `fit` on an in-memory repeated
dataset after a warm-up; variants are interleaved over several rounds and the
median per-step time is reported, so that load on the machine hits all
variants alike. Wall and process CPU time are both printed.

    python benchmarks/sam_step_time.py [--steps 30] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import platform

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from _models import cnn, mlp  # noqa: E402
from _timing import fit_steps, interleave, medians  # noqa: E402

import keras_sam  # noqa: E402

BATCH = 128


class NaiveSAM(keras.Model):
    """The textbook port: perturb the variables in place and restore them."""

    def __init__(self, *args, rho=0.05, **kwargs):
        super().__init__(*args, **kwargs)
        self.rho = rho

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            loss = self.compute_loss(x, y, self(x, training=True))
        weights = self.trainable_variables
        grads = tape.gradient(loss, weights)
        norm = tf.linalg.global_norm(grads) + 1e-12
        eps = [g * (self.rho / norm) for g in grads]
        for w, e in zip(weights, eps):
            w.assign_add(e)
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            perturbed = self.compute_loss(x, y, y_pred)
        grads = tape.gradient(perturbed, weights)
        for w, e in zip(weights, eps):
            w.assign_sub(e)
        self.optimizer.apply_gradients(zip(grads, weights))
        return self.compute_metrics(x, y, y_pred)


VARIANTS = {
    "sgd": lambda i, o: keras.Model(i, o),
    "sam": lambda i, o: keras_sam.SAMModel(i, o, rho=0.05),
    "sam_micro4": lambda i, o: keras_sam.SAMModel(
        i, o, rho=0.05, micro_batch_size=BATCH // 4
    ),
    "naive": lambda i, o: NaiveSAM(i, o, rho=0.05),
}


def make_model(builder, variant, jit):
    keras.utils.set_random_seed(0)
    model = VARIANTS[variant](*builder())
    model.compile(
        keras.optimizers.SGD(0.01, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
        steps_per_execution=10,  # amortize the per-call overhead of fit
    )
    return model


def dataset(shape):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH * 4, *shape)).astype("float32")
    y = rng.integers(0, 10, size=(BATCH * 4,))
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).cache().repeat()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40, help="multiple of 10")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"TF {tf.__version__}, Keras {keras.__version__}, batch {BATCH}"
    )
    print(
        f"{'model':<5} {'xla':<4} {'variant':<11} {'wall ms':>8} {'x sgd':>6} "
        f"{'cpu ms':>8} {'x sgd':>6}"
    )
    for name, builder, shape in [("mlp", mlp, (784,)), ("cnn", cnn, (32, 32, 3))]:
        data = dataset(shape)
        for jit in (False, True):
            variants = list(VARIANTS)
            if jit and name == "cnn" and not tf.config.list_physical_devices("GPU"):
                # XLA on CPU runs while-loop bodies single-threaded without its
                # fast convolutions: ~50x slower, see docs/benchmarks.md.
                variants.remove("sam_micro4")
            models = {v: make_model(builder, v, jit) for v in variants}
            for model in models.values():
                model.fit(data, epochs=1, steps_per_epoch=10, verbose=0)  # trace
            runs = {v: fit_steps(m, data, args.steps) for v, m in models.items()}
            per_step = medians(interleave(runs, args.steps, args.rounds))
            base_wall, base_cpu = per_step["sgd"]
            for variant, (wall, cpu) in per_step.items():
                print(
                    f"{name:<5} {'on' if jit else 'off':<4} {variant:<11} "
                    f"{1e3 * wall:8.2f} {wall / base_wall:6.2f} "
                    f"{1e3 * cpu:8.2f} {cpu / base_cpu:6.2f}"
                )


if __name__ == "__main__":
    main()

"""Step time of each SAM variant over SGD, side by side in one run; prints
ratios.

Model: the 784-512-512-10 MLP of `sam_step_time.py`, batch 128, SGD with
momentum, `steps_per_execution=10`, `jit_compile` off (Keras' "auto" on
CPU) unless `--jit`. Variants, with their paper defaults except where named:

- sgd: plain `keras.Model` (ratio 1.00);
- sam: `SAMModel` without a variant;
- lazysam / looksam: every=5 (target <= 1.25x SGD: the four cheap steps
  of each five must skip the second pass);
- gsam, wsam, fsam, rwp, aesam: two passes (target: within 3% of SAM;
  AE-SAM runs the second pass only on some steps);
- msam: Momentum-SAM, one pass at w + eps (eps from SGD's momentum);
- samon is left out: the MLP has no normalization layer;
- with `--breakdown`, LookSAM with parts of its rule left out (same
  passes): look-noreuse (the cheap steps apply g, not g + s gv),
  look-nostore (the SAM steps store nothing), look-neither (both): where
  LookSAM's time over LazySAM goes.

Timing (`_timing.py`): a fixed number of steps through `fit` on an
in-memory repeated dataset after a warm-up; variants interleaved over
several rounds; median per-step wall and process CPU time. The passes column
is `model.gradient_passes` per step over the whole run.

    python benchmarks/variants.py [--steps 40] [--rounds 5] [--batch 128]
        [--jit] [--student 1000] [--breakdown] [--only sgd,lazysam,looksam]
"""

from __future__ import annotations

import argparse
import os
import platform

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from _models import mlp  # noqa: E402
from _timing import fit_steps, interleave, medians  # noqa: E402

import keras_sam  # noqa: E402
from keras_sam import variants  # noqa: E402

BATCH = 128  # --batch overrides

VARIANTS = {
    "sgd": None,
    "sam": "sam",
    "lazysam": variants.LazySAM(every=5),
    "looksam": variants.LookSAM(every=5),
    "gsam": variants.GSAM(),
    "wsam": variants.WSAM(),
    "fsam": variants.FriendlySAM(),
    "rwp": variants.RWP(seed=0),
    "aesam": variants.AESAM(),
    "msam": variants.MomentumSAM(),
}


class LookSAMPart(variants.LookSAM):
    """LookSAM(every=5) without its cheap-step reuse and / or its SAM-step
    store (d = g or gs there, the state left alone): for `--breakdown`."""

    def __init__(self, reuse, store):
        super().__init__(every=5)
        self.reuse, self.store = reuse, store

    def combine(self, gradients, perturbed_gradients, state, step, second_pass):
        if second_pass is True and not self.store:
            return list(perturbed_gradients), list(state)
        if second_pass is False and not self.reuse:
            return list(gradients), list(state)
        return super().combine(gradients, perturbed_gradients, state, step, second_pass)


BREAKDOWN = {
    "look-noreuse": LookSAMPart(reuse=False, store=True),
    "look-nostore": LookSAMPart(reuse=True, store=False),
    "look-neither": LookSAMPart(reuse=False, store=False),
}


def make_model(name, jit, student):
    keras.utils.set_random_seed(0)
    if student:
        # The quick synthetic sweep's student (regression, squared loss).
        from keras_sam.study.workloads import get_workload

        built = get_workload("synthetic").build(student, seed=0)
        inputs, outputs = built.inputs, built.outputs
        loss = "mse"
    else:
        inputs, outputs = mlp()
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if name == "sgd":
        model = keras.Model(inputs, outputs)
    elif name == "sam":
        model = keras_sam.SAMModel(inputs, outputs, rho=0.05)
    else:
        variant = VARIANTS.get(name) or BREAKDOWN[name]
        model = keras_sam.SAMModel(inputs, outputs, rho=0.05, variant=variant)
    model.compile(
        keras.optimizers.SGD(0.01, momentum=0.9),
        loss,
        steps_per_execution=10,
        jit_compile=jit,
    )
    return model


def dataset(batch, student):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch * 4, 100 if student else 784)).astype("float32")
    if student:
        y = rng.normal(size=(batch * 4, 1)).astype("float32")
    else:
        y = rng.integers(0, 10, size=(batch * 4,))
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).cache().repeat()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40, help="multiple of 10")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--jit", action="store_true", help="jit_compile=True")
    parser.add_argument(
        "--student",
        type=int,
        default=0,
        help="time the synthetic sweep's student of this width instead of the MLP",
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="add LookSAM with parts of its rule left out",
    )
    parser.add_argument(
        "--only", help="comma-separated names to time (sgd and sam always)"
    )
    args = parser.parse_args()
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Keras {keras.__version__} on {keras.backend.backend()} "
        f"(TF {tf.__version__}), batch {args.batch}, "
        f"jit_compile={args.jit}, "
        + (
            f"synthetic student {args.student}"
            if args.student
            else "MLP 784-512-512-10"
        )
    )
    data = dataset(args.batch, args.student)
    names = list(VARIANTS) + (list(BREAKDOWN) if args.breakdown else [])
    if args.only:
        chosen = {"sgd", "sam", *args.only.split(",")}
        names = [name for name in names if name in chosen]
    models = {name: make_model(name, args.jit, args.student) for name in names}
    for model in models.values():
        model.fit(data, epochs=1, steps_per_epoch=10, verbose=0)  # trace
    runs = {name: fit_steps(model, data, args.steps) for name, model in models.items()}
    per_step = medians(interleave(runs, args.steps, args.rounds))
    total_steps = 10 + args.rounds * args.steps
    print(
        f"{'variant':<12} {'passes':>6} {'wall ms':>8} {'x sgd':>6} {'x sam':>6} "
        f"{'cpu ms':>8} {'x sgd':>6} {'x sam':>6}"
    )
    sgd, sam = per_step["sgd"], per_step["sam"]
    for name, (wall, cpu) in per_step.items():
        model = models[name]
        passes = getattr(model, "gradient_passes", float(total_steps)) / total_steps
        print(
            f"{name:<12} {passes:6.2f} {1e3 * wall:8.2f} {wall / sgd[0]:6.2f} "
            f"{wall / sam[0]:6.2f} {1e3 * cpu:8.2f} {cpu / sgd[1]:6.2f} "
            f"{cpu / sam[1]:6.2f}"
        )


if __name__ == "__main__":
    main()

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

With ``--workload mnist1d`` (``--size``: MLP width, default 256) or
``mnist1d-cnn`` (channels, default 25) the model, data, loss and optimizer
are the sweep's (`keras_sam.study`: the paper preset's SGD, lr 0.1, momentum
0.9, coupled L2, batch 128; rho 0.5), and each round trains one epoch of the
4,000 examples (32 steps) per contender; ``--workload readme`` is the
README's Usage example (784-512-10, 2,000 synthetic examples, SGD 0.1
momentum 0.9, batch 128, rho 0.05). The variants' options are the library's
defaults, and ``looksam_paper`` is LookSAM at the paper's alpha = 0.7 (the
default before 2026-12-07).

Timing (`_timing.py`): a fixed number of steps through `fit` on an
in-memory repeated dataset after a warm-up; variants interleaved over
several rounds; median per-step wall and process CPU time. The passes column
is `model.gradient_passes` per step over the whole run.

    python benchmarks/variants.py [--steps 40] [--rounds 5] [--batch 128]
        [--jit] [--student 1000] [--breakdown] [--only sgd,lazysam,looksam]
        [--workload mnist1d|mnist1d-cnn|readme --size 256]
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics

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
    "looksam_paper": variants.LookSAM(every=5, alpha=0.7),
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


def workload_runs(names, workload, size):
    """Per contender, a run of one epoch of `workload` (the sweep's model,
    data and optimizer, or the README's example): (runs, steps per epoch,
    models)."""
    from keras_sam.study.sweep.train import make_optimizer
    from keras_sam.study.workloads import get_preset, get_workload

    if workload == "readme":
        rng = np.random.default_rng(0)
        x = rng.standard_normal((2000, 784)).astype("float32")
        y = np.argmax(x[:, :10], axis=1)
        rho = 0.05

        def build():
            return keras.Sequential(
                [
                    keras.Input((784,)),
                    keras.layers.Dense(512, activation="relu"),
                    keras.layers.Dense(10),
                ]
            )

        def optimizer():
            return keras.optimizers.SGD(0.1, momentum=0.9)

        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    else:
        spec = get_workload(workload)
        preset = get_preset(workload, "paper")
        x, y = spec.load(num_train=preset.num_train, num_test=preset.num_test).train
        rho = 0.5

        def build():
            return spec.build(size, seed=0, **preset.model_options)

        def optimizer():
            return make_optimizer(preset, -(-len(x) // BATCH))

        loss = spec.loss()
    steps = -(-len(x) // BATCH)
    models, runs = {}, {}
    for name in names:
        keras.utils.set_random_seed(0)
        model = build()
        variant = VARIANTS.get(name) or BREAKDOWN.get(name)
        if name != "sgd":
            model = keras_sam.sam(model, rho=rho, variant=variant)
        model.compile(optimizer(), loss)
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)  # trace
        models[name] = model
        runs[name] = functools.partial(
            model.fit, x, y, batch_size=BATCH, epochs=1, verbose=0
        )
    return runs, steps, models


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
    parser.add_argument(
        "--workload",
        choices=["mlp", "mnist1d", "mnist1d-cnn", "readme"],
        default="mlp",
        help="time whole epochs of this workload (see the module docstring)",
    )
    parser.add_argument("--size", type=float, default=None, help="width / channels")
    args = parser.parse_args()
    if args.workload != "mlp":
        return main_workload(args)
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


def main_workload(args):
    size = args.size or (256 if args.workload == "mnist1d" else 25)
    shape = "" if args.workload == "readme" else f" size {size:g}"
    # LatePhaseSAM costs SGD's step, then SAM's: (1 + SAM's ratio) / 2 on
    # average with the switch at half; timing it in rounds would time one
    # phase or the other.
    names = list(VARIANTS)
    if args.only:
        chosen = {"sgd", "sam", *args.only.split(",")}
        names = [name for name in names if name in chosen]
    load = os.getloadavg()
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Keras {keras.__version__} on {keras.backend.backend()}, {args.workload}"
        f"{shape}, one epoch per contender per round, {args.rounds} rounds, "
        f"load average at start {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}"
    )
    runs, steps, models = workload_runs(names, args.workload, size)
    samples = interleave(runs, steps, args.rounds)
    per_step = medians(samples)
    print(
        f"{'variant':<14} {'passes':>6} {'wall ms':>8} {'x sgd':>6} "
        f"{'cpu ms':>8} {'x sgd':>6}  (per step; x sgd: median of round ratios)"
    )
    for name, (wall, cpu) in per_step.items():
        model = models[name]
        total = steps * (args.rounds + 1)
        passes = getattr(model, "gradient_passes", float(total)) / total
        # Ratio within each round (the same load for both), then the median.
        wall_ratio = statistics.median(
            a[0] / b[0] for a, b in zip(samples[name], samples["sgd"])
        )
        cpu_ratio = statistics.median(
            a[1] / b[1] for a, b in zip(samples[name], samples["sgd"])
        )
        print(
            f"{name:<14} {passes:6.2f} {1e3 * wall:8.2f} {wall_ratio:6.2f} "
            f"{1e3 * cpu:8.2f} {cpu_ratio:6.2f}"
        )
    load = os.getloadavg()
    print(f"# load average at end {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")


if __name__ == "__main__":
    main()

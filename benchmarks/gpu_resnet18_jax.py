"""ResNet-18 on CIFAR-10 shapes on JAX: keras-sam against a hand-written optax
SAM step on the same Keras model, steps per second; prints ratios.

Four steps, each jitted, on one synthetic batch kept on the device
(32x32x3 images, 10 classes), timed over the same number of steps and
interleaved over rounds (median):

- ``keras-sam SAM``: `keras_sam.SAMModel` compiled with SGD (momentum 0.9),
  jit on; the compiled train function Keras's `fit` calls, looped;
- ``optax SAM``: a pure function over the same Keras model's
  `stateless_call`: g at w, eps = rho g / ||g||, the perturbed gradient at
  w + eps from the clean pass's input state, batch-norm statistics from the
  clean pass, `optax.sgd` with momentum. The same math as keras-sam's step,
  so the ratio of the two is keras-sam's overhead (target: within 5%);
- ``Keras SGD`` and ``optax SGD``: the same two without SAM.

Before timing, one step of each pair from the same weights on the same batch
is compared (max |w - w'|), so that the timed steps compute the same thing.
With ``--fit`` (default) the two Keras models also run `model.fit` on NumPy
arrays (what users call: adds Keras's loop and the host-to-device copies).

Meant for a GPU with JAX, optax and a Keras wheel, without TensorFlow
(see benchmarks/device/README.md); it runs on a CPU too (slowly).
``--check`` blocks the `tensorflow` import, runs a tiny size and reports
whatever imports TensorFlow on the way (exit status 1 if anything does, or
if the steps disagree).

    python benchmarks/gpu_resnet18_jax.py [--batch 128] [--steps 100]
        [--warmup 10] [--rounds 3] [--dtype float32|mixed_bfloat16] [--no-fit]
    python benchmarks/gpu_resnet18_jax.py --check
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback

os.environ["KERAS_BACKEND"] = "jax"

RHO = 0.05
LEARNING_RATE = 0.1
MOMENTUM = 0.9
#: The largest max |w - w'| after one step that counts as the same step
#: (float32 sums in another order; TF32 / bfloat16 on a GPU round more).
AGREEMENT = {"float32": 1e-3, "mixed_bfloat16": 2e-2}


def block_tensorflow() -> None:
    """Makes `import tensorflow` fail, as on a machine without it."""
    sys.modules["tensorflow"] = None


def tensorflow_importers(error: BaseException) -> list[str]:
    """The chain of project frames (file:line) that led to a failed
    `import tensorflow`, outermost first."""
    frames = traceback.extract_tb(error.__traceback__)
    chain = []
    for frame in frames:
        for root in ("keras_sam/", "benchmarks/"):
            if root in frame.filename:
                path = frame.filename[frame.filename.rindex(root) :]
                chain.append(f"{path}:{frame.lineno}")
                break
    return chain or [f"{f.filename}:{f.lineno}" for f in frames[-1:]]


def resnet18(keras, num_classes: int = 10):
    """ResNet-18 for 32x32 inputs (3x3 stem, no max pooling; basic blocks
    64-128-256-512, two each; batch norm; global average pooling)."""
    layers = keras.layers

    def conv(filters, size, strides=1):
        return layers.Conv2D(filters, size, strides, padding="same", use_bias=False)

    def block(h, filters, strides):
        shortcut = h
        h = layers.ReLU()(layers.BatchNormalization()(conv(filters, 3, strides)(h)))
        h = layers.BatchNormalization()(conv(filters, 3)(h))
        if strides != 1 or shortcut.shape[-1] != filters:
            shortcut = layers.BatchNormalization()(conv(filters, 1, strides)(shortcut))
        return layers.ReLU()(layers.Add()([h, shortcut]))

    inputs = keras.Input((32, 32, 3))
    h = layers.ReLU()(layers.BatchNormalization()(conv(64, 3)(inputs)))
    for stage, filters in enumerate((64, 128, 256, 512)):
        for index in range(2):
            h = block(h, filters, 2 if stage and not index else 1)
    h = layers.GlobalAveragePooling2D()(h)
    return inputs, layers.Dense(num_classes)(h)


def optax_steps(model, optax, jax, jnp):
    """(SAM step, SGD step) over `model.stateless_call`: pure functions of
    ((trainable, non_trainable, optimizer state), x, y), jitted."""
    optimizer = optax.sgd(LEARNING_RATE, momentum=MOMENTUM)

    def loss_fn(trainable, non_trainable, x, y):
        logits, state = model.stateless_call(trainable, non_trainable, x, training=True)
        losses = optax.softmax_cross_entropy_with_integer_labels(
            logits.astype("float32"), y
        )
        return jnp.mean(losses), state

    gradients = jax.value_and_grad(loss_fn, has_aux=True)

    def apply(grads, trainable, opt_state):
        updates, opt_state = optimizer.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state

    def sam(state, x, y):
        trainable, non_trainable, opt_state = state
        (loss, new_state), grads = gradients(trainable, non_trainable, x, y)
        scale = RHO / (optax.global_norm(grads) + 1e-12)
        perturbed = [w + (scale * g).astype(w.dtype) for w, g in zip(trainable, grads)]
        # The clean pass's input state: the same batch statistics; its
        # state update is the one kept.
        _, perturbed_grads = gradients(perturbed, non_trainable, x, y)
        trainable, opt_state = apply(perturbed_grads, trainable, opt_state)
        return (trainable, new_state, opt_state), loss

    def sgd(state, x, y):
        trainable, non_trainable, opt_state = state
        (loss, new_state), grads = gradients(trainable, non_trainable, x, y)
        trainable, opt_state = apply(grads, trainable, opt_state)
        return (trainable, new_state, opt_state), loss

    jit = lambda f: jax.jit(f, donate_argnums=0)  # noqa: E731
    return jit(sam), jit(sgd), optimizer


def main(args) -> int:
    if args.block_tensorflow:
        block_tensorflow()
    try:
        import jax
        import jax.numpy as jnp
        import keras
        import numpy as np
        import optax

        import keras_sam
    except ImportError as error:
        if "tensorflow" in str(error):
            print(
                "tensorflow imported on the JAX backend by: "
                + " -> ".join(tensorflow_importers(error))
            )
            return 1
        raise
    if args.dtype != "float32":
        keras.config.set_dtype_policy(args.dtype)
    devices = jax.devices()
    print(
        f"{platform.node()}: {devices[0].device_kind} x{len(devices)} "
        f"({jax.default_backend()}), JAX {jax.__version__}, optax {optax.__version__}, "
        f"Keras {keras.__version__}, {os.cpu_count()} CPUs; ResNet-18 32x32x3, "
        f"batch {args.batch}, {args.dtype}, rho {RHO}, SGD {LEARNING_RATE} "
        f"momentum {MOMENTUM}; {args.steps} steps x {args.rounds} rounds "
        f"after {args.warmup} warm-up steps, median"
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, size=(args.batch,)).astype("int32")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def build(sam):
        keras.utils.set_random_seed(0)
        inputs, outputs = resnet18(keras)
        if sam:
            model = keras_sam.SAMModel(inputs, outputs, rho=RHO)
        else:
            model = keras.Model(inputs, outputs)
        model.compile(
            keras.optimizers.SGD(LEARNING_RATE, momentum=MOMENTUM),
            loss,
            jit_compile=True,
        )
        return model

    models = {"keras-sam SAM": build(True), "Keras SGD": build(False)}
    plain = models["Keras SGD"]
    for a, b in zip(models["keras-sam SAM"].weights, plain.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())

    # Copies of the initial values: Keras's train function donates its state.
    def keras_state(model):
        model.optimizer.build(model.trainable_variables)
        groups = (
            model.trainable_variables,
            model.non_trainable_variables,
            model.optimizer.variables,
            model.metrics_variables,
        )
        return tuple([jnp.array(v.value, copy=True) for v in g] for g in groups)

    def keras_step(model):
        model.make_train_function()
        function = model.train_function

        def step(state, x, y):
            _, state = function(state, iter([(x, y)]))
            return state

        return step

    sam_step, sgd_step, optimizer = optax_steps(plain, optax, jax, jnp)

    def optax_state():
        trainable = [jnp.array(v.value, copy=True) for v in plain.trainable_variables]
        non_trainable = [
            jnp.array(v.value, copy=True) for v in plain.non_trainable_variables
        ]
        return trainable, non_trainable, optimizer.init(trainable)

    def drop_loss(step):
        return lambda state, x, y: step(state, x, y)[0]

    runs = {
        "keras-sam SAM": (
            keras_step(models["keras-sam SAM"]),
            keras_state(models["keras-sam SAM"]),
        ),
        "optax SAM": (drop_loss(sam_step), optax_state()),
        "Keras SGD": (keras_step(plain), keras_state(plain)),
        "optax SGD": (drop_loss(sgd_step), optax_state()),
    }
    x_device, y_device = jax.device_put(x), jax.device_put(y)

    # One step of each from the same weights: the pairs must agree.
    first = {}
    for name, (step, state) in runs.items():
        start = time.perf_counter()
        state = step(state, x_device, y_device)
        jax.block_until_ready(state)
        first[name] = time.perf_counter() - start
        runs[name] = (step, state)
    gaps = {}
    for ours, theirs in (("keras-sam SAM", "optax SAM"), ("Keras SGD", "optax SGD")):
        a, b = runs[ours][1], runs[theirs][1]
        weights = max(float(jnp.max(jnp.abs(p - q))) for p, q in zip(a[0], b[0]))
        stats = max(float(jnp.max(jnp.abs(p - q))) for p, q in zip(a[1], b[1]))
        gaps[ours] = (weights, stats)
        print(
            f"after one step, {ours} vs {theirs}: max |w - w'| {weights:.2e}, "
            f"batch-norm statistics {stats:.2e}"
        )
    sam_vs_sgd = max(
        float(jnp.max(jnp.abs(p - q)))
        for p, q in zip(runs["keras-sam SAM"][1][0], runs["Keras SGD"][1][0])
    )
    print(f"  (SAM vs SGD after one step, for scale: {sam_vs_sgd:.2e})")

    for name, (step, state) in runs.items():
        for _ in range(args.warmup):
            state = step(state, x_device, y_device)
        jax.block_until_ready(state)
        runs[name] = (step, state)
    times = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (step, state) in runs.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                state = step(state, x_device, y_device)
            jax.block_until_ready(state)
            times[name].append((time.perf_counter() - start) / args.steps)
            runs[name] = (step, state)
    median = {name: statistics.median(t) for name, t in times.items()}

    fit = {}
    if args.fit:
        xs = np.concatenate([x] * args.steps)
        ys = np.concatenate([y] * args.steps)
        for name, model in models.items():
            model.fit(x, y, batch_size=args.batch, verbose=0)  # traced already
            values = []
            for _ in range(args.rounds):
                start = time.perf_counter()
                model.fit(xs, ys, batch_size=args.batch, shuffle=False, verbose=0)
                values.append((time.perf_counter() - start) / args.steps)
            fit[name] = statistics.median(values)

    print(
        f"\n{'step':<14} {'steps/s':>9} {'ms/step':>9} {'(min-max)':>17} "
        f"{'first s':>8} {'fit steps/s':>12}"
    )
    for name, values in times.items():
        fitted = f"{1 / fit[name]:12.2f}" if name in fit else f"{'':>12}"
        print(
            f"{name:<14} {1 / median[name]:9.2f} {median[name] * 1e3:9.2f} "
            f"{f'({min(values) * 1e3:.2f}-{max(values) * 1e3:.2f})':>17} "
            f"{first[name]:8.1f} {fitted}"
        )
    print(
        "\ntime ratios: keras-sam SAM / optax SAM "
        f"{median['keras-sam SAM'] / median['optax SAM']:.3f}x (parity: <= 1.05); "
        f"Keras SGD / optax SGD {median['Keras SGD'] / median['optax SGD']:.3f}x; "
        f"SAM / SGD: keras-sam {median['keras-sam SAM'] / median['Keras SGD']:.2f}x, "
        f"optax {median['optax SAM'] / median['optax SGD']:.2f}x"
    )
    if fit:
        print(
            "fit: keras-sam SAM / Keras SGD "
            f"{fit['keras-sam SAM'] / fit['Keras SGD']:.2f}x; fit / step: keras-sam "
            f"{fit['keras-sam SAM'] / median['keras-sam SAM']:.2f}x, Keras SGD "
            f"{fit['Keras SGD'] / median['Keras SGD']:.2f}x"
        )
    loaded = "tensorflow" in sys.modules and sys.modules["tensorflow"] is not None
    print(f"tensorflow imported: {'yes' if loaded else 'no'}")
    limit = AGREEMENT[args.dtype]
    disagree = [name for name, gap in gaps.items() if max(gap) > limit]
    if disagree:
        print(f"DISAGREE (> {limit:g} after one step): {', '.join(disagree)}")
        return 1
    return 0


def check() -> int:
    """Tiny size with `import tensorflow` blocked; where TensorFlow is
    installed and something imports it, the tiny size again without the
    block, to smoke-test the rest."""
    tiny = [sys.executable, __file__, "--batch", "4", "--steps", "2"]
    tiny += ["--warmup", "1", "--rounds", "1"]
    done = subprocess.run(tiny + ["--block-tensorflow"])
    if done.returncode == 0:
        print("check: passed without tensorflow")
        return 0
    try:
        import importlib.util

        has_tensorflow = importlib.util.find_spec("tensorflow") is not None
    except ValueError:
        has_tensorflow = False
    if has_tensorflow:
        print("check: again with tensorflow allowed (it is installed here)")
        again = subprocess.run(tiny)
        print(
            f"check: with tensorflow: {'passed' if again.returncode == 0 else 'FAILED'}"
        )
    print("check: FAILED without tensorflow (see above)")
    return 1


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--dtype",
        choices=sorted(AGREEMENT),
        default="float32",
        help="Keras dtype policy for both models",
    )
    parser.add_argument(
        "--fit",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time model.fit on NumPy arrays for the Keras models",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="tiny size, tensorflow blocked: report what imports it",
    )
    parser.add_argument(
        "--block-tensorflow", action="store_true", help=argparse.SUPPRESS
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse()
    sys.exit(check() if arguments.check else main(arguments))

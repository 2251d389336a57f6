"""SAM / plain step-time ratio of keras-hub classifiers on each Keras backend.

A small BERT text classifier (2 layers, hidden 128, sequence 64) and a small
ViT image classifier (32 x 32 images, patches of 4, 2 layers, hidden 64),
random-init from their constructors (no downloads), with the tasks' default
compile (Adam; XLA / jit where Keras picks it). Each trains as the plain task
and as `keras_sam.sam(task)` on the same preprocessed batches, with one
`fit(..., shuffle=False)` of `--steps` steps as the timed call:

- warm-up: that same call `--warmup` times per contender before timing (a
  different first call, e.g. `shuffle=True`, makes TensorFlow retrace);
- the contenders alternate within each round (ABBA order), so load on the
  machine hits both alike; the median over rounds is the figure;
- wall and process CPU time per step, both reported; the step's traces
  (TensorFlow, JAX) during the timed rounds are counted (must be 0);
- the load average is printed before and after each backend; `--cpus N` pins
  each child to N CPUs (on a shared machine, `--cpus 1` makes CPU time the
  compute time, without other processes' share or idle threads spinning).

One child process per backend (Keras picks its backend at import).

    python benchmarks/keras_hub_step_time.py [--steps 20] [--rounds 5] \
        [--warmup 2] [--cpus N] [--backends tensorflow,jax,torch] \
        [--models bert,vit]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

from _timing import seconds_per_step

BATCH = 16


def _bert(keras_hub):
    words = [f"w{i}" for i in range(200)]
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer, sequence_length=64
    )
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(vocabulary),
        num_layers=2,
        num_heads=2,
        hidden_dim=128,
        intermediate_dim=512,
        max_sequence_length=64,
    )
    task = keras_hub.models.BertTextClassifier(
        backbone, num_classes=2, preprocessor=preprocessor
    )

    def data(rng, n):
        texts = [" ".join(rng.choice(words, 48)) for _ in range(n)]
        return texts, rng.integers(0, 2, n)

    return task, data


def _vit(keras_hub):
    converter = keras_hub.layers.ViTImageConverter(image_size=(32, 32), scale=1 / 255)
    preprocessor = keras_hub.models.ViTImageClassifierPreprocessor(converter)
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(32, 32, 3),
        patch_size=4,
        num_layers=2,
        num_heads=2,
        hidden_dim=64,
        mlp_dim=128,
    )
    task = keras_hub.models.ViTImageClassifier(
        backbone, num_classes=10, preprocessor=preprocessor
    )

    def data(rng, n):
        images = rng.integers(0, 256, (n, 32, 32, 3)).astype("float32")
        return images, rng.integers(0, 10, n)

    return task, data


BUILDERS = {"bert": _bert, "vit": _vit}


def _counted(model):
    """Counts calls of `model.train_step`: in a traced step (TensorFlow,
    JAX) each call is a trace; PyTorch calls it once a step."""
    calls = [0]
    step = model.train_step

    def train_step(*args):
        calls[0] += 1
        return step(*args)

    model.train_step = train_step
    return calls


def _child(backend, models, steps, rounds, warmup):
    os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import keras_hub
    import numpy as np

    import keras_sam

    results = {}
    for model_name in models:
        rng = np.random.default_rng(0)
        runs, calls, jit = {}, {}, {}
        for name in ("plain", "sam"):
            keras.utils.set_random_seed(0)
            task, data = BUILDERS[model_name](keras_hub)
            x, y = data(rng, BATCH * steps)
            # The step, not the tokenizer: both train on preprocessed batches.
            x = keras.tree.map_structure(
                keras.ops.convert_to_numpy, task.preprocessor(x)
            )
            task.preprocessor = None
            model = keras_sam.sam(task, rho=0.05) if name == "sam" else task
            calls[name] = _counted(model)
            runs[name] = lambda m=model, x=x, y=y: m.fit(
                x, y, batch_size=BATCH, shuffle=False, verbose=0
            )
            jit[name] = str(model.jit_compile)
        # Warm-up after both are built: building a keras-hub task rewrites
        # the `PipelineModel` class, and TensorFlow then retraces the
        # training loop of a task warmed up before (its first timed fit was
        # 5-15x slower).
        for i in range(warmup):
            for name in _order(i):
                runs[name]()
        after_warmup = {name: count[0] for name, count in calls.items()}
        samples = {name: [] for name in runs}
        for i in range(rounds):
            for name in _order(i):
                samples[name].append(seconds_per_step(runs[name], steps))
        traces = {
            name: 0 if backend == "torch" else count[0] - after_warmup[name]
            for name, count in calls.items()
        }
        results[model_name] = {
            "samples": samples,
            "jit": jit,
            "traces": traces,
        }
    print(json.dumps(results))


def _order(i):
    return ("plain", "sam") if i % 2 == 0 else ("sam", "plain")


def _ratio_line(backend, model_name, result):
    wall, cpu = {}, {}
    for name, values in result["samples"].items():
        wall[name] = statistics.median(w for w, _ in values)
        cpu[name] = statistics.median(c for _, c in values)
    jit = "/".join(result["jit"][name] for name in ("plain", "sam"))
    traces = sum(result["traces"].values())
    return (
        f"{backend:<11} {jit:<11} {model_name:<5} "
        f"{wall['plain'] * 1e3:8.1f} {wall['sam'] * 1e3:8.1f} "
        f"{wall['sam'] / wall['plain']:5.2f}x "
        f"{cpu['plain'] * 1e3:8.1f} {cpu['sam'] * 1e3:8.1f} "
        f"{cpu['sam'] / cpu['plain']:5.2f}x {traces:6d}"
    )


def _load():
    return "/".join(f"{value:.1f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--cpus", type=int, default=0, help="pin each child to N CPUs (0: all)"
    )
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--models", default="bert,vit")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    models = args.models.split(",")
    if args.child:
        if args.cpus:
            os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cpus])
        _child(args.child, models, args.steps, args.rounds, args.warmup)
        return
    cpus = args.cpus or len(os.sched_getaffinity(0))
    print(
        f"{platform.node()} ({os.cpu_count()} CPUs, children on {cpus}), "
        f"batch {BATCH}, fit of {args.steps} steps x {args.rounds} rounds "
        f"(ABBA), {args.warmup} warm-up fits each; median per step; "
        f"load average (1/5/15 min) before: {_load()}"
    )
    print(
        f"{'backend':<11} {'jit p/sam':<11} {'model':<5} {'wall ms':>8} "
        f"{'SAM':>8} {'ratio':>6} {'CPU ms':>8} {'SAM':>8} {'ratio':>6} traces"
    )
    for backend in args.backends.split(","):
        command = [sys.executable, __file__, "--child", backend]
        command += ["--steps", str(args.steps), "--rounds", str(args.rounds)]
        command += ["--warmup", str(args.warmup), "--cpus", str(args.cpus)]
        command += ["--models", args.models]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            print(f"{backend}: failed\n{done.stderr[-2000:]}")
            continue
        results = json.loads(done.stdout.strip().splitlines()[-1])
        for model_name, result in results.items():
            print(_ratio_line(backend, model_name, result), flush=True)
        print(f"  load average after {backend}: {_load()}", flush=True)


if __name__ == "__main__":
    main()

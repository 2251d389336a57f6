"""SAM / plain step-time ratio of keras-hub classifiers on each Keras backend.

A small BERT text classifier (2 layers, hidden 128, sequence 64) and a small
ViT image classifier (32 x 32 images, patches of 4, 2 layers, hidden 64),
random-init from their constructors (no downloads), with the tasks' default
compile (Adam; XLA / jit where Keras picks it: TensorFlow and JAX; PyTorch
eager). Each trains as the plain task and as `keras_sam.sam(task)`, side by
side: the contenders alternate round after round on the same preprocessed
batches, so load on the machine hits both alike; the median per-step wall
time is reported, with the load average before and after. One child process
per backend (Keras picks its backend at import).

    python benchmarks/keras_hub_step_time.py [--steps 10] [--rounds 5] \
        [--backends tensorflow,jax,torch] [--models bert,vit]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

from _timing import interleave

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


def _child(backend: str, models: list[str], steps: int, rounds: int) -> None:
    os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import keras_hub
    import numpy as np

    import keras_sam

    results = {}
    for model_name in models:
        rng = np.random.default_rng(0)
        contenders = {}
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
            model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)  # warm-up
            contenders[name] = (model, x, y)
        runs = {
            name: (
                lambda m=model, x=x, y=y: m.fit(
                    x, y, batch_size=BATCH, shuffle=False, verbose=0
                )
            )
            for name, (model, x, y) in contenders.items()
        }
        samples = interleave(runs, steps, rounds)
        results[model_name] = {
            name: [wall for wall, _ in values] for name, values in samples.items()
        }
        results[model_name]["jit"] = str(contenders["plain"][0].jit_compile)
    print(json.dumps(results))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--models", default="bert,vit")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    models = args.models.split(",")
    if args.child:
        _child(args.child, models, args.steps, args.rounds)
        return
    print(
        f"{platform.node()} ({os.cpu_count()} CPUs), batch {BATCH}, "
        f"{args.steps} steps x {args.rounds} rounds, median wall time per step; "
        f"load average before: {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'backend':<11} {'jit':<6} {'model':<5} {'plain ms':>9} {'sam ms':>8} ratio"
    )
    for backend in args.backends.split(","):
        command = [sys.executable, __file__, "--child", backend]
        command += ["--steps", str(args.steps), "--rounds", str(args.rounds)]
        command += ["--models", args.models]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            print(f"{backend}: failed\n{done.stderr[-2000:]}")
            continue
        results = json.loads(done.stdout.strip().splitlines()[-1])
        for model_name, times in results.items():
            plain = statistics.median(times["plain"])
            sam = statistics.median(times["sam"])
            print(
                f"{backend:<11} {times['jit']:<6} {model_name:<5} "
                f"{plain * 1e3:9.1f} {sam * 1e3:8.1f} {sam / plain:5.2f}x",
                flush=True,
            )
        print(f"  load average after {backend}: {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()

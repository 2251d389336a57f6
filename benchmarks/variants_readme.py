"""The README's Usage example as a variant study: test accuracy of SGD, SAM
and each variant at its defaults over a rho grid and seeds (the records of
docs/sweep-variants-readme/).

The example: 784-512-10 ReLU MLP, 2,000 training examples x ~ N(0, I) with
label = argmax of the first ten inputs (10,000 test examples of the same
law), SGD 0.1 with momentum 0.9, batch 128, 10 epochs. Seed s draws the data
and the initial weights; every method of a seed starts from the same weights
and sees the same batches. Finished (method, rho, seed) runs in OUT are
skipped.

    KERAS_BACKEND=jax python benchmarks/variants_readme.py \\
        --out docs/sweep-variants-readme [--rhos 0.02,0.05,0.1] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import keras
import numpy as np

import keras_sam
from keras_sam import variants

EPOCHS, BATCH, TRAIN, TEST = 10, 128, 2000, 10_000
METHODS = {
    "sam": None,
    "looksam": "looksam",
    "looksam_paper": variants.LookSAM(alpha=0.7),
    "lazysam": "lazysam",
    "latesam": "latesam",
    "msam": "msam",
    "aesam": "aesam",
    "gsam": "gsam",
    "wsam": "wsam",
    # The form before 2026-12-07 (decoupled=False), the records' old "wsam".
    "wsam_coupled": variants.WSAM(decoupled=False),
    "fsam": "fsam",
}


def data(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((TRAIN + TEST, 784)).astype("float32")
    y = np.argmax(x[:, :10], axis=1)
    return (x[:TRAIN], y[:TRAIN]), (x[TRAIN:], y[TRAIN:])


def run(method, rho, seed):
    (x, y), test = data(seed)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((784,)),
            keras.layers.Dense(512, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    if method != "sgd":
        variant = METHODS[method]
        if variant == "latesam":
            steps = EPOCHS * -(-TRAIN // BATCH)
            variant = variants.LatePhaseSAM(total_steps=steps)
        model = keras_sam.sam(model, rho=rho, variant=variant)
    model.compile(
        keras.optimizers.SGD(0.1, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    history = model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, verbose=0).history
    seconds = time.perf_counter() - start
    test_loss, test_accuracy = model.evaluate(*test, batch_size=1000, verbose=0)
    return {
        "method": method,
        "rho": rho,
        "seed": seed,
        "train_loss": history["loss"],
        "train_accuracy": history["accuracy"][-1],
        "test_loss": test_loss,
        "test_accuracy": test_accuracy,
        "train_seconds": seconds,
        "gradient_passes": getattr(model, "gradient_passes", None),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--rhos", default="0.02,0.05,0.1")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "results.jsonl")
    done = set()
    if os.path.exists(path):
        with open(path) as f:
            done = {(r["method"], r["rho"], r["seed"]) for r in map(json.loads, f)}
    plan = []
    for seed in map(int, args.seeds.split(",")):
        plan.append(("sgd", None, seed))
        for method in args.methods.split(","):
            plan += [(method, float(r), seed) for r in args.rhos.split(",")]
    for key in plan:
        if key in done:
            continue
        record = run(*key)
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
        print(
            f"{key}: test accuracy {record['test_accuracy']:.4f}, final train "
            f"loss {record['train_loss'][-1]:.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()

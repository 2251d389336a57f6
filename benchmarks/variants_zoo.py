"""Do the variants' default options hurt? Each model of a small zoo trained
from the same weights and batches by the base optimizer, plain SAM and every
variant at its defaults (rho 0.05, the library's default), with momentum SGD
and with Adam; prints the final training loss and accuracy and each method's
loss over the worse of base and SAM (> 2 with accuracy lower: "hurts").

    KERAS_BACKEND=jax python benchmarks/variants_zoo.py [--epochs 8]
        [--models mlp,conv_bn,attention,lstm,embedding] [--out zoo.json]

The models: the README's Usage MLP (784-512-10 on its synthetic data: x ~
N(0, I), label = argmax of the first ten inputs), Conv + batch norm,
self-attention + LayerNorm, Embedding + LSTM, Embedding + pooling; each on
generated data with a learnable rule (the strongest of a few input
features or token counts), so that a method that stalls shows it.
"""

from __future__ import annotations

import argparse
import json
import time

import keras
import numpy as np

import keras_sam
from keras_sam import variants

RHO = 0.05
BATCH = 128


def readme_mlp(rng, n=2000):
    x = rng.standard_normal((n, 784)).astype("float32")
    model = keras.Sequential(
        [
            keras.Input((784,)),
            keras.layers.Dense(512, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    return model, x, np.argmax(x[:, :10], axis=1)


def conv_bn(rng, n=2048):
    x = rng.standard_normal((n, 8, 8, 1)).astype("float32")
    quadrants = x.reshape(n, 2, 4, 2, 4).mean(axis=(2, 4)).reshape(n, 4)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Activation("relu")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    outputs = keras.layers.Dense(4)(h)
    return keras.Model(inputs, outputs), x, np.argmax(quadrants, axis=1)


def attention(rng, n=2048):
    x = rng.standard_normal((n, 8, 8)).astype("float32")
    inputs = keras.Input((8, 8))
    h = keras.layers.MultiHeadAttention(2, 8)(inputs, inputs)
    h = keras.layers.LayerNormalization()(h + inputs)
    h = keras.layers.EinsumDense("btd,dk->bk", (16,), activation="relu")(h)
    outputs = keras.layers.Dense(4)(h)
    return keras.Model(inputs, outputs), x, np.argmax(x.mean(axis=1)[:, :4], axis=1)


def _tokens(rng, n, vocabulary=32, length=12):
    """Token sequences, labelled by which of tokens 0-3 occurs most often."""
    x = rng.integers(0, vocabulary, size=(n, length)).astype("int32")
    counts = np.stack([np.bincount(r, minlength=vocabulary) for r in x])
    return x, np.argmax(counts[:, :4] + 1e-3 * rng.random((n, 4)), axis=1)


def lstm(rng, n=2048):
    x, y = _tokens(rng, n)
    inputs = keras.Input((12,), dtype="int32")
    h = keras.layers.Embedding(32, 16)(inputs)
    h = keras.layers.LSTM(32)(h)
    outputs = keras.layers.Dense(4)(h)
    return keras.Model(inputs, outputs), x, y


def embedding(rng, n=2048):
    x, y = _tokens(rng, n)
    inputs = keras.Input((12,), dtype="int32")
    h = keras.layers.Embedding(32, 16)(inputs)
    h = keras.layers.GlobalAveragePooling1D()(h)
    h = keras.layers.Dense(32, activation="relu")(h)
    outputs = keras.layers.Dense(4)(h)
    return keras.Model(inputs, outputs), x, y


MODELS = {
    "mlp": readme_mlp,
    "conv_bn": conv_bn,
    "attention": attention,
    "lstm": lstm,
    "embedding": embedding,
}
OPTIMIZERS = {
    "sgd_momentum": lambda: keras.optimizers.SGD(0.1, momentum=0.9),
    "adam": lambda: keras.optimizers.Adam(1e-3),
}
#: method -> variant (None: plain SAM); "base" is the optimizer alone.
METHODS = {
    "base": None,
    "sam": None,
    "looksam": "looksam",
    "looksam_paper": variants.LookSAM(alpha=0.7),
    "lazysam": "lazysam",
    "gsam": "gsam",
    "wsam": "wsam",
    "wsam_coupled": variants.WSAM(decoupled=False),
    "fsam": "fsam",
    "rwp": "rwp",
    "samon": "samon",
    "aesam": "aesam",
    "latesam": "latesam",
    "msam": "msam",
}


def train(model_name, optimizer_name, method, epochs, seed=0):
    keras.utils.set_random_seed(seed)
    model, x, y = MODELS[model_name](np.random.default_rng(seed))
    if method != "base":
        variant = METHODS[method]
        if variant == "latesam":
            steps = epochs * -(-len(x) // BATCH)
            variant = variants.LatePhaseSAM(total_steps=steps)
        model = keras_sam.sam(model, rho=RHO, variant=variant)
    model.compile(
        OPTIMIZERS[optimizer_name](),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    history = model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0).history
    return {
        "model": model_name,
        "optimizer": optimizer_name,
        "method": method,
        "loss": history["loss"],
        "accuracy": history["accuracy"],
        "seconds": time.perf_counter() - start,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    records = []
    for model_name in args.models.split(","):
        for optimizer_name in args.optimizers.split(","):
            rows = {}
            for method in args.methods.split(","):
                try:
                    rows[method] = train(
                        model_name, optimizer_name, method, args.epochs
                    )
                except ValueError as error:  # e.g. SAM-ON without norm layers
                    print(f"{model_name} {optimizer_name} {method}: {error}")
                    continue
                records.append(rows[method])
            worst = max(rows["base"]["loss"][-1], rows["sam"]["loss"][-1])
            floor = min(rows["base"]["accuracy"][-1], rows["sam"]["accuracy"][-1])
            for method, row in rows.items():
                ratio = row["loss"][-1] / worst
                hurts = ratio > 2 and row["accuracy"][-1] < floor
                row["loss_over_worse"] = ratio
                row["hurts"] = bool(hurts)
                print(
                    f"{model_name:9s} {optimizer_name:12s} {method:14s} "
                    f"loss {row['loss'][-1]:.4f} acc {row['accuracy'][-1]:.3f} "
                    f"x{ratio:6.2f}{'  HURTS' if hurts else ''}",
                    flush=True,
                )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(records, f, indent=1)


if __name__ == "__main__":
    main()

"""The examples on which a variant's default options must train as SGD and SAM
do: the README's Usage example (784-512-10 ReLU MLP, 2,000 examples
x ~ N(0, I), label = argmax of the first ten inputs) and a self-attention
block, both with momentum SGD 0.1 and rho 0.05."""

import functools

import keras
import numpy as np

import keras_sam


def readme_example():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 784)).astype("float32")
    model = keras.Sequential(
        [
            keras.Input((784,)),
            keras.layers.Dense(512, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    return model, x, np.argmax(x[:, :10], axis=1)


def attention_example():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 8, 8)).astype("float32")
    inputs = keras.Input((8, 8))
    h = keras.layers.MultiHeadAttention(2, 8)(inputs, inputs)
    h = keras.layers.LayerNormalization()(h + inputs)
    h = keras.layers.EinsumDense("btd,dk->bk", (16,), activation="relu")(h)
    outputs = keras.layers.Dense(4)(h)
    return keras.Model(inputs, outputs), x, np.argmax(x.mean(axis=1)[:, :4], axis=1)


def final_loss(example, variant, epochs, sam=True):
    keras.utils.set_random_seed(0)
    model, x, y = example()
    if sam:
        model = keras_sam.sam(model, rho=0.05, variant=variant)
    model.compile(
        keras.optimizers.SGD(0.1, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = model.fit(x, y, batch_size=128, epochs=epochs, verbose=0)
    return history.history["loss"][-1]


@functools.cache
def reference_loss(example, epochs):
    """The larger final loss of SGD and of SAM on `example` (computed once a
    process: test_looksam_defaults and test_wsam_defaults share the README's)."""
    return max(
        final_loss(example, None, epochs, sam=False), final_loss(example, None, epochs)
    )

"""LookSAM's default options do not stall training where Liu et al.'s
alpha = 0.7 did: the README's Usage example (784-512-10 ReLU MLP, 2,000
examples x ~ N(0, I), label = argmax of the first ten inputs, SGD 0.1 with
momentum 0.9, batch 128, rho 0.05), and self-attention with momentum SGD
(where alpha = 0.7 diverged). Each check is run on the old default too, which
must fail it (so the check can fail)."""

import keras
import numpy as np
import pytest

import keras_sam
from keras_sam import variants

pytestmark = pytest.mark.backend_independent

OLD_DEFAULT = variants.LookSAM(every=5, alpha=0.7)


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


@pytest.mark.parametrize(
    "example, epochs",
    [(readme_example, 6), (attention_example, 8)],
    ids=["readme", "attention"],
)
def test_default_looksam_trains_as_sgd_and_sam_do(example, epochs):
    reference = max(
        final_loss(example, None, epochs, sam=False), final_loss(example, None, epochs)
    )

    def trains(variant):
        return final_loss(example, variant, epochs) <= 2 * reference + 0.01

    assert trains(variants.LookSAM())
    assert trains(variants.get("looksam"))
    assert not trains(OLD_DEFAULT)

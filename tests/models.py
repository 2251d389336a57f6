"""Models and weight helpers shared by the test modules (no test module
imports another: `tests/test_layout.py` checks it).

`mlp` is the 5-h-1 tanh MLP of tests/reference.py's NumPy SAM; `ZOO` holds
small models of the layer types Keras treats specially (attention, LSTM/GRU +
Embedding, Conv + BN multi-input/-output, `add_loss`)."""

import keras
import numpy as np

import keras_sam
from tests import reference

#: The SGD learning rate of the NumPy references.
LR = 0.1


def mlp(rho=0.05, hidden=4, l2=0.0, seed=0, sam=True, **options):
    """The 5-h-1 tanh MLP of tests/reference.py, as a SAMModel or keras.Model."""
    keras.utils.set_random_seed(seed)
    init = keras.initializers.RandomNormal(stddev=0.5, seed=seed)
    inputs = keras.Input((5,))
    regularizer = keras.regularizers.L2(l2) if l2 else None
    hidden_out = keras.layers.Dense(
        hidden,
        activation="tanh",
        kernel_initializer=init,
        bias_initializer=init,
        kernel_regularizer=regularizer,
    )(inputs)
    outputs = keras.layers.Dense(1, kernel_initializer=init, bias_initializer=init)(
        hidden_out
    )
    if sam:
        return keras_sam.SAMModel(inputs, outputs, rho=rho, **options)
    return keras.Model(inputs, outputs)


def weights_of(model):
    return [v.numpy().astype(np.float64) for v in model.trainable_variables]


def assert_weights_close(a, b, atol=1e-6):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=atol, rtol=0)


def micro_batch_reference(params, x, y, batches, m, rho=0.2):
    """Weights after SGD steps on `batches` (start, stop) with NumPy SAM per
    micro-batch of `m` (the last one smaller), each gradient weighted by its
    size; and the last batch's size-weighted clean and perturbed losses."""
    for start, stop in batches:
        pieces = [
            (min(m, stop - k), reference.sam_gradient(
                "sam", params, x[k : min(k + m, stop)], y[k : min(k + m, stop)], rho
            ))
            for k in range(start, stop, m)
        ]  # fmt: skip
        fractions = [size / (stop - start) for size, _ in pieces]
        grads = [
            sum(f * p[2][i] for f, (_, p) in zip(fractions, pieces)) for i in range(4)
        ]
        params = [p - LR * g for p, g in zip(params, grads)]
        losses = [sum(f * p[j] for f, (_, p) in zip(fractions, pieces)) for j in (0, 1)]
    return params, losses


# ---- the zoo: (model, data, loss) builders ---------------------------------


def _rng():
    return np.random.default_rng(7)


def attention():
    rng = _rng()
    inputs = keras.Input((6, 4))
    h = keras.layers.MultiHeadAttention(2, 3)(inputs, inputs)
    h = keras.layers.LayerNormalization()(h + inputs)
    outputs = keras.layers.EinsumDense("btd,dk->bk", (1,))(h)
    data = rng.normal(size=(16, 6, 4)), rng.normal(size=(16, 1))
    return keras.Model(inputs, outputs), data, "mse"


def recurrent():
    rng = _rng()
    inputs = keras.Input((5,), dtype="int32")
    h = keras.layers.Embedding(11, 4)(inputs)
    h = keras.layers.LSTM(3, return_sequences=True)(h)
    h = keras.layers.GRU(3)(h)
    outputs = keras.layers.Dense(1)(h)
    data = rng.integers(0, 11, size=(16, 5)), rng.integers(0, 2, size=(16,))
    # BCE with (n,) labels against (n, 1) logits.
    return keras.Model(inputs, outputs), data, keras.losses.BinaryCrossentropy(True)


def conv_multi_io():
    rng = _rng()
    image = keras.Input((6, 6, 2), name="image")
    extra = keras.Input((3,), name="extra")
    h = keras.layers.Conv2D(4, 3)(image)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.Concatenate()([h, extra])
    first = keras.layers.Dense(1, name="first")(h)
    second = keras.layers.Dense(2, name="second")(h)
    x = {"image": rng.normal(size=(16, 6, 6, 2)), "extra": rng.normal(size=(16, 3))}
    y = [rng.normal(size=(16, 1)), rng.normal(size=(16, 2))]
    return keras.Model([image, extra], [first, second]), (x, y), ["mse", "mae"]


class ActivityPenalty(keras.layers.Layer):
    def call(self, inputs):
        self.add_loss(1e-2 * keras.ops.mean(keras.ops.square(inputs)))
        return inputs


def add_loss():
    rng = _rng()
    inputs = keras.Input((5,))
    h = ActivityPenalty()(keras.layers.Dense(6, activation="tanh")(inputs))
    outputs = keras.layers.Dense(1)(h)
    data = rng.normal(size=(16, 5)), rng.normal(size=(16, 1))
    return keras.Model(inputs, outputs), data, "mse"


ZOO = {
    "attention": attention,
    "recurrent": recurrent,
    "conv_multi_io": conv_multi_io,
    "add_loss": add_loss,
}


def cast_float32(data):
    """`data` with float64 arrays cast to float32."""
    return keras.tree.map_structure(
        lambda a: a.astype("float32") if a.dtype == np.float64 else a, data
    )

"""The curvature tests' zoo: tiny Keras models of the architectures people
use, each with its examples and dense per-example Hessians of Keras' own
`model.compute_loss` (`tests.hessian.references`)."""

import functools

import keras
import numpy as np

from keras_sam._compat import exact_tensorflow_moments
from tests.hessian.references import BACKEND, per_example_hessians

N = 4  # examples per model


def dense_hessians(model, x, y):
    """(N, P, P) per-example Hessians of Keras' compiled loss (+ model.losses)."""
    return per_example_hessians(model, x, y)


def rel_err(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


def compiled(model, loss, **kwargs):
    model.compile(keras.optimizers.SGD(0.1), loss, **kwargs)
    return model


def bce_vector_labels(rng):
    # keras-io IMDB / structured data: sigmoid output (n, 1), labels (n,).
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(4, activation="tanh"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    x = rng.normal(size=(N, 3)).astype("float32")
    y = rng.integers(0, 2, size=N).astype("float32")
    return compiled(model, "binary_crossentropy"), x, y


def multi_output_dict(rng):
    inputs = keras.Input((3,), name="x")
    h = keras.layers.Dense(4, activation="tanh")(inputs)
    outputs = {
        "reg": keras.layers.Dense(2, name="reg")(h),
        "cls": keras.layers.Dense(3, name="cls")(h),
    }
    model = keras.Model(inputs, outputs)
    loss = {
        "reg": "mse",
        "cls": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    }
    model = compiled(model, loss, loss_weights={"reg": 0.5, "cls": 2.0})
    x = rng.normal(size=(N, 3)).astype("float32")
    y = {
        "reg": rng.normal(size=(N, 2)).astype("float32"),
        "cls": rng.integers(0, 3, size=N),
    }
    return model, x, y


def attention(rng):
    # MultiHeadAttention (EinsumDense inside): pfor gets Keras's einsum
    # rewrite wrong (`_compat.vectorizable_tensorflow_einsum`).
    inputs = keras.Input((3, 4))
    h = keras.layers.MultiHeadAttention(num_heads=1, key_dim=2)(inputs, inputs)
    h = keras.layers.GlobalAveragePooling1D()(h)
    model = keras.Model(inputs, keras.layers.Dense(1)(h))
    x = rng.normal(size=(N, 3, 4)).astype("float32")
    y = rng.normal(size=(N, 1)).astype("float32")
    return compiled(model, "mse"), x, y


def transformer_block(rng):
    # A transformer encoder block: attention, residual, LayerNormalization
    # (whose TensorFlow moments need `_compat.exact_tensorflow_moments`).
    inputs = keras.Input((3, 4))
    h = keras.layers.MultiHeadAttention(num_heads=1, key_dim=2)(inputs, inputs)
    h = keras.layers.LayerNormalization()(keras.layers.Add()([inputs, h]))
    h = keras.layers.GlobalAveragePooling1D()(h)
    model = keras.Model(inputs, keras.layers.Dense(2)(h))
    x = rng.normal(size=(N, 3, 4)).astype("float32")
    y = rng.integers(0, 2, size=N)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return compiled(model, loss), x, y


def recurrent(rng):
    # GRU runs on the same keras RNN while-loop; its second-order graph takes
    # as long to trace, so one recurrent layer stands for both.
    model = keras.Sequential(
        [keras.Input((2, 2)), keras.layers.LSTM(2), keras.layers.Dense(1)]
    )
    x = rng.normal(size=(N, 2, 2)).astype("float32")
    y = rng.normal(size=(N, 1)).astype("float32")
    return compiled(model, "mse"), x, y


def embedding(rng):
    model = keras.Sequential(
        [
            keras.Input((3,), dtype="int32"),
            keras.layers.Embedding(5, 2),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(2),
        ]
    )
    x = rng.integers(0, 5, size=(N, 3)).astype("int32")
    y = rng.integers(0, 2, size=N)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return compiled(model, loss), x, y


def convolutions(rng):
    bn = keras.layers.BatchNormalization()
    model = keras.Sequential(
        [
            keras.Input((4, 4, 1)),
            keras.layers.Conv2D(2, 2, activation="tanh"),
            bn,
            keras.layers.DepthwiseConv2D(2, activation="tanh"),
            keras.layers.SeparableConv2D(2, 2),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ]
    )
    bn.moving_mean.assign([0.1, -0.2])
    bn.moving_variance.assign([0.5, 2.0])
    x = rng.normal(size=(N, 4, 4, 1)).astype("float32")
    y = rng.integers(0, 2, size=N)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return compiled(model, loss), x, y


def nested_with_penalties(rng):
    # A model inside a model; an L2 kernel penalty and an add_loss term,
    # measured with regularization=True.
    inner = keras.Sequential(
        [
            keras.Input((2,)),
            keras.layers.Dense(
                3, activation="tanh", kernel_regularizer=keras.regularizers.L2(0.1)
            ),
            keras.layers.ActivityRegularization(l2=0.2),
        ]
    )
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inner(inputs)))
    x = rng.normal(size=(N, 2)).astype("float32")
    y = rng.normal(size=(N,)).astype("float32")  # (n,) against (n, 1)
    return compiled(model, "mse"), x, y


ZOO = {
    "bce_vector_labels": bce_vector_labels,
    "multi_output_dict": multi_output_dict,
    "attention": attention,
    "transformer_block": transformer_block,
    "recurrent": recurrent,
    "embedding": embedding,
    "convolutions": convolutions,
    "nested_with_penalties": nested_with_penalties,
}
# Members whose per-example products loop: TensorFlow's pfor is refused or
# fails the check on them (recurrent, Conv + DepthwiseConv); JAX's vmap
# takes every member; torch.func.vmap refuses DepthwiseConv2D's clone
# (after a convolution) and the in-place add of Keras's L1L2 regularizer
# (ActivityRegularization).
NOT_VECTORIZED = {
    "tensorflow": {"recurrent", "convolutions"},
    "jax": set(),
    "torch": {"convolutions", "nested_with_penalties"},
}[BACKEND]


# On JAX every looped path (and the random Lanczos start) is one more
# compilation: checked on one member (and in test_operators).
LOOPED_CHECKS = {"embedding"}
#: Members whose weights all sit in factored layers (`LayerFactors`): their
#: s_2 step comes from the layer factors.
FACTORED = {
    "attention",
    "bce_vector_labels",
    "embedding",
    "multi_output_dict",
    "transformer_block",
}


@functools.cache
def build(name):
    keras.utils.set_random_seed(0)
    model, x, y = ZOO[name](np.random.default_rng(0))
    # TensorFlow's nested tapes (its reference) get LayerNormalization's
    # second derivative wrong: there the reference differentiates the plain
    # variance too (`_compat.exact_tensorflow_moments`), and
    # `test_hvp_matches_finite_differences` checks both without any second
    # derivative.
    with exact_tensorflow_moments():
        return name, model, x, y, dense_hessians(model, x, y)


def dense_gap(hessians):
    """Dense ``M_2 - H^2`` of per-example Hessians (N, P, P)."""
    h = hessians.mean(axis=0)
    return np.mean([hi @ hi for hi in hessians], axis=0) - h @ h


def per_token_model():
    """(model, x, y, mask): a causal-LM-shaped model, per-token logits (N,
    seq, vocab) against (N, seq) labels, and a (N, seq) padding mask (with
    other values) as sample weights."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(6)
    model = keras.Sequential(
        [
            keras.Input((3,), dtype="int32"),
            keras.layers.Embedding(5, 3),
            keras.layers.Dense(3, activation="tanh"),
            keras.layers.Dense(4),
        ]
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model = compiled(model, loss)
    x = rng.integers(0, 5, size=(N, 3)).astype("int32")
    y = rng.integers(0, 4, size=(N, 3))
    mask = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0.5, 2, 0]], "float32")
    return model, x, y, mask

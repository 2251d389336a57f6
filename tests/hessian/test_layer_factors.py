"""The s_2 step from per-layer Dense factors (`_layer_factors.LayerFactors`,
`Functions._structured_gap` on every backend) against dense per-example
Hessians: which models qualify, that the first chunk's check takes it and
that it stays exact (two chunks, padding, per-example and per-token weights,
several outputs with loss weights, a layer called twice), and that models
it cannot take (model.losses, other layers, mixed precision, a wrong step)
keep the fused step and stay exact."""

import keras
import numpy as np
import pytest

from keras_sam.hessian import CurvatureOperator, _layer_factors
from keras_sam.hessian._layer_factors import LayerFactors
from tests.hessian.references import per_example_hessians
from tests.hessian.zoo import ZOO, N, build, compiled, dense_gap, rel_err


def _operator(model, data, **options):
    op = CurvatureOperator(model, data, chunk_size=3, **options)
    op._fn._structured = None  # the functions are cached per model
    return op


def _check(op, expected, vectors=3, seed=2):
    rng = np.random.default_rng(seed)
    for _ in range(vectors):
        v = rng.normal(size=op.dim)
        assert rel_err(op.moment_gap(v, 2), expected @ v) < 1e-4


@pytest.mark.parametrize("name", ["bce_vector_labels", "multi_output_dict"])
def test_structured_gap_equals_dense_on_dense_members(name):
    # Dense-only zoo members: (n,) labels against a sigmoid (n, 1); two
    # outputs with loss weights. Chunks of 3 and one of 1 (padded on JAX).
    _, model, x, y, hessians = build(name)
    op = _operator(model, (x, y))
    assert op._fn._factors is not None
    _check(op, dense_gap(hessians))
    assert op._fn._structured is True


def _token_model():
    # Dense layers on token axes, per-token logits; the first layer is
    # called twice (its calls' tokens side by side in the factors).
    keras.utils.set_random_seed(3)
    inputs = keras.Input((3, 2))
    shared = keras.layers.Dense(2, activation="tanh")
    h = shared(shared(inputs))
    outputs = keras.layers.Dense(4)(keras.layers.Dense(3, activation="tanh")(h))
    model = keras.Model(inputs, outputs)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(N, 3, 2)).astype("float32")
    y = rng.integers(0, 4, size=(N, 3))
    return compiled(model, loss), x, y


@pytest.fixture(
    params=[
        "gram",
        # The routes are backend-neutral (`keras.ops`; both against central
        # differences on every backend in test_moment_drive): this one
        # through the autodiff of the eager backend alone.
        pytest.param(
            "rows",
            marks=pytest.mark.skipif(
                keras.backend.backend() != "torch", reason="PyTorch only"
            ),
        ),
    ]
)
def route(request, monkeypatch):
    # Each layer's part of the contraction through per-example Grams of its
    # tokens, or through its rows formed (what many tokens take).
    gram = request.param == "gram"
    monkeypatch.setattr(LayerFactors, "by_gram", staticmethod(lambda *a: gram))
    return request.param


def test_structured_gap_with_per_token_weights_equals_dense(route):
    model, x, y = _token_model()
    mask = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0.5, 2, 0]], "float32")
    hessians = per_example_hessians(model, x, y, sample_weight=mask)
    op = _operator(model, (x, y, mask))
    assert op._fn.settings.per_token
    _check(op, dense_gap(hessians))
    assert op._fn._structured is True


def test_structured_gap_with_a_layer_called_twice_equals_dense():
    # Without weights (per-example path); the default route for these
    # layers (rows formed; both routes: the per-token test above).
    model, x, y = _token_model()
    op = _operator(model, (x, y))
    _check(op, dense_gap(per_example_hessians(model, x, y)))
    assert op._fn._structured is True


def test_structured_gap_with_per_example_weights_equals_dense():
    _, model, x, y, hessians = build("multi_output_dict")
    weights = np.array([1.0, 0.5, 2.0, 0.0], "float32")
    op = _operator(model, (x, y, weights))
    # sum_i w_i H_i (H_i v - H v) / n, H = sum_i w_i H_i / n.
    h = np.einsum("i,ipq->pq", weights, hessians) / N
    moment = np.einsum("i,ipq,iqr->pr", weights, hessians, hessians) / N
    _check(op, moment - h @ h)
    assert op._fn._structured is True


def test_wrong_structured_step_falls_back_and_stays_exact(monkeypatch):
    _, model, x, y, hessians = build("bce_vector_labels")
    op = _operator(model, (x, y))
    right = op._fn._structured_gap
    monkeypatch.setattr(op._fn, "_structured_gap", lambda *a: right(*a) * 1.01)
    try:
        _check(op, dense_gap(hessians))
        assert op._fn._structured is False
    finally:
        op._fn._structured = None


def test_structured_gap_equals_dense_on_an_embedding():
    # Token ids: Gram = token equality, a gathered center. (The transformer
    # block, MultiHeadAttention's EinsumDense layers as Dense after a
    # reshape and LayerNormalization's gamma and beta: test_zoo's s_2.)
    _, model, x, y, hessians = build("embedding")
    op = _operator(model, (x, y))
    assert op._fn._factors is not None
    _check(op, dense_gap(hessians), vectors=1)
    assert op._fn._structured is True


def test_a_wrong_embedding_term_fails(monkeypatch):
    # Mutation check: the center's gather off by 10% must break agreement.
    # (A model of its own shapes: a fresh trace of the patched term.)
    keras.utils.set_random_seed(5)
    model = keras.Sequential(
        [
            keras.Input((4,), dtype="int32"),
            keras.layers.Embedding(6, 2),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(2),
        ]
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    rng = np.random.default_rng(6)
    x = rng.integers(0, 6, size=(N, 4)).astype("int32")
    y = rng.integers(0, 2, size=N)
    model = compiled(model, loss)
    hessians = per_example_hessians(model, x, y)
    # The contraction's term and its written-out gradient (PyTorch's step)
    # alike.
    for name in ("term", "term_gradient"):
        right = getattr(_layer_factors._EmbeddingKind, name)

        def wrong(self, x_, d, rows, center, right=right):
            center = list(center)
            center[self.slots[0]] = center[self.slots[0]] * 0.9
            return right(self, x_, d, rows, center)

        monkeypatch.setattr(_layer_factors._EmbeddingKind, name, wrong)
    op = _operator(model, (x, y))
    _check(op, dense_gap(hessians), vectors=1)  # the check falls back
    assert op._fn._structured is False


def test_models_with_other_layers_keep_the_fused_step():
    # That their s_2 stays exact on the fused step: test_zoo (every member
    # against its dense per-example Hessians, the fused step asserted).
    model, x, y = ZOO["convolutions"](np.random.default_rng(0))
    assert CurvatureOperator(model, (x, y))._fn._factors is None


@pytest.mark.parametrize(
    "equation, factored",
    [
        ("abc,cde->abde", True),
        ("abcd,cde->abe", True),
        ("ab,bc->ac", True),
        ("abc,cd->abd", True),
        ("abc,cd->adb", False),  # output axes reordered
        ("abc,bcd->ad", True),  # two contracted axes
        ("abc,cbd->ad", False),  # contracted axes reordered
        ("abc,bd->acd", False),  # contracted axis not the input's last
        ("abc,dce->abde", False),  # kernel's contracted axis not first
        ("abc,ac->ab", False),  # a batched (kept and contracted) axis
        ("...b,bc->...c", False),  # ellipsis
    ],
)
def test_einsum_dense_equations(equation, factored):
    assert (_layer_factors.einsum_as_dense(equation) is not None) is factored


def test_other_einsum_dense_equations_keep_the_fused_step():
    inputs = keras.Input((3, 4))
    h = keras.layers.EinsumDense("abc,cd->adb", output_shape=(2, 3))(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(h)))
    variables = model.trainable_variables
    assert LayerFactors.find(model, variables, [None] * len(variables)) is None
    einsum = keras.layers.EinsumDense("abc,cd->abd", output_shape=(3, 2), bias_axes="d")
    model = keras.Model(
        inputs, keras.layers.Dense(1)(keras.layers.Flatten()(einsum(inputs)))
    )
    variables = model.trainable_variables
    assert LayerFactors.find(model, variables, [None] * len(variables)) is not None


def test_model_losses_keep_the_fused_step():
    # A kernel penalty and an activity term (regularization=True) do not
    # pass through the pre-activations' probes.
    _, model, x, y, hessians = build("nested_with_penalties")  # with the losses
    assert LayerFactors.find(model, model.trainable_variables, [None] * 4)
    op = _operator(model, (x, y), regularization=True)
    assert op._fn._factors is None
    _check(op, dense_gap(hessians), vectors=1)


def test_only_plain_float32_layers_qualify(mixed_precision):
    class Scaled(keras.layers.Dense):
        def call(self, inputs, training=None):
            return 2.0 * super().call(inputs)

    def model(*layers):
        return keras.Sequential([keras.Input((3,)), *layers])

    def find(m):
        variables = m.trainable_variables
        return LayerFactors.find(m, variables, [None] * len(variables))

    plain = model(keras.layers.Dense(2), keras.layers.Dense(1))
    factors = find(plain)
    assert [layer.name for layer in factors.layers] == [
        layer.name for layer in plain.layers
    ]
    assert [k.slots for k in factors.kinds] == [(0, 1), (2, 3)]
    assert find(model(keras.layers.Dense(2), Scaled(1))) is None
    assert LayerFactors.by_gram(1, 784, 512) and LayerFactors.by_gram(None, 2, 2)
    assert not LayerFactors.by_gram(512, 64, 64)
    assert find(model(keras.layers.Dense(2), keras.layers.LayerNormalization()))
    assert find(model(keras.layers.LayerNormalization(rms_scaling=True))) is None
    assert find(model(keras.layers.Dense(2), keras.layers.BatchNormalization())) is None
    frozen = model(keras.layers.Dense(2), keras.layers.Dense(1))
    frozen.layers[0].trainable = False
    assert [k.slots for k in find(frozen).kinds] == [
        (0, 1)
    ]  # frozen layers' weights: not variables
    masked = plain.trainable_variables
    assert LayerFactors.find(plain, masked, [object(), None, None, None]) is None
    mixed_precision("mixed_float16")
    assert find(model(keras.layers.Dense(2), keras.layers.Dense(1))) is None

"""One check per private Keras / TF internal in `keras_sam/_compat.py`.

Each test first looks the internal up where Keras has it today and fails with
a message naming the item when a Keras (or TF) release has moved it; then it
checks that the `_compat` accessor still does its job.
"""

import importlib
import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_sam import _compat


def _moved(item: str, detail: str) -> str:
    return (
        f"Keras {keras.version()} / TF {tf.__version__} moved the private "
        f"internal {item} that keras_sam/_compat.py relies on ({detail}). "
        "Update _compat.py and the Keras range in pyproject.toml."
    )


def _require_attribute(owner, name: str, item: str):
    if not hasattr(owner, name):
        pytest.fail(_moved(item, f"{type(owner).__name__} has no `{name}`"))
    return getattr(owner, name)


def _require_import(module: str, name: str):
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as error:
        pytest.fail(_moved(f"{module}.{name}", str(error)))


def _compiled_mlp():
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(1)]
    )
    model.compile("sgd", "mse", metrics=["mae"], loss_weights=[0.5])
    return model


def test_functional_class():
    functional = _require_import("keras.src.models.functional", "Functional")
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    assert type(model) is functional, _moved(
        "Functional", f"keras.Model(inputs, outputs) is a {type(model).__name__}"
    )
    assert _compat.Functional is functional


def test_loss_function_wrapper():
    wrapper = _require_import("keras.src.losses", "LossFunctionWrapper")
    assert issubclass(wrapper, keras.losses.Loss)
    loss = _compat.LossFunctionWrapper(keras.losses.get("mse"))
    value = loss(np.zeros((2, 1)), np.ones((2, 1)), sample_weight=np.array([1, 0]))
    assert float(value) == pytest.approx(0.5)


def test_compute_loss_dispatcher():
    model = _compiled_mlp()
    method = _require_attribute(model, "_compute_loss", "Model._compute_loss")
    assert {"x", "y", "y_pred", "sample_weight", "training"} <= set(
        inspect.signature(method).parameters
    ), _moved("Model._compute_loss", "its arguments changed")
    y = np.ones((2, 1), "float32")
    loss = _compat.compute_loss(model, None, y, np.zeros_like(y), None)
    assert float(loss) == pytest.approx(0.5)  # mse 1 times loss_weight 0.5


def test_loss_tracker():
    model = _compiled_mlp()
    tracker = _require_attribute(model, "_loss_tracker", "Model._loss_tracker")
    assert isinstance(tracker, keras.metrics.Mean), _moved(
        "Model._loss_tracker", f"it is a {type(tracker).__name__}, not a Mean"
    )
    assert _compat.loss_tracker(model) in model.metrics
    model.fit(np.ones((4, 3)), np.ones((4, 1)), verbose=0)
    assert float(_compat.loss_tracker(model).result()) > 0, _moved(
        "Model._loss_tracker", "fit no longer logs the loss from it"
    )


class _NoTraining(keras.layers.Layer):
    def call(self, x):
        return x


def test_call_has_training_arg():
    _require_attribute(
        keras.layers.Dropout(0.5), "_call_has_training_arg", "_call_has_training_arg"
    )
    assert _compat.call_has_training_arg(keras.layers.Dropout(0.5)) is True
    assert _compat.call_has_training_arg(_NoTraining()) is False


@pytest.mark.backends("tensorflow")  # the multi-worker build hook
def test_symbolic_build_hook_is_called_by_fit():
    calls = []

    class Recording(keras.Model):
        pass

    def hook(self, iterator=None, data_batch=None):
        calls.append((iterator is not None, data_batch is not None))
        return original(self, iterator=iterator, data_batch=data_batch)

    original = _require_attribute(
        keras.Model, _compat.SYMBOLIC_BUILD_HOOK, "Model._maybe_symbolic_build"
    )
    setattr(Recording, _compat.SYMBOLIC_BUILD_HOOK, hook)
    inputs = keras.Input((3,))
    model = Recording(inputs, keras.layers.Dense(1)(inputs))
    model.compile("sgd", "mse")
    model.fit(np.ones((4, 3)), np.ones((4, 1)), verbose=0)
    assert calls, _moved("Model._maybe_symbolic_build", "fit no longer calls it")


def test_build_hook_builds_the_compiled_model():
    # Keras's JAX trainer calls the hook from `fit`; on TensorFlow only
    # `_maybe_symbolic_build` under a strategy does, so call it directly.
    original = _require_attribute(
        keras.Model, _compat.BUILD_HOOK, "Trainer._symbolic_build"
    )
    parameters = inspect.signature(original).parameters
    assert {"iterator", "data_batch"} <= set(parameters), _moved(
        "Trainer._symbolic_build", f"its arguments are now {list(parameters)}"
    )
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile("sgd", "mse", metrics=["mae"])
    batch = (np.ones((4, 3), "float32"), np.ones((4, 1), "float32"), None)
    getattr(model, _compat.BUILD_HOOK)(data_batch=batch)
    assert model.optimizer.built, _moved(
        "Trainer._symbolic_build", "it no longer builds the optimizer"
    )


def test_flatten_layers_recurses_into_nested_models():
    inner = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    outer = keras.Sequential([keras.Input((3,)), inner, keras.layers.Dense(1)])
    _require_attribute(outer, "_flatten_layers", "Layer._flatten_layers")
    layers = _compat.flatten_layers(outer)
    assert layers[0] is outer
    assert inner.layers[0] in layers and outer.layers[-1] in layers


def test_own_trainable_variables_exclude_sublayers():
    inner = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    dense = inner.layers[0]
    _require_attribute(dense, "_trainable_variables", "Layer._trainable_variables")
    assert _compat.own_trainable_variables(dense) == [dense.kernel, dense.bias]
    assert _compat.own_trainable_variables(inner) == []


def test_unlocked_tracker_lets_a_built_layer_take_a_sublayer():
    dense = keras.layers.Dense(2)
    dense.build((None, 3))
    tracker = _require_attribute(dense, "_tracker", "Layer._tracker")
    for name in ("locked", "lock", "unlock"):
        _require_attribute(tracker, name, f"Layer._tracker.{name}")
    assert tracker.locked, _moved("Layer._tracker", "a built layer is not locked")
    with _compat.unlocked_tracker(dense):
        dense.extra = keras.layers.Dense(1)
    assert tracker.locked
    assert dense.extra in dense._layers


@pytest.mark.backends("tensorflow")  # tf.distribute
def test_in_multi_worker_mode():
    for strategy in (
        tf.distribute.get_strategy(),
        tf.distribute.OneDeviceStrategy("/cpu:0"),
    ):
        _require_attribute(
            strategy.extended, "_in_multi_worker_mode", "extended._in_multi_worker_mode"
        )
        assert _compat.in_multi_worker_mode(strategy) is False


def test_compile_arguments_are_the_objects_passed():
    optimizer = keras.optimizers.SGD(0.1)
    metric = keras.metrics.MeanAbsoluteError()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    assert _compat.compile_arguments(model) is None
    model.compile(optimizer, "mse", metrics=[metric], loss_weights=[0.5])
    config = _require_attribute(model, "_compile_config", "Model._compile_config")
    _require_attribute(config, "config", "Model._compile_config.config")
    arguments = _compat.compile_arguments(model)
    assert arguments["optimizer"] is optimizer
    assert arguments["metrics"][0] is metric
    assert arguments["loss"] == "mse" and arguments["loss_weights"] == [0.5]
    assert set(arguments) >= {
        "weighted_metrics",
        "run_eagerly",
        "steps_per_execution",
        "jit_compile",
    }


def test_optimizer_variable_index_finds_each_variables_slot():
    shapes = [(2,), (3, 1), (4,)]
    variables = [keras.Variable(np.zeros(shape)) for shape in shapes]
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build(variables)
    _require_attribute(
        optimizer, "_get_variable_index", "Optimizer._get_variable_index"
    )
    asked = [variables[2], variables[0], variables[1]]
    indices = [_compat.optimizer_variable_index(optimizer, v) for v in asked]
    assert indices == [2, 0, 1]
    for variable, index in zip(asked, indices, strict=True):
        assert tuple(optimizer.momentums[index].shape) == tuple(variable.shape)


@pytest.mark.parametrize(
    "make",
    [
        lambda: keras.optimizers.SGD(0.1, momentum=0.9),
        lambda: keras.optimizers.Adam(0.1),
        lambda: keras.optimizers.AdamW(0.1),
        lambda: keras.optimizers.Nadam(0.1),
        lambda: keras.optimizers.Adamax(0.1),
        lambda: keras.optimizers.Lion(0.1),
    ],
)
def test_momentum_slots_are_the_first_moments(make):
    """One buffer per variable, of its shape, and the one `update_step`
    writes with the gradient (not Adam's second moment)."""
    variables = [keras.Variable(np.zeros(shape, "float32")) for shape in [(2,), (3, 1)]]
    optimizer = make()
    optimizer.build(variables)
    slots = _compat.momentum_slots(optimizer)
    assert slots is not None, f"momentum_slots: {type(optimizer).__name__} moved"
    assert [tuple(s.shape) for s in slots] == [(2,), (3, 1)]
    gradients = [keras.ops.full((2,), -1.0), keras.ops.full((3, 1), -1.0)]
    optimizer.apply(gradients, variables)
    for slot in slots:
        value = keras.ops.convert_to_numpy(slot)
        # SGD's velocity (-lr g) and the first moments ((1 - beta_1) g) of a
        # negative gradient have opposite signs; a second moment is g^2 > 0.
        if isinstance(optimizer, keras.optimizers.SGD):
            assert np.all(value > 0)
        else:
            assert np.all(value < 0)


def test_momentum_slots_of_others():
    optimizer = keras.optimizers.SGD(0.1)
    optimizer.build([keras.Variable(np.zeros(2))])
    assert _compat.momentum_slots(optimizer) == []
    assert _compat.momentum_slots(keras.optimizers.RMSprop(0.1)) is None


def test_multi_optimizer_index_finds_each_variables_sub_optimizer():
    variables = [keras.Variable(np.zeros((2,)), name=f"v{i}") for i in range(3)]
    adam, sgd = keras.optimizers.Adam(), keras.optimizers.SGD()

    def choose(variable):  # the map itself is not a lookup table
        return adam if variable.name == "v1" else sgd

    optimizer = keras.optimizers.MultiOptimizer(choose)
    optimizer.build(variables)
    _require_attribute(
        optimizer, "_var_to_optimizer_idx", "MultiOptimizer._var_to_optimizer_idx"
    )
    owners = [
        optimizer.optimizers[_compat.multi_optimizer_index(optimizer, v)]
        for v in variables
    ]
    assert owners == [sgd, adam, sgd]


def _variance_hessian(x):
    # The Hessian of sum(var(x, last axis)) by nested tapes through
    # keras.ops.moments.
    with tf.GradientTape(persistent=True) as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            _, variance = keras.ops.moments(x, axes=[-1])
            total = tf.reduce_sum(variance)
        gradient = inner.gradient(total, x)
    return outer.jacobian(gradient, x, experimental_use_pfor=False).numpy()


@pytest.mark.backends("tensorflow")  # TensorFlow's moments op
def test_exact_tensorflow_moments_gives_the_variances_second_derivative():
    module = _require_import("keras.src.backend", "tensorflow").nn
    _require_attribute(module, "_compute_moments", "tensorflow.nn._compute_moments")
    n = 4
    x = tf.constant(np.random.default_rng(0).normal(size=(1, n)), tf.float32)
    # d^2 var / dx_i dx_j = 2 (delta_ij - 1/n) / n.
    exact = 2.0 * (np.eye(n) - 1.0 / n) / n
    with _compat.exact_tensorflow_moments():
        patched = _variance_hessian(x).reshape(n, n)
        _, variance = keras.ops.moments(x, axes=[-1])
    np.testing.assert_allclose(patched, exact, atol=1e-6)
    np.testing.assert_allclose(variance.numpy(), np.var(x.numpy(), -1), rtol=1e-6)
    # Outside the context Keras's own op is back, and it is still the
    # tf.nn.moments one (variance around stop_gradient(mean)) that drops the
    # -2/n^2 term: if a Keras release fixes it, the patch can go.
    assert module._compute_moments is not _compat._plain_moments
    keras_own = _variance_hessian(x).reshape(n, n)
    assert np.abs(keras_own - exact).max() > 0.1 / n**2, (
        "Keras's TensorFlow moments now has an exact second derivative: "
        "exact_tensorflow_moments in keras_sam/_compat.py is no longer needed."
    )


def _per_example_einsum_hvps(x, w, v, vectorized):
    # H_i v of sum(tanh(einsum(x_i, w))^2) in w: one example at a time, or
    # all by tf.vectorized_map (pfor), through keras.ops.einsum's
    # "abc,cde->abde" (rewritten by Keras as reshapes and a matmul).
    @tf.function(autograph=False)
    def example(xi):
        with tf.GradientTape() as outer:
            outer.watch(w)
            with tf.GradientTape() as inner:
                inner.watch(w)
                y = keras.ops.einsum("abc,cde->abde", xi[None], w)
                loss = tf.reduce_sum(tf.tanh(y) ** 2)
            gradient = inner.gradient(loss, w)
        return outer.gradient(gradient, w, output_gradients=v)

    if vectorized:
        return tf.function(
            lambda x: tf.vectorized_map(example, x, fallback_to_while_loop=False),
            input_signature=[tf.TensorSpec([None, *x.shape[1:]], x.dtype)],
            autograph=False,
        )(x).numpy()
    return np.stack([example(x[i]).numpy() for i in range(len(x))])


@pytest.mark.backends("tensorflow")  # TensorFlow's einsum
def test_vectorizable_tensorflow_einsum_is_kerass_value_and_pfor_exact():
    module = _require_import("keras.src.backend", "tensorflow").numpy
    keras_einsum = _require_attribute(module, "einsum", "tensorflow.numpy.einsum")
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(3, 2, 4)), tf.float32)
    w = tf.constant(rng.normal(size=(4, 2, 3)), tf.float32)
    v = tf.constant(rng.normal(size=(4, 2, 3)), tf.float32)
    ints = np.arange(6, dtype="int32").reshape(2, 3)
    expected = np.einsum("abc,cde->abde", x.numpy(), w.numpy())
    keras_ints = keras.ops.einsum("ab,bc->ac", ints, ints.T)
    looped = _per_example_einsum_hvps(x, w, v, vectorized=False)
    with _compat.vectorizable_tensorflow_einsum():
        got = keras.ops.einsum("abc,cde->abde", x, w)
        got_ints = keras.ops.einsum("ab,bc->ac", ints, ints.T)
        vectorized = _per_example_einsum_hvps(x, w, v, vectorized=True)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert got.dtype == tf.float32
    assert got_ints.dtype == keras_ints.dtype
    np.testing.assert_array_equal(got_ints.numpy(), keras_ints.numpy())
    np.testing.assert_allclose(vectorized, looped, rtol=1e-5, atol=1e-6)
    assert module.einsum is keras_einsum  # restored
    # (Keras's rewrite passes this one-layer check under pfor too; on the
    # zoo's MultiHeadAttention members it fails `decide`'s comparison with
    # the loop, which tests/hessian/test_zoo.py's NOT_VECTORIZED records.)


def test_stateless_scope_maps_the_value_objects():
    add_update = _require_attribute(
        keras.StatelessScope(), "add_update", "StatelessScope.add_update"
    )
    assert callable(add_update)
    kernel = keras.Variable(np.ones((2, 3)), dtype="float32")
    seed = keras.Variable(np.array([1, 2]), dtype="uint32", trainable=False)
    value = keras.ops.convert_to_tensor(np.full((2, 3), 2.0), dtype="float32")
    with _compat.stateless_scope([(kernel, value)], collect_losses=True) as scope:
        assert scope.collect_losses
        assert scope.get_current_value(kernel) is value, _moved(
            "StatelessScope.add_update", "it no longer records the value as given"
        )
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(kernel.value), 2.0)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(seed.value), [1, 2])
        seed.assign(np.array([3, 4]))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(kernel.value), 1.0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(seed.value), [1, 2])
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(scope.get_current_value(seed)), [3, 4]
    )


def test_routed_factor_calls_repeat_kerass_dense_call():
    # The routed call repeats Keras's `Dense.call`: with an identity hook the
    # outputs equal Keras's own (activation, no bias, token axes), the hook
    # sees the inputs and the pre-activation, and the layers' own `call` is
    # back on exit.
    rng = np.random.default_rng(0)
    layers = [
        keras.layers.Dense(3, activation="tanh"),
        keras.layers.Dense(2, use_bias=False),
        keras.layers.Dense(4, activation="relu", bias_initializer="ones"),
    ]
    inputs = [
        rng.normal(size=(5, 4)).astype("float32"),
        rng.normal(size=(5, 2, 3)).astype("float32"),
        rng.normal(size=(2, 3, 2, 4)).astype("float32"),
    ]
    seen = []

    def hook(layer, x, z):
        seen.append((layer, x, z))
        return z

    for layer, x in zip(layers, inputs):
        expected = keras.ops.convert_to_numpy(layer(x))
        with _compat.routed_factor_calls([layer], hook):
            got = keras.ops.convert_to_numpy(layer(x))
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
        assert seen[-1][0] is layer
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(seen[-1][1]), x)
        pre = x @ keras.ops.convert_to_numpy(layer.kernel)
        if layer.bias is not None:
            pre = pre + keras.ops.convert_to_numpy(layer.bias)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(seen[-1][2]), pre, rtol=1e-5, atol=1e-6
        )
        assert "call" not in vars(layer)  # restored
        assert type(layer).call is keras.layers.Dense.call
    # A hook's result goes on to the activation.
    layer = layers[0]
    with _compat.routed_factor_calls([layer], lambda layer, x, z: z + 1.0):
        shifted = keras.ops.convert_to_numpy(layer(inputs[0]))
    pre = inputs[0] @ keras.ops.convert_to_numpy(layer.kernel)
    pre = pre + keras.ops.convert_to_numpy(layer.bias)
    np.testing.assert_allclose(shifted, np.tanh(pre + 1.0), rtol=1e-5, atol=1e-6)


def test_routed_factor_calls_repeat_kerass_calls():
    # `routed_factor_calls` repeats Keras's `EinsumDense`, `Embedding` and
    # `LayerNormalization` calls (and `Dense`'s): with an identity hook the
    # outputs equal Keras's own; the hook sees the inputs (the token ids; the
    # normalized inputs) and z; the layers' own `call` is back on exit; a
    # hook's result goes on to the EinsumDense activation.
    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(2, 3, 4)).astype("float32")
    ids = rng.integers(0, 7, size=(2, 3)).astype("int32")
    cases = [
        (keras.layers.EinsumDense("abc,cde->abde", (3, 2, 5), bias_axes="de"), tokens),
        (
            keras.layers.EinsumDense(
                "abcd,cde->abe", (3, 4), bias_axes="e", activation="tanh"
            ),
            rng.normal(size=(2, 3, 2, 5)).astype("float32"),
        ),
        (keras.layers.EinsumDense("ab,bc->ac", 3), tokens[:, 0]),
        (keras.layers.Embedding(7, 3), ids),
        (keras.layers.LayerNormalization(epsilon=0.1), tokens * 3.0 + 1.0),
        (keras.layers.LayerNormalization(center=False), tokens),
        (keras.layers.Dense(2, activation="relu"), tokens),
    ]
    seen = []

    def hook(layer, x, z):
        seen.append((layer, x, z))
        return z

    for layer, x in cases:
        expected = keras.ops.convert_to_numpy(layer(x))
        if isinstance(layer, keras.layers.LayerNormalization):
            # Not the identity: gamma and beta as training leaves them.
            layer.gamma.assign(rng.normal(size=layer.gamma.shape))
            if layer.beta is not None:
                layer.beta.assign(rng.normal(size=layer.beta.shape))
            expected = keras.ops.convert_to_numpy(layer(x))
        with _compat.routed_factor_calls([layer], hook):
            got = keras.ops.convert_to_numpy(layer(x))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
        assert seen[-1][0] is layer
        seen_x = keras.ops.convert_to_numpy(seen[-1][1])
        if isinstance(layer, keras.layers.LayerNormalization):
            mean = x.mean(-1, keepdims=True)
            normalized = (x - mean) / np.sqrt(x.var(-1, keepdims=True) + layer.epsilon)
            np.testing.assert_allclose(seen_x, normalized, rtol=1e-4, atol=1e-5)
        else:
            np.testing.assert_array_equal(seen_x, x)
        assert "call" not in vars(layer)  # restored
    layer = cases[1][0]
    with _compat.routed_factor_calls([layer], lambda layer, x, z: z + 1.0):
        shifted = keras.ops.convert_to_numpy(layer(cases[1][1]))
    pre = np.einsum(
        "abcd,cde->abe", cases[1][1], keras.ops.convert_to_numpy(layer.kernel)
    )
    pre = pre + keras.ops.convert_to_numpy(layer.bias)
    np.testing.assert_allclose(shifted, np.tanh(pre + 1.0), rtol=1e-5, atol=1e-5)

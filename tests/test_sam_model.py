"""SAMModel against independent references: NumPy SAM steps, plain Keras steps,
by-hand micro-batches, hand-computed batch-norm statistics."""

import keras
import numpy as np
import pytest

import keras_sam
from tests import reference
from tests.conftest import BACKEND, JIT_COMPILE
from tests.models import (
    LR,
    assert_weights_close,
    micro_batch_reference,
    mlp,
    weights_of,
)

# Slots made before the step is traced: one trace, not two (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("optimizer_built_before_tracing")


@pytest.mark.parametrize(
    "rule, l2, weighted",
    [
        ("sam", 0.0, False),
        ("usam", 0.0, True),
        ("asam", 0.01, True),
        ("sam", 0.05, True),
    ],
)
def test_one_step_matches_numpy(regression_data, rule, l2, weighted):
    x, y = regression_data
    rho = 1.0 if rule == "asam" else 0.2
    sample_weight = (
        np.linspace(0.2, 2.0, len(x)).astype("float32") if weighted else None
    )
    model = mlp(rho=rho, l2=l2, perturbation=rule)
    params = weights_of(model)
    loss, perturbed_loss, grads = reference.sam_gradient(
        rule, params, x, y, rho, sample_weight, l2
    )
    model.compile(keras.optimizers.SGD(LR), loss="mse")
    logs = model.train_on_batch(x, y, sample_weight=sample_weight, return_dict=True)
    assert_weights_close(weights_of(model), [p - LR * g for p, g in zip(params, grads)])
    assert logs["loss"] == pytest.approx(loss, rel=1e-5)
    assert logs["perturbed_loss"] == pytest.approx(perturbed_loss, rel=1e-5)


def test_sam_gradient_differs_from_clean_gradient(regression_data):
    x, y = regression_data
    model = mlp(rho=0.2)
    params = weights_of(model)
    _, clean = reference.loss_and_grads(params, x, y)
    model.compile(keras.optimizers.SGD(LR), loss="mse")
    model.train_on_batch(x, y)
    sgd_step = [p - LR * g for p, g in zip(params, clean)]
    gap = max(np.max(np.abs(a - b)) for a, b in zip(weights_of(model), sgd_step))
    assert gap > 1e-3


def test_class_weight_is_honoured():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(32, 5)).astype("float32")
    y = rng.integers(0, 2, size=(32, 1)).astype("float32")
    class_weight = {0: 0.5, 1: 3.0}
    model = mlp(rho=0.1)
    params = weights_of(model)
    sample_weight = np.where(y[:, 0] == 1, 3.0, 0.5)
    _, _, grads = reference.sam_gradient("sam", params, x, y, 0.1, sample_weight)
    model.compile(keras.optimizers.SGD(LR), loss="mse")
    model.fit(x, y, batch_size=32, epochs=1, class_weight=class_weight, verbose=0)
    assert_weights_close(weights_of(model), [p - LR * g for p, g in zip(params, grads)])


def test_micro_batches_match_numpy_by_hand(regression_data):
    x, y = regression_data
    x, y = x[:32], y[:32]
    model = mlp(rho=0.2, micro_batch_size=8)
    params = weights_of(model)
    pieces = [
        reference.sam_gradient("sam", params, x[k : k + 8], y[k : k + 8], 0.2)
        for k in range(0, 32, 8)
    ]
    mean_grads = [np.mean([p[2][i] for p in pieces], axis=0) for i in range(4)]
    model.compile(keras.optimizers.SGD(LR), loss="mse")
    logs = model.train_on_batch(x, y, return_dict=True)
    assert_weights_close(
        weights_of(model), [p - LR * g for p, g in zip(params, mean_grads)]
    )
    assert logs["loss"] == pytest.approx(np.mean([p[0] for p in pieces]), rel=1e-5)
    assert logs["perturbed_loss"] == pytest.approx(
        np.mean([p[1] for p in pieces]), rel=1e-5
    )
    # m-sharpness is not SAM on the whole batch.
    _, _, whole = reference.sam_gradient("sam", params, x, y, 0.2)
    assert max(np.max(np.abs(a - b)) for a, b in zip(mean_grads, whole)) > 1e-4


@pytest.mark.backends("tensorflow")  # JAX: a lax.scan, one body by construction
def test_micro_batch_graph_does_not_grow_with_count(regression_data):
    import tensorflow as tf

    x, y = regression_data
    sizes = {}
    for micro in (32, 4):
        model = mlp(micro_batch_size=micro)
        model.compile(keras.optimizers.SGD(LR), loss="mse")
        model.optimizer.build(model.trainable_variables)
        # As `fit` traces it: Keras marks its step functions do_not_convert.
        step = tf.function(
            lambda x, y, model=model: model.train_step((x, y)), autograph=False
        )
        graph = step.get_concrete_function(x, y).graph.as_graph_def()
        sizes[micro] = len(graph.node) + sum(
            len(f.node_def) for f in graph.library.function
        )
    assert sizes[4] == sizes[32] > 0


@pytest.mark.parametrize(
    "jit_compile, call",
    [(False, "fit"), (False, "train_on_batch")]
    + [(True, "fit")] * (len(JIT_COMPILE) - 1),
)
def test_partial_micro_batch_weighted_by_size_matches_numpy(
    regression_data, jit_compile, call
):
    """A batch of 20 with m = 8 runs micro-batches of 8, 8 and 4; a last batch
    of 4 < m runs one of 4. `fit` traces with an unknown batch size (the
    partial micro-batch under a `tf.cond`), `train_on_batch` with a known one."""
    x, y = regression_data
    model = mlp(rho=0.2, micro_batch_size=8)
    params = weights_of(model)
    model.compile(keras.optimizers.SGD(LR), loss="mse", jit_compile=jit_compile)
    if call == "fit":
        model.fit(x[:24], y[:24], batch_size=20, shuffle=False, verbose=0)
        expected, _ = micro_batch_reference(params, x, y, [(0, 20), (20, 24)], 8)
    else:
        logs = model.train_on_batch(x[:20], y[:20], return_dict=True)
        expected, losses = micro_batch_reference(params, x, y, [(0, 20)], 8)
        assert logs["loss"] == pytest.approx(losses[0], rel=1e-5)
        assert logs["perturbed_loss"] == pytest.approx(losses[1], rel=1e-5)
    assert_weights_close(weights_of(model), expected)
    assert model.eps_batch_size == 8


@pytest.mark.parametrize(
    "jit_compile, call",
    [(False, "train_on_batch"), (False, "fit")]
    + [(True, "train_on_batch")] * (len(JIT_COMPILE) - 1),
)
def test_micro_batch_with_batch_norm_threads_state(jit_compile, call):
    """Conv + batch norm, a batch of 20 with m = 8: each micro-batch's clean
    pass (8, 8, then the partial 4) updates the moving mean, in order; the
    perturbed passes change nothing."""
    rng = np.random.default_rng(5)
    x = rng.normal(loc=2.0, size=(20, 4, 3)).astype("float32")
    y = rng.normal(size=(20, 1)).astype("float32")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 3))
    normalized = keras.layers.BatchNormalization(momentum=0.9)(inputs)
    features = keras.layers.Conv1D(2, 3)(normalized)
    outputs = keras.layers.Dense(1)(keras.layers.Flatten()(features))
    model = keras_sam.SAMModel(inputs, outputs, rho=0.5, micro_batch_size=8)
    model.compile(keras.optimizers.SGD(LR), loss="mse", jit_compile=jit_compile)
    if jit_compile and BACKEND == "tensorflow":
        with pytest.warns(UserWarning, match="XLA runs the micro-batch loop"):
            model.train_on_batch(x, y)
    elif call == "fit":
        model.fit(x, y, batch_size=20, shuffle=False, verbose=0)
    else:
        model.train_on_batch(x, y)
    expected = np.zeros(3)
    for k in range(0, 20, 8):
        expected = 0.9 * expected + 0.1 * x[k : k + 8].mean((0, 1))
    bn = model.layers[1]
    np.testing.assert_allclose(bn.moving_mean.numpy(), expected, rtol=1e-5)


def test_eps_batch_size_is_an_attribute_not_a_log(regression_data):
    """Not in the logs; the full batch's m, not the partial last batch's."""
    x, y = regression_data
    assert mlp().eps_batch_size is None
    for options, expected in [({}, 16), ({"micro_batch_size": 8}, 8)]:
        model = mlp(**options)
        model.compile(keras.optimizers.SGD(LR), loss="mse")
        history = model.fit(x[:36], y[:36], batch_size=16, verbose=0)  # 16, 16, 4
        assert set(history.history) == {"loss", "perturbed_loss"}
        assert model.eps_batch_size == expected
        model.evaluate(x, y, verbose=0)
        assert model.eps_batch_size == expected


def dropout_bn_model(sam, seed=0, l2=1e-3, **options):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((5,))
    h = keras.layers.Dense(16, kernel_regularizer=keras.regularizers.L2(l2))(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Activation("relu")(h)
    h = keras.layers.Dropout(0.3, seed=seed)(h)
    outputs = keras.layers.Dense(1, activity_regularizer=keras.regularizers.L2(1e-3))(h)
    if sam:
        return keras_sam.SAMModel(inputs, outputs, **options)
    return keras.Model(inputs, outputs)


OPTIMIZERS = {
    "sgd_momentum": lambda: keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
    "adamw": lambda: keras.optimizers.AdamW(1e-2, weight_decay=0.1),
    # Per-variable clipnorm: test_sam_optimizers's "clipnorm" cases train a
    # SAMModel against NumPy's clipping (a stronger check than rho = 0).
    "global_clipnorm": lambda: keras.optimizers.Adam(1e-2, global_clipnorm=0.1),
    "schedule": lambda: keras.optimizers.SGD(
        keras.optimizers.schedules.ExponentialDecay(0.1, 2, 0.5)
    ),
    "accumulation": lambda: keras.optimizers.SGD(0.05, gradient_accumulation_steps=2),
}


@pytest.mark.parametrize(
    "name, jit_compile",
    [(name, False) for name in sorted(OPTIMIZERS)]
    + [("adamw", True)] * (len(JIT_COMPILE) - 1),
)
def test_rho_zero_equals_plain_keras(regression_data, name, jit_compile):
    """rho=0 with dropout, batch norm, L2 and activity regularizers reproduces
    the base optimizer's steps, state included."""
    x, y = regression_data
    results = []
    for sam in (True, False):
        model = dropout_bn_model(sam, rho=0.0) if sam else dropout_bn_model(False)
        model.compile(OPTIMIZERS[name](), loss="mse", jit_compile=jit_compile)
        history = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        results.append((model, history.history["loss"]))
    (sam_model, sam_loss), (plain, plain_loss) = results
    for a, b in zip(sam_model.weights, plain.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, err_msg=a.path)
    np.testing.assert_allclose(sam_loss, plain_loss, rtol=1e-6)


def test_rho_zero_perturbed_loss_equals_loss_with_dropout(regression_data):
    """Same dropout masks and regularizers in both passes: at rho=0 the
    perturbed loss is the clean loss."""
    x, y = regression_data
    model = dropout_bn_model(True, rho=0.0)
    model.compile(keras.optimizers.SGD(0.01), loss="mse")
    history = model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert history.history["perturbed_loss"] == pytest.approx(
        history.history["loss"], rel=1e-6
    )


def test_batch_norm_statistics_updated_once_from_clean_pass(regression_data):
    x, y = regression_data
    sam_model = dropout_bn_model(True, rho=0.5)
    plain = dropout_bn_model(False)
    for model in (sam_model, plain):
        model.compile(keras.optimizers.SGD(0.05), loss="mse")
        model.train_on_batch(x, y)
    for layer_sam, layer_plain in zip(sam_model.layers, plain.layers):
        if isinstance(layer_sam, keras.layers.BatchNormalization):
            for a, b in zip(
                layer_sam.non_trainable_weights, layer_plain.non_trainable_weights
            ):
                np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)
    # ... while the trainable weights did take a different (SAM) step.
    gap = max(
        np.max(np.abs(a.numpy() - b.numpy()))
        for a, b in zip(sam_model.trainable_weights, plain.trainable_weights)
    )
    assert gap > 1e-4


def test_adamw_weight_decay_does_not_enter_eps(regression_data):
    x, y = regression_data
    perturbed = []
    for decay in (0.0, 0.5):
        model = mlp(rho=0.3)
        model.compile(keras.optimizers.AdamW(1e-3, weight_decay=decay), loss="mse")
        perturbed.append(model.train_on_batch(x, y, return_dict=True)["perturbed_loss"])
    assert perturbed[0] == pytest.approx(perturbed[1], rel=1e-7)


# Keras on torch: steps_per_execution must be 1; torch.compile: see JIT_COMPILE.
@pytest.mark.backends("tensorflow", "jax")
@pytest.mark.filterwarnings("ignore:micro_batch_size with jit_compile")
@pytest.mark.parametrize("options", [{}, {"micro_batch_size": 8}])
def test_jit_and_steps_per_execution_agree(regression_data, options):
    x, y = regression_data
    final = []
    for jit, steps in [(False, 1), (True, 1), (False, 3), (True, 2)]:
        model = mlp(rho=0.1, **options)
        model.compile(
            keras.optimizers.SGD(LR, momentum=0.9),
            loss="mse",
            jit_compile=jit,
            steps_per_execution=steps,
        )
        model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        final.append(weights_of(model))
    for other in final[1:]:
        assert_weights_close(final[0], other, atol=1e-5)


@pytest.mark.backends("torch")
def test_steps_per_execution_on_torch_where_keras_has_it(regression_data):
    """Keras 3.16 runs `steps_per_execution` batches per call on torch (the
    SAM step once per batch); Keras 3.15 refuses anything but 1."""
    x, y = regression_data
    final = []
    for steps in (1, 3):
        model = mlp(rho=0.1, micro_batch_size=8)
        model.compile(keras.optimizers.SGD(LR, momentum=0.9), loss="mse",
                      steps_per_execution=steps)  # fmt: skip
        if steps > 1 and tuple(map(int, keras.version().split(".")[:2])) < (3, 16):
            with pytest.raises(ValueError, match="steps_per_execution"):
                model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
            return
        model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        final.append(weights_of(model))
        assert int(model.optimizer.iterations.numpy()) == 8
    assert_weights_close(final[0], final[1], atol=1e-6)


def test_mixed_float16_matches_float32_with_unscaled_norm(
    regression_data, mixed_precision
):
    """usam's eps is proportional to g: a scaled first gradient would make it
    32768x too large, so agreement with float32 shows the unscaling."""
    x, y = regression_data
    final = []
    for policy in ("float32", "mixed_float16", "mixed_bfloat16"):
        mixed_precision(policy)
        model = mlp(rho=0.5, perturbation="usam")
        optimizer = keras.optimizers.SGD(LR)
        if policy == "mixed_float16":  # a scale that does not overflow here
            optimizer = keras.optimizers.LossScaleOptimizer(
                optimizer, initial_scale=256
            )
        model.compile(optimizer, loss="mse")
        model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
        final.append(weights_of(model))
    assert_weights_close(final[0], final[1], atol=5e-3)
    assert_weights_close(final[0], final[2], atol=3e-2)


def _optimizer_state(model):
    inner = model.optimizer.inner_optimizer
    return [v.numpy().copy() for v in inner.variables]


# The loss scale read before the optimizer is built (the first trace).
@pytest.mark.optimizer_built_in_the_trace
@pytest.mark.parametrize("bad_pass", ["first", "second"])
def test_mixed_float16_skips_non_finite_step(
    regression_data, mixed_precision, bad_pass
):
    x, y = regression_data
    mixed_precision("mixed_float16")
    if bad_pass == "first":
        model, x = mlp(rho=0.05), x * 1e6  # float16 overflow in the clean pass
    else:
        model = mlp(rho=1e9, perturbation="usam")  # overflow at w + eps only
    model.compile(keras.optimizers.SGD(LR, momentum=0.9), loss="mse")
    model.build((None, 5))
    model.optimizer.build(model.trainable_variables)
    before = weights_of(model)
    state = _optimizer_state(model)
    scale = float(model.optimizer.dynamic_scale.numpy())
    model.train_on_batch(x, y)
    assert_weights_close(weights_of(model), before, atol=0)
    for a, b in zip(_optimizer_state(model), state):
        np.testing.assert_array_equal(a, b)
    assert float(model.optimizer.dynamic_scale.numpy()) == scale / 2


def test_mixed_float16_skipped_step_leaves_the_logs_alone(
    regression_data, mixed_precision
):
    """One batch of four overflows float16 (NaN loss and gradients): the
    step is skipped and counted, and the epoch ends with the weights and
    logs of training on the other three batches alone."""
    x, y = regression_data
    mixed_precision("mixed_float16")
    bad = x.copy()
    bad[16:32] *= 1e6
    good = slice(0, 16), slice(32, 64)
    runs = []
    for data in [
        (bad, y),
        (np.concatenate([x[s] for s in good]), np.concatenate([y[s] for s in good])),
    ]:
        model = mlp(rho=0.05)
        model.compile(keras.optimizers.SGD(LR, momentum=0.9), loss="mse")
        history = model.fit(*data, batch_size=16, shuffle=False, verbose=0)
        runs.append((model, history.history))
    (skipping, logs), (clean, clean_logs) = runs
    assert skipping.skipped_steps == clean.skipped_steps + 1
    # Keras's own float16 step on JAX and torch (CPU) also skips this
    # model's first step at the initial scale 32768, SAM or not.
    assert clean.skipped_steps == (0 if BACKEND == "tensorflow" else 1)
    for name in ("loss", "perturbed_loss"):
        assert logs[name][0] == pytest.approx(clean_logs[name][0], rel=1e-3), name
    assert_weights_close(weights_of(skipping), weights_of(clean), atol=1e-3)


def test_save_load_and_resume(tmp_path, regression_data):
    x, y = regression_data

    def fresh():
        model = dropout_bn_model(True, rho=0.2, perturbation="asam", micro_batch_size=8)
        model.compile(
            keras.optimizers.SGD(0.05, momentum=0.9), loss="mse", metrics=["mae"]
        )
        return model

    first = fresh()
    first.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    saved = [v.numpy() for v in first.variables]
    path = tmp_path / "model.keras"
    first.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored, keras_sam.SAMModel)
    assert restored.rho == 0.2
    assert restored.perturbation == keras_sam.perturbations.ASAM()
    assert restored.micro_batch_size == 8
    restored.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    # The uninterrupted run is `first`'s own epochs 3 and 4 (SGD without
    # EMA, no shuffling: two 2-epoch fits are one 4-epoch fit); the dropout
    # seed state is one of the variables compared.
    first.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    moved = max(np.abs(a - b.numpy()).max() for a, b in zip(saved, first.variables))
    assert moved > 1e-3
    for a, b in zip(first.variables, restored.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, err_msg=a.path)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"rho": -0.1}, "rho"),
        ({"rho": "0.1"}, "rho"),
        ({"rho": True}, "rho"),
        ({"rho": float("nan")}, "rho"),
        ({"rho": float("inf")}, "rho"),
        ({"perturbation": "adam"}, "perturbation"),
        ({"micro_batch_size": 0}, "micro_batch_size"),
        ({"micro_batch_size": 2.5}, "micro_batch_size"),
        ({"micro_batch_size": True}, "micro_batch_size"),
        ({"replica_eps": "global"}, "replica_eps"),
        ({"clip_eps_gradient": 1}, "clip_eps_gradient"),
        ({"clip_eps_gradient": "optimizer"}, "clip_eps_gradient"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        mlp(**kwargs)
    with pytest.raises(ValueError, match=argument):
        keras_sam.sam(mlp(sam=False), **kwargs)

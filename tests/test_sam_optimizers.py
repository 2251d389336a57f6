"""SAM with every optimizer Keras has, and its options, against NumPy.

Each case trains a `SAMModel` (or `keras_sam.sam(model)`) for several steps
and compares the weights with `tests/optimizer_reference.py`: the NumPy
SAM step (eps from the clean gradient, the perturbed gradient applied at w)
followed by the NumPy optimizer. The MLP's gradients are NumPy's own
(`tests/reference.py`); the Conv + batch-norm and attention models' come from
a plain `keras.Model` copy (`stateless_gradients`, outside any SAM step), so
the SAM step and the optimizer are still checked independently.
"""

import keras
import numpy as np
import pytest

import keras_sam
from keras_sam import backend
from keras_sam.optimizers import L2SGD
from tests import optimizer_reference as ref
from tests import reference
from tests.conftest import BACKEND
from tests.models import mlp, weights_of

# Slots made before the step is traced: one trace, not two (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("optimizer_built_before_tracing")

opt = keras.optimizers


def _multi():
    """Kernels by Adam (clipped per variable), biases by SGD with momentum."""
    optimizer_map = opt.OptimizerMap(
        opt.SGD(0.1, momentum=0.9, clipvalue=0.05),
        {".*/kernel": opt.Adam(0.01, clipnorm=0.05)},
    )
    return opt.MultiOptimizer(optimizer_map)


def _multi_reference(kinds):
    kernels = [i for i, kind in enumerate(kinds) if kind == "kernel"]
    others = [i for i, kind in enumerate(kinds) if kind != "kernel"]
    return ref.Multi(
        [
            (kernels, ref.Optimizer(ref.adam(), 0.01, clipnorm=0.05)),
            (others, ref.Optimizer(ref.sgd(0.9), 0.1, clipvalue=0.05)),
        ]
    )


#: name -> (Keras optimizer, NumPy optimizer of the variable kinds, SAM options).
CASES = {
    "sgd": (lambda: opt.SGD(0.1), lambda k: ref.Optimizer(ref.sgd(), 0.1), {}),
    "sgd_momentum": (
        lambda: opt.SGD(0.1, momentum=0.9),
        lambda k: ref.Optimizer(ref.sgd(0.9), 0.1),
        {},
    ),
    "sgd_nesterov": (
        lambda: opt.SGD(0.1, momentum=0.9, nesterov=True),
        lambda k: ref.Optimizer(ref.sgd(0.9, nesterov=True), 0.1),
        {},
    ),
    "adam": (lambda: opt.Adam(0.01), lambda k: ref.Optimizer(ref.adam(), 0.01), {}),
    "adamw": (
        lambda: opt.AdamW(0.01, weight_decay=0.5),
        lambda k: ref.Optimizer(ref.adam(), 0.01, weight_decay=0.5),
        {},
    ),
    "lion": (lambda: opt.Lion(0.003), lambda k: ref.Optimizer(ref.lion(), 0.003), {}),
    "rmsprop": (
        lambda: opt.RMSprop(0.01, momentum=0.5, centered=True),
        lambda k: ref.Optimizer(ref.rmsprop(momentum=0.5, centered=True), 0.01),
        {},
    ),
    "adafactor": (
        lambda: opt.Adafactor(0.1),
        lambda k: ref.Optimizer(ref.adafactor(), 0.1),
        {},
    ),
    "multi_optimizer": (_multi, _multi_reference, {}),
    "multi_optimizer_clip_eps": (_multi, _multi_reference, {"clip_eps_gradient": True}),
    "loss_scale": (
        lambda: opt.LossScaleOptimizer(opt.SGD(0.1, momentum=0.9), initial_scale=1024),
        lambda k: ref.Optimizer(ref.sgd(0.9), 0.1),
        {},
    ),
    "l2sgd": (
        lambda: L2SGD(0.1, momentum=0.9, l2=0.05),
        lambda k: ref.Optimizer(ref.l2sgd(0.9, 0.05), 0.1),
        {},
    ),
    "clipnorm": (
        lambda: opt.SGD(0.1, momentum=0.9, clipnorm=0.05),
        lambda k: ref.Optimizer(ref.sgd(0.9), 0.1, clipnorm=0.05),
        {},
    ),
    "clipnorm_clip_eps": (
        lambda: opt.SGD(0.1, momentum=0.9, clipnorm=0.05),
        lambda k: ref.Optimizer(ref.sgd(0.9), 0.1, clipnorm=0.05),
        {"clip_eps_gradient": True},
    ),
    "clipvalue": (
        lambda: opt.SGD(0.1, clipvalue=0.02),
        lambda k: ref.Optimizer(ref.sgd(), 0.1, clipvalue=0.02),
        {},
    ),
    "clipvalue_clip_eps_usam": (
        lambda: opt.SGD(0.1, clipvalue=0.02),
        lambda k: ref.Optimizer(ref.sgd(), 0.1, clipvalue=0.02),
        {"clip_eps_gradient": True, "perturbation": "usam"},
    ),
    "global_clipnorm": (
        lambda: opt.Adam(0.01, global_clipnorm=0.1),
        lambda k: ref.Optimizer(ref.adam(), 0.01, global_clipnorm=0.1),
        {},
    ),
    "global_clipnorm_clip_eps_usam": (
        lambda: opt.LossScaleOptimizer(
            opt.SGD(0.1, global_clipnorm=0.1), initial_scale=64
        ),
        lambda k: ref.Optimizer(ref.sgd(), 0.1, global_clipnorm=0.1),
        {"clip_eps_gradient": True, "perturbation": "usam"},
    ),
    "ema": (
        lambda: opt.SGD(0.1, momentum=0.9, use_ema=True, ema_momentum=0.5),
        lambda k: ref.Optimizer(ref.sgd(0.9), 0.1, use_ema=True, ema_momentum=0.5),
        {},
    ),
    "ema_overwrite": (
        lambda: opt.Adam(
            0.01, use_ema=True, ema_momentum=0.5, ema_overwrite_frequency=3
        ),
        lambda k: ref.Optimizer(
            ref.adam(), 0.01, use_ema=True, ema_momentum=0.5, ema_overwrite_frequency=3
        ),
        {},
    ),
    "accumulation": (
        lambda: opt.SGD(0.1, momentum=0.9, gradient_accumulation_steps=2),
        lambda k: ref.Optimizer(ref.sgd(0.9), 0.1, accumulation_steps=2),
        {},
    ),
    "adamw_accumulation_clip": (
        lambda: opt.AdamW(
            0.01, weight_decay=0.5, global_clipnorm=0.1, gradient_accumulation_steps=2
        ),
        lambda k: ref.Optimizer(
            ref.adam(),
            0.01,
            weight_decay=0.5,
            global_clipnorm=0.1,
            accumulation_steps=2,
        ),
        {},
    ),
}

RHO = 0.2
BATCH = 16


def _batches(x, y):
    return [(x[k : k + BATCH], y[k : k + BATCH]) for k in range(0, len(x), BATCH)]


def _kinds(model):
    return [v.path.rsplit("/", 1)[-1] for v in model.trainable_variables]


def _numpy_gradients(params, x, y):
    return reference.loss_and_grads(params, x, y)[1]


@pytest.mark.parametrize("name", sorted(CASES))
def test_mlp_matches_numpy(regression_data, name):
    x, y = regression_data
    make, make_reference, options = CASES[name]
    model = mlp(rho=RHO, **options)
    params = weights_of(model)
    model.compile(make(), loss="mse")
    model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0)
    rule = options.get("perturbation", "sam")
    clip_eps = options.get("clip_eps_gradient", False)
    expected = ref.sam_fit(
        params,
        _batches(x, y),
        _numpy_gradients,
        make_reference(_kinds(model)),
        RHO,
        rule,
        clip_eps,
    )
    for got, want, path in zip(weights_of(model), expected, _kinds(model)):
        np.testing.assert_allclose(got, want, atol=2e-6, rtol=0, err_msg=path)
    if "clip" in name:  # the clipping was active: it changed the result
        unclipped = ref.sam_fit(
            params,
            _batches(x, y),
            _numpy_gradients,
            _without_clipping(make_reference(_kinds(model))),
            RHO,
            rule,
        )
        assert max(np.abs(a - b).max() for a, b in zip(expected, unclipped)) > 1e-4
    if clip_eps:  # and so was clipping g for eps
        other = ref.sam_fit(
            params,
            _batches(x, y),
            _numpy_gradients,
            make_reference(_kinds(model)),
            RHO,
            rule,
        )
        assert max(np.abs(a - b).max() for a, b in zip(expected, other)) > 1e-4


def _without_clipping(optimizer):
    for one in getattr(optimizer, "groups", [(None, optimizer)]):
        one[1].clipnorm = one[1].clipvalue = one[1].global_clipnorm = None
    return optimizer


def conv_bn_model():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((6, 3))
    h = keras.layers.Conv1D(4, 3, activation="tanh")(inputs)
    h = keras.layers.BatchNormalization(momentum=0.8)(h)
    outputs = keras.layers.Dense(1)(keras.layers.Flatten()(h))
    return keras.Model(inputs, outputs)


def dense_model():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((6, 3))
    outputs = keras.layers.Dense(1)(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, outputs)


def attention_model():
    keras.utils.set_random_seed(2)
    inputs = keras.Input((4, 6))
    # No biases: the key bias's gradient is 0 in exact arithmetic (softmax
    # ignores a shift shared by all keys), and Adam, Lion and Adafactor
    # normalize its float32 rounding noise into steps of full size.
    attention = keras.layers.MultiHeadAttention(num_heads=2, key_dim=3, use_bias=False)
    h = attention(inputs, inputs)
    h = keras.layers.LayerNormalization()(h + inputs)
    outputs = keras.layers.Dense(1)(keras.layers.GlobalAveragePooling1D()(h))
    return keras.Model(inputs, outputs)


ZOO = {"conv_bn": (conv_bn_model, (6, 3)), "attention": (attention_model, (4, 6))}
ZOO_CASES = [
    "adamw",
    "lion",
    "adafactor",
    "multi_optimizer_clip_eps",
    "clipnorm_clip_eps",
    "adamw_accumulation_clip",
    "ema_overwrite",
]


def keras_gradients(model):
    """The loss gradient of a plain Keras model at given weights, by
    autodiff outside any SAM step (batch-norm statistics untouched)."""
    loss = keras.losses.MeanSquaredError()

    def gradients(params, x, y):
        for variable, value in zip(model.trainable_variables, params):
            variable.assign(value.astype("float32"))
        grads = backend.module().stateless_gradients(
            lambda: loss(y, model(x, training=True)), model.trainable_variables
        )
        return [keras.ops.convert_to_numpy(g).astype(np.float64) for g in grads]

    return gradients


#: The attention model (slower to compile) takes the rules it stresses most.
ATTENTION_CASES = ["adafactor", "lion", "multi_optimizer_clip_eps"]


@pytest.mark.parametrize(
    "zoo, name",
    [("conv_bn", name) for name in ZOO_CASES]
    + [("attention", name) for name in ATTENTION_CASES],
)
def test_zoo_matches_numpy(zoo, name):
    build, shape = ZOO[zoo]
    rng = np.random.default_rng(4)
    x = rng.normal(size=(64,) + shape).astype("float32")
    y = rng.normal(size=(64, 1)).astype("float32")
    make, make_reference, options = CASES[name]
    model = keras_sam.sam(build(), rho=RHO, **options)
    plain = build()
    plain.set_weights(model.get_weights())
    params = weights_of(model)
    model.compile(make(), loss="mse")
    model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0)
    expected = ref.sam_fit(
        params,
        _batches(x, y),
        keras_gradients(plain),
        make_reference(_kinds(model)),
        RHO,
        options.get("perturbation", "sam"),
        options.get("clip_eps_gradient", False),
    )
    for got, want, path in zip(weights_of(model), expected, _kinds(model)):
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=0, err_msg=path)


#: Gradient accumulation equals m-sharpness here: (optimizer options, SAM
#: options). A rho schedule reads `optimizer.iterations`, the update count.
ACCUMULATION_EQUALS_MICRO_BATCHES = {
    "sgd_momentum": (lambda **k: opt.SGD(0.1, momentum=0.9, **k), {}),
    "adamw_global_clipnorm": (
        lambda **k: opt.AdamW(0.01, weight_decay=0.5, global_clipnorm=0.1, **k),
        {},
    ),
    "adafactor_clip_eps": (
        lambda **k: opt.Adafactor(0.1, clipnorm=0.05, **k),
        {"clip_eps_gradient": True},
    ),
    "rho_schedule": (
        lambda **k: opt.Lion(0.003, **k),
        {"rho": opt.schedules.ExponentialDecay(0.3, 1, 0.5)},
    ),
}


def _accumulated_and_micro_batched(make, options, build=conv_bn_model, k=2, b=8):
    """The same Conv + batch-norm model trained by SAM with
    `gradient_accumulation_steps=k` on batches of `b`, and by SAM with
    `micro_batch_size=b` on batches of k * b."""
    rng = np.random.default_rng(6)
    x = rng.normal(loc=1.0, size=(64, 6, 3)).astype("float32")
    y = rng.normal(size=(64, 1)).astype("float32")
    options = {"rho": RHO, **options}
    runs = []
    for accumulate in (True, False):
        model = keras_sam.sam(
            build(), **options, **({} if accumulate else {"micro_batch_size": b})
        )
        optimizer = make(gradient_accumulation_steps=k) if accumulate else make()
        model.compile(optimizer, loss="mse")
        size = b if accumulate else k * b
        history = model.fit(x, y, batch_size=size, shuffle=False, verbose=0)
        runs.append((model, history.history))
    return runs


@pytest.mark.parametrize("name", sorted(ACCUMULATION_EQUALS_MICRO_BATCHES))
def test_accumulation_equals_micro_batch_size(name):
    """k accumulated SAM micro-steps of b examples = one SAM step with
    micro_batch_size=b on k * b: each eps from its own b examples' gradient,
    the perturbed gradients averaged, one update (clipped once, decayed
    once); batch norm's moving statistics updated k times from the same
    micro-batches; the same update count, m and logs."""
    make, options = ACCUMULATION_EQUALS_MICRO_BATCHES[name]
    (accumulated, logs), (micro, micro_logs) = _accumulated_and_micro_batched(
        make, options
    )
    for a, b in zip(accumulated.variables, micro.variables):
        if "gradient_accumulator" in a.path or "iteration" in a.path:
            continue  # only accumulation has them; counts compared below
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, err_msg=a.path)
    moving = [v for v in accumulated.non_trainable_variables if "moving" in v.path]
    assert moving and all(np.abs(v.numpy()).max() > 0 for v in moving)
    assert int(accumulated.optimizer.iterations) == int(micro.optimizer.iterations)
    assert accumulated.eps_batch_size == micro.eps_batch_size == 8
    for key in ("loss", "perturbed_loss"):
        np.testing.assert_allclose(logs[key], micro_logs[key], rtol=1e-5)


@pytest.mark.parametrize(
    "make",
    [
        # Keras updates the EMA on every micro-step, so twice per update.
        lambda **k: opt.SGD(0.1, momentum=0.9, use_ema=True, ema_momentum=0.5, **k),
        # Keras evaluates a learning-rate schedule at the micro-step count.
        lambda **k: opt.SGD(opt.schedules.ExponentialDecay(0.1, 1, 0.5), **k),
    ],
    ids=["use_ema", "learning_rate_schedule"],
)
def test_accumulation_differs_from_micro_batch_size_where_keras_counts_micro_steps(
    make,
):
    # Only the optimizer's counting matters here (the equalities above use
    # the Conv + batch-norm model): a plain Dense model is enough.
    (accumulated, _), (micro, _) = _accumulated_and_micro_batched(
        make, {}, build=dense_model
    )
    gap = max(
        np.abs(a.numpy() - b.numpy()).max()
        for a, b in zip(accumulated.trainable_variables, micro.trainable_variables)
    )
    assert gap > 1e-4


# Loss scale, clipping and accumulation before the optimizer is built.
@pytest.mark.optimizer_built_in_the_trace
def test_mixed_float16_clipping_and_accumulation_match_numpy(
    regression_data, mixed_precision
):
    """Under mixed_float16 with loss scaling: eps from the unscaled clean
    gradient (clipped, where asked), the applied gradient unscaled,
    accumulated and clipped by the inner optimizer."""
    x, y = regression_data
    mixed_precision("mixed_float16")
    model = mlp(rho=0.5, perturbation="usam", clip_eps_gradient=True)
    params = weights_of(model)
    inner = opt.SGD(
        0.1, momentum=0.9, global_clipnorm=0.1, gradient_accumulation_steps=2
    )
    model.compile(opt.LossScaleOptimizer(inner, initial_scale=256), loss="mse")
    model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0)
    assert model.skipped_steps == 0
    numpy_optimizer = ref.Optimizer(
        ref.sgd(0.9), 0.1, global_clipnorm=0.1, accumulation_steps=2
    )
    expected = ref.sam_fit(
        params, _batches(x, y), _numpy_gradients, numpy_optimizer, 0.5, "usam", True
    )
    for got, want in zip(weights_of(model), expected):
        np.testing.assert_allclose(got, want, atol=5e-3, rtol=0)


# MultiOptimizer's clipping groups before it is built (`train_on_batch`).
@pytest.mark.optimizer_built_in_the_trace
def test_save_load_resume_with_multi_optimizer_ema_and_accumulation(tmp_path):
    """A `.keras` checkpoint after 3 micro-steps at k = 2 (one gradient left
    in the accumulators) resumes to the weights, slots, accumulators and
    EMA of the uninterrupted run. `train_on_batch`, not `fit`: every `fit`
    ends by writing the EMA into the weights, so two `fit` calls are not
    one, SAM or not."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(96, 6, 3)).astype("float32")
    y = rng.normal(size=(96, 1)).astype("float32")
    batches = _batches(x, y)

    def fresh():
        model = keras_sam.sam(conv_bn_model(), rho=RHO, clip_eps_gradient=True)
        adam = opt.Adam(
            0.01,
            clipnorm=0.05,
            use_ema=True,
            ema_momentum=0.5,
            gradient_accumulation_steps=2,
        )
        sgd = opt.SGD(0.1, momentum=0.9, gradient_accumulation_steps=2)
        model.compile(
            opt.MultiOptimizer(opt.OptimizerMap(sgd, {".*/kernel": adam})), loss="mse"
        )
        return model

    straight = fresh()
    for batch in batches:
        straight.train_on_batch(*batch)
    first = fresh()
    for batch in batches[:3]:
        first.train_on_batch(*batch)
    first.save(tmp_path / "m.keras")
    restored = keras.models.load_model(tmp_path / "m.keras")
    assert restored.clip_eps_gradient is True
    assert isinstance(restored.optimizer, opt.MultiOptimizer)
    for batch in batches[3:]:
        restored.train_on_batch(*batch)
    for a, b in zip(straight.variables, restored.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, err_msg=a.path)
    averages = [v for v in straight.optimizer.variables if "average" in v.path]
    assert averages
    for a, b in zip(straight.optimizer.variables, restored.optimizer.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, err_msg=a.path)


def _keras_optimizer_classes():
    wrappers = (opt.Optimizer, opt.LossScaleOptimizer, opt.MultiOptimizer)
    return sorted(
        name
        for name in dir(opt)
        if isinstance(getattr(opt, name), type)
        and issubclass(getattr(opt, name), opt.Optimizer)
        and getattr(opt, name) not in wrappers
    )


#: Optimizer classes that test_mlp_matches_numpy already trains on the same
#: model and data against NumPy's own rule (a stronger check than Keras's
#: rule applied by hand): not trained again below.
NUMPY_RULES = {"SGD", "Adam", "AdamW", "Lion", "RMSprop", "Adafactor"}


def test_numpy_rules_are_keras_optimizers():
    # A renamed class must not drop out of both tests.
    assert NUMPY_RULES <= set(_keras_optimizer_classes())


# Each class built inside the first trace of the SAM step, as Keras does.
@pytest.mark.optimizer_built_in_the_trace
@pytest.mark.parametrize(
    "name", [n for n in _keras_optimizer_classes() if n not in NUMPY_RULES]
)
def test_every_keras_optimizer_gets_the_numpy_sam_gradient(regression_data, name):
    """Every other optimizer class Keras exports, rule as Keras has it: SAM's
    updates equal the same optimizer applied by hand to NumPy's perturbed
    gradients (eps from NumPy's clean gradient) on plain variables."""
    if name == "ScheduleFreeAdamW" and BACKEND == "tensorflow":
        pytest.xfail(
            "Keras 3.15 on TensorFlow: `fit` loses ScheduleFreeAdamW's "
            "momentum = w initialization (a plain keras.Model too)"
        )
    x, y = regression_data
    learning_rate = 1.0 if name == "Adadelta" else 0.01  # Adadelta's steps are tiny
    model = mlp(rho=RHO)
    params = weights_of(model)
    model.compile(getattr(opt, name)(learning_rate=learning_rate), loss="mse")
    model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0)
    by_hand = getattr(opt, name)(learning_rate=learning_rate)
    variables = [keras.Variable(p.astype("float32")) for p in params]
    for xb, yb in _batches(x, y):
        current = [v.numpy().astype(np.float64) for v in variables]
        grads = reference.sam_gradient("sam", current, xb, yb, RHO)[2]
        by_hand.apply(
            [keras.ops.convert_to_tensor(g, "float32") for g in grads], variables
        )
    by_hand.finalize_variable_values(variables)  # as `fit` does at its end
    for got, want in zip(weights_of(model), variables):
        np.testing.assert_allclose(got, want.numpy(), atol=2e-6, rtol=0)
    assert max(np.abs(a - b).max() for a, b in zip(weights_of(model), params)) > 1e-3

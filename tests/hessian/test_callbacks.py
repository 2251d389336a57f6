"""Callbacks write their numbers into History; values match the measures."""

import math

import keras
import numpy as np
import pytest

import keras_sam
from keras_sam import hessian
from keras_sam.callbacks import HessianMetrics, SmoothnessEstimates
from keras_sam.callbacks.smoothness import estimates
from keras_sam.hessian import CurvatureOperator
from tests.hessian.references import BACKEND

# Epochs of the main HessianMetrics test: the second one (warm starts) on
# TensorFlow only; eager PyTorch pays ~8 s per epoch of s2 / s3 at tol 1e-6.
EPOCHS = 2 if BACKEND == "tensorflow" else 1


@pytest.fixture(scope="module")
def training_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 4)).astype("float32")
    y = rng.integers(0, 3, size=48)
    return x, y


def make_model(rho=None):
    keras.utils.set_random_seed(3)
    layers = [
        keras.Input((4,)),
        keras.layers.Dense(6, activation="tanh"),
        keras.layers.BatchNormalization(),
        keras.layers.Dense(3),
    ]
    model = keras.Sequential(layers)
    if rho is not None:
        model = keras_sam.sam(model, rho=rho)
    model.compile(
        keras.optimizers.SGD(0.05),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def test_hessian_metrics_in_history_match_measures(training_data):
    x, y = training_data
    model = make_model(rho=0.02)
    cb = HessianMetrics(
        (x, y),
        num_examples=12,
        chunk_size=12,
        orders=(2, 3),
        trace=True,
        stability=True,
        trace_samples=10,
        tol=1e-6,
    )
    history = model.fit(x, y, batch_size=16, epochs=EPOCHS, verbose=0, callbacks=[cb])
    names = cb.names()
    assert names == [
        "sharpness", "trace", "trace_stderr", "s2", "s3",
        "stability_sharpness", "stability_s2", "stability_s3",
    ]  # fmt: skip
    for name in names:
        assert len(history.history[name]) == EPOCHS
        assert all(math.isfinite(v) for v in history.history[name])
    # The last logged values are the measures at the final weights on the subset.
    subset = cb.data
    a = hessian.sharpness(model, subset, tol=1e-6)
    s2 = hessian.non_uniformity(model, subset, order=2, tol=1e-6)
    s3 = hessian.non_uniformity(model, subset, order=3, tol=1e-6)
    assert history.history["sharpness"][-1] == pytest.approx(a, rel=1e-4)
    assert history.history["s2"][-1] == pytest.approx(s2, rel=1e-3)
    ratios = hessian.stability_ratios(0.05, 0.02, a, s2, s3)
    for name in ("sharpness", "s2", "s3"):
        logged = history.history[f"stability_{name}"][-1]
        assert logged == pytest.approx(ratios[name], rel=1e-3)
    assert len(subset[0]) == 12 and len(cb.records) == EPOCHS


def test_hessian_metrics_every_and_steps(training_data):
    x, y = training_data
    model = make_model()  # plain Keras: rho = 0
    cb = HessianMetrics((x, y), every=2, num_examples=None, stability=True, prefix="h/")
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[cb])
    # Only the measured epoch (the second) is logged: no NaN placeholders.
    assert len(history.history["h/sharpness"]) == 1
    assert [r["epoch"] for r in cb.records] == [1]
    assert history.history["h/stability_sharpness"][0] == pytest.approx(
        history.history["h/sharpness"][0] * 0.05 / 2
    )
    # every=5 in a one-epoch fit: nothing measured, nothing logged.
    late = HessianMetrics((x, y), every=5, num_examples=8)
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[late])
    assert "sharpness" not in history.history and late.records == []
    steps = HessianMetrics((x, y), every=2, unit="step", trace=False, orders=())
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[steps])
    assert [r["step"] for r in steps.records] == [2]
    assert steps.get_config()["unit"] == "step"


def test_smoothness_estimates_along_a_step(training_data):
    x, y = training_data
    model = make_model(rho=0.05)
    cb = SmoothnessEstimates((x, y), num_examples=32, unit="step", every=3)
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[cb])
    assert [r["step"] for r in cb.records] == [3, 6]
    assert history.history["beta_hat"][-1] == cb.records[-1]["beta_hat"] > 0
    assert history.history["alpha_hat"][-1] == cb.records[-1]["alpha_hat"] > 0


def test_smoothness_formulas_on_quadratic():
    """Linear model, squared loss: f is quadratic with Hessian H, so
    beta_hat = max_gamma ||H gamma d|| / ||gamma d|| = ||H d|| / ||d||."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 2)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0]])).astype("float32")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    op = CurvatureOperator(model, (x, y))
    x0 = np.concatenate([v.numpy().ravel() for v in model.trainable_variables])
    d = rng.normal(size=x0.shape) * 0.1
    values = estimates(op, x0, x0 + d)
    xb = np.concatenate([x, np.ones((30, 1))], axis=1).astype(np.float64)
    h = 2 * xb.T @ xb / 30
    assert values["beta_hat"] == pytest.approx(
        np.linalg.norm(h @ d) / np.linalg.norm(d), rel=1e-4
    )
    # alpha_hat by hand: min over gamma of ||g||^2 / f at x0 + gamma d.
    w_true = np.array([1.0, -2.0, 0.0])
    alphas = []
    for gamma in np.arange(1, 11) / 10:
        e = x0 + gamma * d - w_true
        f = e @ (xb.T @ xb / 30) @ e
        g = h @ e
        alphas.append(g @ g / f)
    assert values["alpha_hat"] == pytest.approx(min(alphas), rel=1e-3)
    current = np.concatenate([v.numpy().ravel() for v in model.trainable_variables])
    np.testing.assert_allclose(current, x0 + d, rtol=1e-6)


@pytest.mark.parametrize(
    "cls, kwargs, name",
    [
        (HessianMetrics, {"every": 0}, "every"),
        (HessianMetrics, {"unit": "batch"}, "unit"),
        (HessianMetrics, {"orders": (1,)}, "order"),
        (HessianMetrics, {"num_examples": 0}, "num_examples"),
        (HessianMetrics, {"trace": "yes"}, "trace"),
        (SmoothnessEstimates, {"gammas": (0.0, 1.0)}, "gammas"),
        (SmoothnessEstimates, {"gammas": (0.5, True)}, "gammas"),
        (SmoothnessEstimates, {"gammas": ()}, "gammas"),
        (SmoothnessEstimates, {"f_star": None}, "f_star"),
        (SmoothnessEstimates, {"f_star": float("nan")}, "f_star"),
        (SmoothnessEstimates, {"prefix": 3}, "prefix"),
        (SmoothnessEstimates, {"unit": "epochs"}, "unit"),
    ],
)
def test_bad_arguments(training_data, cls, kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        cls(training_data, **kwargs)


def two_models():
    first, second = make_model(), make_model()
    kernel = second.layers[-1].kernel  # a different model: logits scaled
    kernel.assign(kernel * 3.0)
    return first, second


@pytest.mark.backends("tensorflow")  # backend-neutral bookkeeping
def test_hessian_metrics_reused_on_another_model_measures_it(training_data):
    """Issue 14 point 6: each fit starts afresh (operator, warm starts,
    records), so a callback reused on a second model measures that one."""
    x, y = training_data
    cb = HessianMetrics((x, y), num_examples=24, tol=1e-6)
    first, second = two_models()
    for model in (first, second):
        history = model.fit(x, y, batch_size=48, epochs=1, verbose=0, callbacks=[cb])
    expected = hessian.sharpness(second, cb.data, tol=1e-6)
    assert expected > 1.5 * hessian.sharpness(first, cb.data, tol=1e-6)
    assert history.history["sharpness"][-1] == pytest.approx(expected, rel=1e-4)
    assert len(cb.records) == 1


@pytest.mark.backends("tensorflow")  # backend-neutral bookkeeping
def test_smoothness_reused_on_another_model_measures_it(training_data):
    x, y = training_data
    first, second = two_models()
    start = [w.numpy() for w in second.weights]
    first_weights = None
    cb = SmoothnessEstimates((x, y), num_examples=24, unit="step", every=1)
    for model in (first, second):
        model.fit(x, y, batch_size=48, epochs=1, verbose=0, callbacks=[cb])
        first_weights = first_weights or [w.numpy() for w in first.weights]
    # The first model is left alone, and the step measured is the second's:
    # the same as a fresh callback sees on a replica of the second model.
    for w, saved in zip(first.weights, first_weights):
        np.testing.assert_array_equal(w.numpy(), saved)
    replica = make_model()
    for v, w in zip(replica.weights, start):
        v.assign(w)
    fresh = SmoothnessEstimates((x, y), num_examples=24, unit="step", every=1)
    replica.fit(x, y, batch_size=48, epochs=1, verbose=0, callbacks=[fresh])
    assert len(cb.records) == 1
    for name in ("beta_hat", "alpha_hat"):
        assert cb.records[0][name] == pytest.approx(fresh.records[0][name])


def test_smoothness_measures_the_step_taken_mid_epoch(training_data):
    """The third of three steps, measured by its hooks mid-epoch (on JAX the
    trainer holds the weights then), equals the estimate on that step
    replayed on a replica: two steps, then one."""
    x, y = training_data

    def mlp():
        keras.utils.set_random_seed(5)
        model = keras.Sequential(
            [
                keras.Input((4,)),
                keras.layers.Dense(6, activation="tanh"),
                keras.layers.Dense(3),
            ]
        )
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        model.compile(keras.optimizers.SGD(0.5), loss)
        return model

    model = mlp()
    cb = SmoothnessEstimates((x, y), num_examples=None, unit="step", every=3)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[cb])
    replica = mlp()
    replica.fit(x[:32], y[:32], batch_size=16, shuffle=False, verbose=0)
    op = CurvatureOperator(replica, (x, y))
    x0 = np.concatenate([v.numpy().ravel() for v in replica.trainable_variables])
    _, g0 = op.gradient()
    replica.fit(x[32:], y[32:], batch_size=16, shuffle=False, verbose=0)
    x1 = np.concatenate([v.numpy().ravel() for v in replica.trainable_variables])
    expected = estimates(op, x0, x1, g0=g0)
    assert [r["step"] for r in cb.records] == [3]
    for name in ("beta_hat", "alpha_hat"):
        assert cb.records[0][name] == pytest.approx(expected[name], rel=1e-4)


def test_bad_data_fails_early_and_clearly(training_data):
    x, y = training_data
    # Different lengths: at construction, naming the parts and lengths.
    with pytest.raises(ValueError, match=r"same number of examples.*y: \[20\]"):
        HessianMetrics((x, y[:20]))
    with pytest.raises(ValueError, match="at least one example"):
        HessianMetrics((x[:0], y[:0]))
    # The wrong width: when fit starts, not after `every` epochs.
    model = make_model()
    wide = np.zeros((8, 5), "float32")
    cb = HessianMetrics((wide, y[:8]), every=3)
    with pytest.raises(ValueError, match="HessianMetrics: `data` does not fit"):
        model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[cb])

"""Hessian-vector products against dense Hessians of tiny models."""

import dataclasses

import keras
import numpy as np
import pytest

import keras_sam
import keras_sam.hessian as hessian
from keras_sam.hessian import CurvatureOperator
from keras_sam.hessian._functions import CurvatureFunctions, Settings
from keras_sam.hessian._operators import _backend_functions
from tests.hessian import references


def rel_err(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


def test_hvp_equals_dense_hessian_times_v(case):
    op = CurvatureOperator(case.model, (case.x, case.y), batch_size=5)  # 5 + 5 + 2
    forward = CurvatureOperator(case.model, (case.x, case.y), forward_over_reverse=True)
    rng = np.random.default_rng(0)
    for _ in range(2):
        v = rng.normal(size=op.dim)
        assert rel_err(op.hvp(v), case.h @ v) < 1e-5
        assert rel_err(forward.hvp(v), case.h @ v) < 1e-5


@pytest.mark.backends("tensorflow")  # tf.data input
def test_dataset_and_arrays_agree_with_batch_weighting(classifier):
    import tensorflow as tf

    c = classifier
    v = np.random.default_rng(1).normal(size=c.h.shape[0])
    ds = tf.data.Dataset.from_tensor_slices((c.x, c.y)).batch(7)  # 7 + 5
    op = CurvatureOperator(c.model, ds)
    assert op.num_examples == 12
    assert rel_err(op.hvp(v), c.h @ v) < 1e-5


def test_sample_weights_follow_keras_weighting(regressor):
    c = regressor
    w = np.linspace(0.0, 2.0, 12).astype("float32")
    op = CurvatureOperator(c.model, (c.x, c.y, w), batch_size=5)
    v = np.random.default_rng(2).normal(size=op.dim)
    expected = np.einsum("i,ijk->jk", w, c.hessians) / 12 @ v
    assert rel_err(op.hvp(v), expected) < 1e-5


@pytest.mark.backends("tensorflow")  # tf.function tracing counts
def test_traced_once_across_batch_sizes(regressor):
    c = regressor
    op = CurvatureOperator(c.model, (c.x, c.y), batch_size=5, chunk_size=5)
    v = np.ones(op.dim)
    op.hvp(v)
    op.moment(v, 2)
    hvp_traces = op._fn._hvps[-1].experimental_get_tracing_count()
    power_traces = op._fn.power(2, "vectorized").experimental_get_tracing_count()
    for size in (3, 4, 12):
        other = CurvatureOperator(c.model, (c.x, c.y), batch_size=size, chunk_size=size)
        other.hvp(v)
        other.moment(v, 2)
    assert op._fn._hvps[-1].experimental_get_tracing_count() == hvp_traces == 1
    power = op._fn.power(2, "vectorized")
    assert power.experimental_get_tracing_count() == power_traces == 1


def test_per_example_hvp_vectorized_equals_dense_and_loop(case):
    op = CurvatureOperator(case.model, (case.x, case.y), chunk_size=5)
    v = np.random.default_rng(3).normal(size=op.dim)
    per_example = op.per_example_hvp(v)
    expected = case.hessians @ v
    assert rel_err(per_example, expected) < 1e-5
    assert rel_err(per_example, op.per_example_hvp_looped(v)) < 1e-5
    with pytest.raises(ValueError, match="`path` must be one of"):
        op.per_example_hvp(v, path="loop")


@pytest.mark.parametrize("k", [2, 3, 4])
def test_moments_equal_dense(classifier, k):
    c = classifier
    op = CurvatureOperator(c.model, (c.x, c.y), chunk_size=5)
    v = np.random.default_rng(k).normal(size=op.dim)
    m_k = np.mean([np.linalg.matrix_power(h, k) for h in c.hessians], axis=0)
    assert rel_err(op.moment(v, k), m_k @ v) < 1e-4
    gap = m_k - np.linalg.matrix_power(c.h, k)
    assert rel_err(op.moment_gap(v, k), gap @ v) < 1e-4


@pytest.mark.parametrize("batch_size", [None, 5])
def test_square_gap_centered_equals_dense_with_weights(classifier, batch_size):
    # (M_2 - H^2) v as sum_i w_i H_i (H_i v - H v) / n: per-example weights,
    # several batches, chunks of 5 (two real, one padded on JAX).
    c = classifier
    w = np.random.default_rng(5).uniform(0.2, 2.0, size=len(c.x)).astype("float32")
    op = CurvatureOperator(c.model, (c.x, c.y, w), batch_size=batch_size, chunk_size=5)
    v = np.random.default_rng(6).normal(size=op.dim)
    n = len(c.x)
    h = np.einsum("i,ijk->jk", w, c.hessians) / n
    m2 = np.einsum("i,ijk->jk", w, c.hessians @ c.hessians) / n
    before = op.num_products
    assert rel_err(op.moment_gap(v, 2), (m2 - h @ h) @ v) < 1e-4
    assert op._mean_is_batch is True
    assert rel_err(op.moment_gap(v, 2), (m2 - h @ h) @ v) < 1e-4
    # One batch and two per-example products a call; the first call checks
    # (one batch and one per-example product on the first chunk).
    assert op.num_products - before == 2 + 3 + 3


def test_square_gap_keeps_batch_hessian_where_examples_mix(classifier):
    # Batch norm in training mode: the batch Hessian is not the mean of the
    # per-example ones (batch statistics), so the gap stays M_2 - H^2 with
    # H the batch's.
    c = classifier
    op = CurvatureOperator(c.model, (c.x, c.y), training=True, chunk_size=5)
    v = np.random.default_rng(7).normal(size=op.dim)
    got = op.moment_gap(v, 2)
    assert op._mean_is_batch is False
    expected = op.moment(v, 2) - op.power(v, 2)
    assert rel_err(got, expected) < 1e-6
    assert rel_err(op.per_example_hvp(v).mean(axis=0), op.hvp(v)) > 1e-2


def test_sam_model_wrapper_shares_weights(regressor):
    c = regressor
    wrapped = keras_sam.sam(c.model, rho=0.1)
    wrapped.compile("sgd", "mse")
    v = np.random.default_rng(4).normal(size=c.h.shape[0])
    op = CurvatureOperator(wrapped, (c.x, c.y))
    assert rel_err(op.hvp(v), c.h @ v) < 1e-5


def test_gradient_and_loss(regressor):
    c = regressor
    op = CurvatureOperator(c.model, (c.x, c.y), batch_size=5)
    loss, grad = op.gradient()
    expected = float(keras.losses.MeanSquaredError()(c.y, c.model(c.x)))
    assert loss == pytest.approx(expected, rel=1e-5)
    assert op.loss() == pytest.approx(expected, rel=1e-5)
    dense = references.gradient(c.model, c.x, c.y, c.loss_fn)
    assert rel_err(grad, dense) < 1e-5


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"data": [1, 2, 3]}, "data"),
        ({"data": "xy"}, "data"),
        ({"training": 1}, "training"),
        ({"batch_size": 0}, "batch_size"),
        ({"chunk_size": "8"}, "chunk_size"),
        ({"loss": 3}, "loss"),
        ({"data": (np.zeros((0, 3), "float32"), np.zeros((0, 2)))}, "data"),
    ],
)
def test_bad_arguments(regressor, kwargs, name):
    c = regressor
    options = {"data": (c.x, c.y), **kwargs}
    with pytest.raises(ValueError, match=f"`{name}`"):
        CurvatureOperator(c.model, **options)


def test_default_chunk_size_follows_the_model_size():
    from keras_sam.hessian._operators import default_chunk_size

    # 1 GiB for about 6 float32 copies of the weights per example.
    assert default_chunk_size(669_706) == 66  # the README's 784-512-512-10
    assert default_chunk_size(50) == 256
    assert default_chunk_size(10**8) == 16


def test_uncompiled_model_needs_loss():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="`loss`"):
        CurvatureOperator(model, (np.ones((2, 2)), np.ones((2, 1))))


def test_pruned_model_curvature_is_restricted_to_unpruned_weights():
    from tests.hessian.conftest import dense_per_example_hessians

    keras.utils.set_random_seed(4)
    rng = np.random.default_rng(4)
    inputs = keras.Input((3,))
    h = keras.layers.Dense(4, activation="tanh")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(h))
    x = rng.normal(size=(6, 3)).astype("float32")
    y = rng.normal(size=(6, 2)).astype("float32")
    keras_sam.sparsity.prune_at_init(model, 0.5, method="random", seed=0)
    keep = np.concatenate(
        [
            np.ravel(keras.ops.convert_to_numpy(v.constraint.mask))
            if v.path.endswith("kernel")
            else np.ones(int(np.prod(v.shape)))
            for v in model.trainable_variables
        ]
    )
    assert 0 < keep.sum() < len(keep)

    def loss_fn(yt, yp):
        return keras.losses.mean_squared_error(yt, yp)

    hessians = dense_per_example_hessians(model, loss_fn, x, y)
    p = np.diag(keep)
    restricted = [p @ hi @ p for hi in hessians]
    h_p = np.mean(restricted, axis=0)
    op = CurvatureOperator(model, (x, y), loss="mse", chunk_size=4)
    v = rng.normal(size=op.dim)
    assert rel_err(op.hvp(v), h_p @ v) < 1e-5
    assert rel_err(op.gradient()[1], keep * op.gradient()[1]) == 0
    m2 = np.mean([hi @ hi for hi in restricted], axis=0)
    assert rel_err(op.moment(v, 2), m2 @ v) < 1e-4
    full = CurvatureOperator(model, (x, y), loss="mse", masked=False)
    assert rel_err(full.hvp(v), hessians.mean(axis=0) @ v) < 1e-5
    assert rel_err(full.hvp(v), h_p @ v) > 1e-2  # the restriction matters
    top = np.linalg.eigvalsh(h_p)[-1]
    assert abs(keras_sam.hessian.sharpness(op) - top) < 1e-3 * abs(top)


@pytest.mark.backends("torch")
def test_forced_vectorization_that_vmap_refuses_names_the_option():
    model = keras.Sequential(
        [
            keras.Input((3, 3, 1)),
            keras.layers.Conv2D(2, 1),
            keras.layers.DepthwiseConv2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(1),
        ]
    )
    x = np.ones((2, 3, 3, 1), "float32")
    op = CurvatureOperator(model, (x, np.ones((2, 1), "float32")), loss="mse")
    assert op.per_example_hvp(np.ones(op.dim)).shape == (2, op.dim)
    # Decided: vmap refuses DepthwiseConv2D after a convolution.
    assert op.vectorized is False
    forced = CurvatureOperator(
        model, (x, np.ones((2, 1), "float32")), loss="mse", vectorize=True
    )
    with pytest.raises(ValueError, match="vectorize=False"):
        forced.per_example_hvp(np.ones(op.dim))


def test_shared_products_equal_dense_products(case):
    # `matvec.drive` (one backend call: the loss and gradient once, then one
    # second differentiation per product) against the dense Hessian, step by
    # step: every product a Lanczos run asked for is checked.
    op = CurvatureOperator(case.model, (case.x, case.y))
    asked = []

    def recorder():
        v = np.random.default_rng(3).normal(size=op.dim)
        for _ in range(4):
            asked.append(v)
            product = yield v
            asked.append(product)
            v = product + np.random.default_rng(len(asked)).normal(size=op.dim)
        return "done"

    assert op.matvec.drive(recorder()) == "done"
    assert op.num_products == 4
    for v, product in zip(asked[::2], asked[1::2]):
        assert rel_err(product, case.h @ v) < 1e-5
    assert rel_err(op.matvec(asked[0]), case.h @ asked[0]) < 1e-5


def test_shared_and_per_product_solvers_agree(classifier):
    c = classifier
    shared = CurvatureOperator(c.model, (c.x, c.y))
    several = CurvatureOperator(c.model, (c.x, c.y), batch_size=5)  # per product
    top = np.linalg.eigvalsh(c.h)[-1]
    for op in (shared, several):
        result = hessian.sharpness_estimate(op, tol=1e-8, max_iter=op.dim)
        assert result.eigenvalues[0] == pytest.approx(top, rel=1e-5)
        t = hessian.trace_estimate(op, rtol=None, num_samples=20, seed=4)
        plain = hessian.solvers.hutchinson(op.hvp, op.dim, 20, seed=4)
        assert t.estimate == pytest.approx(plain.estimate, rel=1e-5)
        assert t.matvecs == 20
    density = hessian.spectral_density(shared, num_steps=shared.dim)
    assert np.nanmax(density.nodes) == pytest.approx(top, rel=1e-5)


def test_a_solver_error_inside_shared_products_is_raised(classifier):
    c = classifier
    op = CurvatureOperator(c.model, (c.x, c.y))

    def failing():
        yield np.ones(op.dim)
        raise ZeroDivisionError("from the solver")

    with pytest.raises(ZeroDivisionError, match="from the solver"):
        op.matvec.drive(failing())
    # The operator stays usable.
    v = np.ones(op.dim)
    assert rel_err(op.matvec(v), c.h @ v) < 1e-5
    with pytest.raises(ValueError, match="shape"):
        op.matvec.drive(iter([np.ones(op.dim + 1)]))


def test_backend_functions_are_the_base_interface():
    # Every backend implements the base's abstract methods (the interface)
    # and nothing else public; the settings are one frozen object.
    functions = _backend_functions()
    assert issubclass(functions, CurvatureFunctions)
    assert not functions.__abstractmethods__
    public = {n for n in dir(functions) if not n.startswith("_")}
    assert public <= {n for n in dir(CurvatureFunctions) if not n.startswith("_")}
    with pytest.raises(TypeError, match="abstract"):
        CurvatureFunctions(None, None, Settings(), None, None, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().training = True


@pytest.mark.backends("jax")
def test_solver_loop_callback_is_ordered(classifier):
    # An unordered `io_callback` in the solver loop deadlocked now and then
    # from the second call on where XLA's CPU thread pool has one thread (a
    # process pinned to one CPU, as a one-CPU SLURM task): seen on a loaded
    # machine, a race, so the program is checked instead of the hang.
    import jax

    c = classifier
    op = CurvatureOperator(c.model, (c.x, c.y))
    fn = op._fn
    x, y, sw = fn.tensors(op.batches[0][:3])
    program = str(jax.make_jaxpr(fn._shared)(fn._values(), x, y, sw, None))
    assert program.count("io_callback") == 2
    assert "ordered=True" in program and "ordered=False" not in program

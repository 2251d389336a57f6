"""keras_sam.sparsity against independent references: hand counts, NumPy SNIP
scores and SAM steps (tests/reference.py), the TF-MOT schedule objects."""

import keras
import numpy as np
import pytest

import keras_sam
from keras_sam import sparsity
from tests import reference
from tests.conftest import JIT_COMPILE
from tests.sparsity.builders import LR, cnn, kernels, masks, mlp, params_of

# Slots made before the step is traced: one trace, not two (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("optimizer_built_before_tracing")


def test_prunable_weights_are_kernels_only():
    model = cnn()
    paths = [t.path for t in sparsity.prunable_weights(model)]
    conv, _, depthwise, separable, _, dense = (layer.name for layer in model.layers[1:])
    assert paths == [
        f"{conv}/kernel",
        f"{depthwise}/kernel",
        f"{separable}/depthwise_kernel",
        f"{separable}/pointwise_kernel",
        f"{dense}/kernel",
    ]
    embedding = keras.Sequential([keras.Input((3,)), keras.layers.Embedding(10, 4)])
    assert sparsity.prunable_weights(embedding) == []


@pytest.mark.parametrize("level", [0.3, 0.75])
def test_random_gives_every_kernel_the_same_exact_sparsity(level):
    model = cnn()
    biases = [v.numpy() for v in model.weights if "bias" in v.path]
    sparsity.prune_at_init(model, level, seed=1)
    for kernel, mask in zip(kernels(model), masks(model)):
        n = kernel.size
        assert np.count_nonzero(mask) == n - round(level * n)
        # Zeros exactly where the mask is, and only there.
        np.testing.assert_array_equal(kernel != 0, mask == 1)
    for before, v in zip(biases, [v for v in model.weights if "bias" in v.path]):
        np.testing.assert_array_equal(before, v.numpy())
    # Different seeds, different masks; same seed, same masks.
    again = sparsity.prune_at_init(cnn(), level, seed=1)
    other = sparsity.prune_at_init(cnn(), level, seed=2)
    assert all(np.array_equal(a, b) for a, b in zip(masks(model), masks(again)))
    assert not all(np.array_equal(a, b) for a, b in zip(masks(model), masks(other)))


def test_snip_masks_equal_numpy_scores_and_one_global_threshold(regression_data):
    x, y = regression_data
    model = mlp(sam=False)
    model.compile("sgd", "mse")
    params = params_of(model)
    batches = [(x[:32], y[:32]), (x[32:], y[32:])]
    grads = [reference.loss_and_grads(params, bx, by)[1] for bx, by in batches]
    scores = [
        np.abs(params[i] * (grads[0][i] + grads[1][i]) / 2) for i in (0, 2)
    ]  # kernels W1, W2
    flat = np.concatenate([s.ravel() for s in scores])
    level = 0.6
    k = round(level * flat.size)
    threshold = np.sort(flat)[k - 1]
    assert np.sort(flat)[k] > threshold  # no tie at the cut
    expected = [(s > threshold).astype("float32") for s in scores]

    sparsity.prune_at_init(model, level, method="snip", data=batches)
    for got, want in zip(masks(model), expected):
        np.testing.assert_array_equal(got, want)
    report = sparsity.sparsity_report(model)
    assert report.size - report.nonzero == k
    # One global cut, not one per layer: the layers end up unequal.
    assert report.layers[0].sparsity != report.layers[1].sparsity


def test_snip_accepts_a_dataset_and_a_loss(regression_data):
    import tensorflow as tf

    x, y = regression_data
    model = mlp(sam=False)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
    sparsity.prune_at_init(model, 0.5, method="snip", data=data, loss="mse")
    assert sparsity.sparsity_report(model).sparsity == pytest.approx(0.5, abs=0.01)


@pytest.mark.backends("tensorflow")  # tf.distribute
def test_snip_inside_a_strategy_scope_equals_outside(regression_data):
    import tensorflow as tf

    x, y = regression_data
    plain = mlp(sam=False)
    sparsity.prune_at_init(plain, 0.6, method="snip", data=(x, y), loss="mse")
    with tf.distribute.MirroredStrategy().scope():  # cross-replica context
        mirrored = mlp(sam=False)
        sparsity.prune_at_init(mirrored, 0.6, method="snip", data=(x, y), loss="mse")
    for got, want in zip(masks(mirrored), masks(plain)):
        np.testing.assert_array_equal(got, want)


def test_rescale_keeps_each_kernels_kept_weights_over_sqrt_density(regression_data):
    x, y = regression_data
    plain, scaled = mlp(sam=False), mlp(sam=False)
    before = params_of(scaled)
    for model, rescale in [(plain, False), (scaled, True)]:
        sparsity.prune_at_init(model, 0.75, method="snip", data=(x, y), loss="mse",
                               rescale=rescale)  # fmt: skip
    for i, mask in zip((0, 2), masks(scaled)):
        density = mask.mean()
        assert 0 < density < 1
        np.testing.assert_allclose(
            params_of(scaled)[i], before[i] * mask / np.sqrt(density), rtol=1e-6
        )
        np.testing.assert_array_equal(params_of(plain)[i], before[i] * mask)
    np.testing.assert_array_equal(
        params_of(scaled)[1], before[1]
    )  # biases as they were
    with pytest.raises(ValueError, match="`rescale`"):
        sparsity.prune_at_init(mlp(sam=False), 0.5, rescale="yes")


def test_one_masked_sam_step_matches_numpy(regression_data):
    """Masked g (so the norm ignores pruned weights), eps and g2."""
    x, y = regression_data
    model = mlp(rho=0.3)
    sparsity.prune_at_init(model, 0.5, seed=0)
    m1, m2 = masks(model)
    mask = [m1, np.ones(16), m2, np.ones(1)]
    params = params_of(model)
    _, g = reference.loss_and_grads(params, x, y)
    g = [a * b for a, b in zip(g, mask)]
    eps = reference.epsilon("sam", g, params, 0.3)
    _, g2 = reference.loss_and_grads([p + e for p, e in zip(params, eps)], x, y)
    expected = [p - LR * a * b for p, a, b in zip(params, g2, mask)]
    model.compile(keras.optimizers.SGD(LR), loss="mse")
    model.train_on_batch(x, y)
    for got, want in zip(params_of(model), expected):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


class ConstantEps(keras_sam.perturbations.Perturbation):
    """eps = rho everywhere, whatever the gradient: only the step's mask can
    zero it on pruned weights."""

    def __call__(self, gradients, weights, rho):
        return [keras.ops.ones_like(w) * rho for w in weights]


def test_eps_is_zero_on_pruned_weights(regression_data):
    x, y = regression_data
    model = mlp(rho=0.2, perturbation=ConstantEps())
    sparsity.prune_at_init(model, 0.5, seed=0)
    m1, m2 = masks(model)
    params = params_of(model)
    eps = [0.2 * m1, 0.2 * np.ones(16), 0.2 * m2, 0.2 * np.ones(1)]
    masked_loss, _ = reference.loss_and_grads(
        [p + e for p, e in zip(params, eps)], x, y
    )
    unmasked_loss, _ = reference.loss_and_grads([p + 0.2 for p in params], x, y)
    assert abs(masked_loss - unmasked_loss) > 1e-3  # the check can fail
    model.compile(keras.optimizers.SGD(0.0), loss="mse")
    logs = model.train_on_batch(x, y, return_dict=True)
    assert logs["perturbed_loss"] == pytest.approx(masked_loss, rel=1e-5)


OPTIMIZERS = {
    "sgd_momentum_clip": lambda: keras.optimizers.SGD(0.05, momentum=0.9, clipnorm=1.0),
    "adamw": lambda: keras.optimizers.AdamW(0.01, weight_decay=0.1),
    "adamw_accumulate": lambda: keras.optimizers.AdamW(
        0.01, weight_decay=0.1, gradient_accumulation_steps=2
    ),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("sam", [True, False], ids=["sam", "plain"])
def test_pruned_weights_stay_zero_through_training(regression_data, name, sam):
    x, y = regression_data
    model = mlp(sam=sam, rho=0.1)
    sparsity.prune_at_init(model, 0.7, seed=0)
    before = kernels(model)
    model.compile(OPTIMIZERS[name](), loss="mse")
    model.fit(x, y, batch_size=16, epochs=10, verbose=0)  # 40 steps
    for old, new, mask in zip(before, kernels(model), masks(model)):
        assert np.all(new[mask == 0] == 0.0)
        assert np.any(new[mask == 1] != old[mask == 1])  # the rest trained


def test_masks_under_jit_compile_and_mixed_precision(regression_data, mixed_precision):
    mixed_precision("mixed_float16")
    x, y = regression_data
    model = mlp(rho=0.1)
    sparsity.prune_at_init(model, 0.5, seed=0)
    model.compile(
        keras.optimizers.SGD(0.05, momentum=0.9),
        loss="mse",
        jit_compile=JIT_COMPILE[-1],
    )
    model.fit(x, y, batch_size=16, epochs=3, verbose=0)
    for new, mask in zip(kernels(model), masks(model)):
        assert np.all(new[mask == 0] == 0.0)
        assert np.count_nonzero(new) == np.count_nonzero(mask)


def test_save_and_load_keep_masks_and_keep_pruning(regression_data, tmp_path):
    x, y = regression_data
    images = np.random.default_rng(0).normal(size=(16, 8, 8, 3)).astype("float32")
    for model, data in ((mlp(rho=0.1), (x, y)), (cnn(), (images, images[:, 0, 0]))):
        sparsity.prune_at_init(model, 0.6, seed=0)
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
        model.fit(*data, batch_size=8, epochs=1, verbose=0)
        path = tmp_path / f"{model.name}.keras"
        model.save(path)
        loaded = keras.models.load_model(path)
        assert type(loaded) is type(model)
        assert len(masks(loaded)) == len(masks(model)) > 0
        for a, b in zip(masks(model), masks(loaded)):
            np.testing.assert_array_equal(a, b)
        # The loaded kernels carry the mask as their constraint again.
        loaded.fit(*data, batch_size=8, epochs=2, verbose=0)
        for new, mask in zip(kernels(loaded), masks(loaded)):
            assert np.all(new[mask == 0] == 0.0)
            assert np.count_nonzero(new) == np.count_nonzero(mask)


def test_strip_masks_exports_plain_model_with_zeros(regression_data):
    x, _ = regression_data
    model = mlp(rho=0.1)
    sparsity.prune_at_init(model, 0.5, seed=0)
    plain = sparsity.strip_masks(model)
    assert "KernelMask" not in str(plain.get_config())
    assert len(plain.weights) == len(model.weights) - 2
    np.testing.assert_allclose(plain.predict(x, verbose=0), model.predict(x, verbose=0))
    for a, b in zip(kernels(plain), kernels(model)):
        np.testing.assert_array_equal(a, b)


def test_report_counts():
    model = mlp(hidden=4)
    sparsity.prune_at_init(model, 0.5, seed=0)
    report = sparsity.sparsity_report(model)
    names = [layer.name for layer in model.layers[1:]]
    assert [(r.path, r.size, r.nonzero) for r in report.layers] == [
        (f"{names[0]}/kernel", 20, 10),
        (f"{names[1]}/kernel", 4, 2),
    ]
    assert (report.size, report.nonzero, report.sparsity) == (24, 12, 0.5)
    assert "global" in str(report)


def conv_net(width):
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(width, 3, use_bias=False)(inputs)
    h = keras.layers.Conv2D(width, 3, use_bias=False)(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(10)(h))


def test_sparsity_for_budget_matches_hand_counts():
    def count(w):  # 3x3x3xw + 3x3xwxw + wx10
        return 27 * w + 9 * w * w + 10 * w

    small = conv_net(16)
    assert count(16) == 2896
    for width, paper in [(24, 0.56), (32, 0.75), (64, 0.94)]:
        level = sparsity.sparsity_for_budget(small, conv_net(width))
        assert level == pytest.approx(1 - count(16) / count(width), abs=1e-12)
        assert level == pytest.approx(paper, abs=0.05)
    wide = conv_net(32)
    level = sparsity.sparsity_for_budget(small, wide)
    sparsity.prune_at_init(wide, level, seed=0)
    assert abs(sparsity.sparsity_report(wide).nonzero - count(16)) <= 3
    assert sparsity.sparsity_for_budget(100, conv_net(16)) == 1 - 100 / 2896
    with pytest.raises(ValueError, match="budget"):
        sparsity.sparsity_for_budget(conv_net(32), small)
    for bad in [0, 100.0, True, "100"]:
        with pytest.raises(ValueError, match="`reference` must be a positive integer"):
            sparsity.sparsity_for_budget(bad, small)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), "0.5", True, None])
def test_bad_sparsity_raises(bad):
    with pytest.raises(ValueError, match=r"`sparsity` must be a number in \[0, 1\)"):
        sparsity.prune_at_init(mlp(sam=False), bad)


def test_bad_method_and_options_raise(regression_data):
    message = r"`method` must be one of \['random', 'snip'\]"
    with pytest.raises(ValueError, match=message):
        sparsity.prune_at_init(mlp(sam=False), 0.5, method="magnitude")
    with pytest.raises(ValueError, match="needs `data`"):
        sparsity.prune_at_init(mlp(sam=False), 0.5, method="snip")
    with pytest.raises(ValueError, match="needs a loss"):
        sparsity.prune_at_init(mlp(sam=False), 0.5, method="snip", data=regression_data)
    with pytest.raises(ValueError, match="`m_by_n` must be"):
        sparsity.GradualPruning(lambda step: (True, 0.5), m_by_n=(4, 2))
    with pytest.raises(ValueError, match="`name` must be one of"):
        sparsity.tfmot_schedule("Cubic")

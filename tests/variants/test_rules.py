"""The variant rules alone, on NumPy tensors: degenerate cases, zero norms,
options and serialization (no model, no training step)."""

import keras
import numpy as np
import pytest

from keras_sam import variants
from keras_sam.perturbations import SAM

RNG = np.random.default_rng(0)
G = [RNG.normal(size=(3, 2)).astype("float32"), RNG.normal(size=(2,)).astype("float32")]
GS = [a + RNG.normal(scale=0.3, size=a.shape).astype("float32") for a in G]
ZERO = [np.zeros_like(a) for a in G]


def state_of(variant):
    return [np.zeros(s, d) for s, d in variant.state_shapes(G)]


def combine(variant, g, gs, second=True, state=None, step=0):
    state = state_of(variant) if state is None else state
    d, new = variant.combine(g, gs, state, step, second)
    return [np.asarray(t) for t in d], [np.asarray(t) for t in new]


def assert_lists_close(a, b, atol=1e-6):
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, atol=atol, rtol=0)


@pytest.mark.parametrize(
    "variant",
    [
        variants.PlainSAM(),
        variants.LookSAM(every=1),
        variants.LazySAM(every=1),
        variants.GSAM(alpha=0.0),
        variants.WSAM(gamma=0.5, decoupled=False),
        variants.FriendlySAM(sigma=0.0),
        variants.RWP(mix=1.0),
        variants.AESAM(threshold=-1e9),
    ],
    ids=repr,
)
def test_degenerate_options_are_sam(variant):
    """d = gs and a second pass on every step."""
    for step in range(3):
        run = variant.needs_second_pass(step, G, state_of(variant))
        assert bool(np.asarray(run))
        d, _ = combine(variant, G, GS, second=True, step=step)
        assert_lists_close(d, GS)


def test_degenerate_perturbations_are_the_rule():
    rule = SAM()
    expected = [np.asarray(e) for e in rule(G, G, 0.1)]
    for variant in (variants.PlainSAM(), variants.FriendlySAM(sigma=0.0)):
        state = state_of(variant)
        eps = variant.perturbation(rule, G, G, 0.1, state, 0)
        assert_lists_close([np.asarray(e) for e in eps], expected)


def flat(tensors):
    return np.concatenate([np.ravel(a) for a in tensors]).astype(np.float64)


def test_looksam_reuses_the_stored_component():
    variant = variants.LookSAM(every=2, alpha=0.5)
    assert bool(variant.needs_second_pass(4, G, [])) and not bool(
        variant.needs_second_pass(5, G, [])
    )
    d, state = combine(variant, G, GS, second=True)
    assert_lists_close(d, GS)
    *gv, gv_norm = state
    g, gs = flat(G), flat(GS)
    expected_gv = gs - (gs @ g) / (g @ g) * g
    np.testing.assert_allclose(flat(gv), expected_gv, atol=1e-5)
    assert gv_norm == pytest.approx(np.linalg.norm(expected_gv), rel=1e-5)
    assert abs(flat(gv) @ g) < 1e-4  # orthogonal to g
    g2 = [2 * a for a in GS]
    d, kept = combine(variant, g2, g2, second=False, state=state)
    g2 = flat(g2)
    expected = g2 + 0.5 * np.linalg.norm(g2) / np.linalg.norm(expected_gv) * expected_gv
    np.testing.assert_allclose(flat(d), expected, rtol=1e-5)
    assert_lists_close(kept, state)


def test_looksam_default_cheap_step_stays_a_descent_direction():
    """The reused part is alpha |g| long whatever is stored, so d.g >=
    (1 - alpha) |g|^2, with equality for a stored direction against g:
    0.8 |g|^2 at the default alpha = 0.2, 0.3 |g|^2 at the paper's 0.7."""
    assert variants.get("looksam") == variants.LookSAM(every=5, alpha=0.2)
    against = [-3.0 * a for a in G]
    state = against + [np.float32(np.linalg.norm(flat(against)))]
    for alpha in (0.2, 0.7):
        d, _ = combine(variants.LookSAM(alpha=alpha), G, G, False, state, step=1)
        assert_lists_close(d, [(1 - alpha) * a for a in G])


def test_gsam_and_wsam_formulas():
    g, gs = flat(G), flat(GS)
    d, _ = combine(variants.GSAM(alpha=0.3), G, GS)
    perp = g - (g @ gs) / (gs @ gs) * gs
    np.testing.assert_allclose(flat(d), gs - 0.3 * perp, rtol=1e-5, atol=1e-6)
    d, _ = combine(variants.WSAM(gamma=0.8, decoupled=False), G, GS)
    np.testing.assert_allclose(flat(d), g + 4.0 * (gs - g), rtol=1e-5, atol=1e-5)
    # Decoupled: the optimizer takes g; 4 (gs - g) goes outside it.
    decoupled = variants.WSAM(gamma=0.8)
    d, _ = combine(decoupled, G, GS)
    np.testing.assert_allclose(flat(d), g, rtol=0, atol=0)
    u = [np.asarray(t) for t in decoupled.decoupled_update(G, GS)]
    np.testing.assert_allclose(flat(u), 4.0 * (gs - g), rtol=1e-5, atol=1e-5)
    assert decoupled.decouples and not variants.WSAM(decoupled=False).decouples


@pytest.mark.parametrize(
    "variant",
    [
        variants.LookSAM(every=2),
        variants.GSAM(),
        variants.WSAM(),
        variants.FriendlySAM(),
        variants.AESAM(),
        variants.RWP(),
    ],
    ids=repr,
)
def test_zero_gradients_never_give_nan(variant):
    state = state_of(variant)
    for second in (True, False):
        for g, gs in ((ZERO, ZERO), (G, ZERO), (ZERO, GS)):
            d, new = combine(variant, g, gs, second=second, state=state)
            assert all(np.isfinite(t).all() for t in d + new)
    eps = variant.perturbation(SAM(), ZERO, G, 0.1, state, 0, seed=1)
    assert all(np.isfinite(np.asarray(e)).all() for e in eps)
    run = variant.needs_second_pass(0, ZERO, state)
    assert np.asarray(run).dtype == bool or isinstance(run, bool)


def test_zero_norms_fall_back_to_g():
    d, _ = combine(variants.GSAM(alpha=0.5), G, ZERO)
    assert_lists_close(d, G)  # gs = 0: no direction to project on
    d, _ = combine(variants.LookSAM(every=3), G, G, second=False)
    assert_lists_close(d, G)  # nothing stored yet (gv = 0)


def test_friendly_sam_subtracts_the_gradient_average():
    variant = variants.FriendlySAM(sigma=1.0, lmbda=0.6)
    m = [np.ones_like(a) for a in G]
    _, new = combine(variant, G, GS, state=m)
    assert_lists_close(new, [0.6 + 0.4 * a for a in G])
    eps = variant.perturbation(lambda g, w, rho: g, G, G, 0.1, m, 0)
    assert_lists_close([np.asarray(e) for e in eps], [a - n for a, n in zip(G, new)])


def test_aesam_runs_sam_on_large_gradients_only():
    variant = variants.AESAM(threshold=0.5, momentum=0.9)
    state = [np.float32(4.0), np.float32(1.0)]
    small = [0.1 * a for a in G]
    large = [10.0 * a for a in G]
    assert not bool(variant.needs_second_pass(0, small, state))
    assert bool(variant.needs_second_pass(0, large, state))


def test_rwp_noise_follows_filter_norms():
    w = np.stack([np.full(1000, 1.0), np.full(1000, 100.0)], axis=1).astype("f4")
    eps = variants.RWP(sigma=0.1).perturbation(None, [w], [w], 0.0, [], 0, seed=3)
    std = np.asarray(eps[0]).std(axis=0)
    norms = np.linalg.norm(w, axis=0)
    np.testing.assert_allclose(std, 0.1 * norms, rtol=0.1)


def test_sam_on_selects_normalization_layers_by_type():
    inputs = keras.Input((4, 4, 3))
    h = keras.layers.Conv2D(2, 3, name="conv")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(3, name="dense")(h)
    h = keras.layers.LayerNormalization(name="ln")(h)
    model = keras.Model(inputs, h)
    paths = [v.path for v in model.trainable_variables]
    chosen = variants.SAMON().weight_selection(model)
    assert [p for p, c in zip(paths, chosen) if c] == [
        "bn/gamma",
        "bn/beta",
        "ln/gamma",
        "ln/beta",
    ]
    custom = variants.SAMON(layer_types=(), paths=[r"^dense/"])
    assert [p for p, c in zip(paths, custom.weight_selection(model)) if c] == [
        "dense/kernel",
        "dense/bias",
    ]
    with pytest.raises(ValueError, match="selects no trainable weight"):
        variants.SAMON(layer_types=("GroupNormalization",)).weight_selection(model)


def test_rho_follows_the_learning_rate():
    lr = keras.optimizers.schedules.PiecewiseConstantDecay([2, 4], [0.1, 0.05, 0.01])
    rho = variants.ProportionalRho(lr, rho_max=0.2, rho_min=0.02, lr_min=0.01)
    values = [float(rho(step)) for step in (0, 3, 5)]
    np.testing.assert_allclose(
        values, [0.2, 0.02 + 0.18 * 0.04 / 0.09, 0.02], rtol=1e-6
    )
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(rho)
    )
    assert float(restored(3)) == pytest.approx(values[1])
    assert float(variants.ProportionalRho(0.1, rho_max=0.3)(7)) == pytest.approx(0.3)


@pytest.mark.parametrize(
    "variant",
    [
        variants.PlainSAM(),
        variants.LazySAM(every=3),
        variants.LookSAM(every=4, alpha=0.2),
        variants.GSAM(alpha=0.1),
        variants.WSAM(gamma=0.7),
        variants.WSAM(gamma=0.7, decoupled=False),
        variants.FriendlySAM(sigma=0.5, lmbda=0.8),
        variants.RWP(sigma=0.02, mix=0.3, seed=4),
        variants.SAMON(layer_types=("BatchNormalization",), paths=["x"]),
        variants.AESAM(threshold=1.5, momentum=0.5),
    ],
    ids=repr,
)
def test_serialization_round_trip(variant):
    config = variants.serialize(variant)
    assert variants.get(config) == variant
    assert variants.get(variants.names()[0]) is not None


@pytest.mark.parametrize(
    "make, argument",
    [
        (lambda: variants.LookSAM(every=0), "every"),
        (lambda: variants.LazySAM(every=2.5), "every"),
        (lambda: variants.LookSAM(alpha=-1), "alpha"),
        (lambda: variants.GSAM(alpha="big"), "alpha"),
        (lambda: variants.WSAM(gamma=1.0), "gamma"),
        (lambda: variants.FriendlySAM(lmbda=1.0), "lmbda"),
        (lambda: variants.RWP(mix=1.5), "mix"),
        (lambda: variants.RWP(seed=1.5), "seed"),
        (lambda: variants.AESAM(momentum=-0.1), "momentum"),
        (lambda: variants.SAMON(layer_types=("NoSuchLayer",)), "layer_types"),
        (lambda: variants.get("bsam"), "variant"),
        (lambda: variants.get(3), "variant"),
    ],
)
def test_bad_options_name_the_argument(make, argument):
    with pytest.raises(ValueError, match=argument):
        make()


def test_global_dot_and_norm_match_numpy():
    """The `keras.ops` form, and on TensorFlow and PyTorch the step's own
    kernels (squares as `l2_loss`, `vector_norm`): the same list twice, two
    lists, a mix of shared and distinct tensors, float16 included; the
    perturbation rules' norm."""
    import contextlib

    from keras_sam import _gradient_math, perturbations
    from keras_sam.variants import base

    kernels = [contextlib.nullcontext()]
    if keras.backend.backend() == "tensorflow":
        from keras_sam.backend.tensorflow import gradient_math

        kernels.append(base.dot_kernel(gradient_math.dot))
    if keras.backend.backend() == "torch":
        from keras_sam.backend.torch import gradient_math

        kernels.append(base.dot_kernel(gradient_math.dot))
    half = [a.astype("float16") for a in GS]
    mixed = [G[0], GS[1]]
    cases = [(G, G), (G, GS), (mixed, [G[0], G[1]]), (half, half), (half, G)]
    for context in kernels:
        with context:
            for a, b in cases:
                expected = sum(
                    np.sum(x.astype("float64") * y.astype("float64"))
                    for x, y in zip(a, b)
                )
                np.testing.assert_allclose(float(base.dot(a, b)), expected, rtol=1e-6)
            norm = np.sqrt(sum(np.sum(x * x) for x in G))
            np.testing.assert_allclose(float(base.norm(G)), norm, rtol=1e-6)
            # SAM's and ASAM's eps scale: the same norm.
            got = float(perturbations.global_norm(G))
            np.testing.assert_allclose(got, norm, rtol=1e-6)
    assert _gradient_math._KERNELS.dot is None  # restored on leaving


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="PyTorch's kernels")
def test_torch_scale_and_add_kernels_match_keras_ops_exactly():
    """The PyTorch step's eps (`scale`) and w + eps (`add`) in foreach calls
    give the `keras.ops` forms' values bit for bit: one dtype (one call),
    float16 beside float32 and a float16 addend (per-dtype calls and casts),
    NumPy inputs (scaled); a tensor and a Python factor."""
    import torch

    from keras_sam import _gradient_math
    from keras_sam.backend.torch import gradient_math

    tensors = [torch.as_tensor(a) for a in G + GS]
    mixed = [tensors[0], tensors[1].half(), tensors[2]]
    addends = [tensors[3].half(), tensors[1], tensors[0]]
    factor = torch.tensor(0.3712, dtype=torch.float32)

    def assert_same(got, expected):
        for x, y in zip(got, expected):
            assert x.dtype == y.dtype
            np.testing.assert_array_equal(x.numpy(), keras.ops.convert_to_numpy(y))

    cases = [(tensors, tensors[::-1]), (mixed, addends), (G, GS)]
    for a, b in cases:
        for f in (factor, 0.05):
            expected = _gradient_math.scale(a, f)
            with _gradient_math.kernels(scale=gradient_math.scale):
                got = _gradient_math.scale(a, f)
            assert_same(got, expected)
        if isinstance(a[0], np.ndarray):
            continue  # the step adds tensors only
        expected = _gradient_math.add(a, b)
        with _gradient_math.kernels(add=gradient_math.add):
            got = _gradient_math.add(a, b)
        assert_same(got, expected)
    # Only what was given is replaced, and all are restored on leaving.
    with _gradient_math.kernels(add=gradient_math.add):
        assert _gradient_math._KERNELS.scale is None
    assert _gradient_math._KERNELS.add is None

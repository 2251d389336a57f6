import keras
import numpy as np
import pytest

from keras_sam import perturbations
from tests.reference import epsilon

RNG = np.random.default_rng(1)
WEIGHTS = [RNG.normal(size=(3, 4)), RNG.normal(size=(4,)), RNG.normal(size=(4, 1))]
GRADS = [RNG.normal(size=w.shape) for w in WEIGHTS]


@pytest.mark.parametrize("name", ["sam", "usam", "asam"])
def test_rule_matches_numpy(name):
    rule = perturbations.get(name)
    eps = rule([keras.ops.convert_to_tensor(g) for g in GRADS], WEIGHTS, 0.3)
    expected = epsilon(name, GRADS, WEIGHTS, 0.3)
    for got, want in zip(eps, expected):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got), want, rtol=1e-6)


def test_sam_eps_has_norm_rho():
    eps = perturbations.SAM()(GRADS, WEIGHTS, 0.7)
    norm = np.sqrt(sum(np.sum(np.square(keras.ops.convert_to_numpy(e))) for e in eps))
    assert norm == pytest.approx(0.7, rel=1e-6)


def test_asam_adapt_vectors_scales_biases():
    plain = perturbations.ASAM(eta=0.5)(GRADS, WEIGHTS, 1.0)
    adapted = perturbations.ASAM(eta=0.5, adapt_vectors=True)(GRADS, WEIGHTS, 1.0)
    assert not np.allclose(
        keras.ops.convert_to_numpy(plain[1]), keras.ops.convert_to_numpy(adapted[1])
    )


@pytest.mark.parametrize("name", ["sam", "usam", "asam"])
def test_zero_gradient_gives_zero_eps(name):
    zeros = [np.zeros_like(w, dtype="float32") for w in WEIGHTS]
    eps = perturbations.get(name)(zeros, WEIGHTS, 0.5)
    for e in eps:
        values = keras.ops.convert_to_numpy(e)
        assert np.all(np.isfinite(values)) and np.all(values == 0)


@pytest.mark.parametrize("eta", [0, -0.1, "0.1", None, True, float("nan")])
def test_asam_rejects_bad_eta(eta):
    with pytest.raises(ValueError, match="eta"):
        perturbations.ASAM(eta=eta)


@pytest.mark.parametrize("identifier", ["nope", 3, None])
def test_get_rejects_unknown(identifier):
    with pytest.raises(ValueError, match="perturbation"):
        perturbations.get(identifier)


def test_serialization_round_trip():
    rule = perturbations.ASAM(eta=0.2, adapt_vectors=True)
    restored = perturbations.get(perturbations.serialize(rule))
    assert restored == rule and restored is not rule


def test_register_new_rule_by_name():
    @perturbations.register("test_sign")
    class Sign(perturbations.Perturbation):
        def __call__(self, gradients, weights, rho):
            return [rho * keras.ops.sign(g) for g in gradients]

    eps = perturbations.get("test_sign")(GRADS, WEIGHTS, 2.0)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(eps[0]), 2 * np.sign(GRADS[0])
    )
    assert "test_sign" in perturbations.names()
    with pytest.raises(TypeError):
        perturbations.register("bad")(int)

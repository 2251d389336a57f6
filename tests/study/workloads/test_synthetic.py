import argparse

import numpy as np
import pytest

from keras_sam.study import demo
from keras_sam.study.workloads import get_workload, student, teacher_student


def test_teacher_student_shapes_and_determinism():
    (x, y), (xt, yt) = teacher_student(num_train=50, num_test=20, seed=3)
    assert x.shape == (50, 100) and y.shape == (50, 1)
    assert xt.shape == (20, 100) and yt.shape == (20, 1)
    assert x.dtype == np.float32
    (x2, y2), _ = teacher_student(num_train=50, num_test=20, seed=3)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)


def test_noise_level_is_the_irreducible_error():
    (_, clean), _ = teacher_student(num_train=4000, num_test=1, noise=0.0, seed=1)
    (_, noisy), _ = teacher_student(num_train=4000, num_test=1, noise=1.0, seed=1)
    # Same x and teacher (drawn first), so the difference is the noise alone.
    assert np.var(noisy - clean) == pytest.approx(1.0, rel=0.1)


def test_student_parameter_count():
    assert student(7).count_params() == (100 + 2) * 7 + 1


@pytest.mark.parametrize(
    "kwargs, name",
    [({"num_train": 0}, "num_train"), ({"dim": 2.5}, "dim"), ({"noise": -1}, "noise")],
)
def test_bad_workload_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        teacher_student(**kwargs)


def test_demo_runs_both_optimizers(capsys):
    args = argparse.Namespace(
        hidden=8,
        epochs=1,
        rho=0.1,
        num_train=256,
        num_test=64,
        batch_size=64,
        lr=0.01,
        momentum=0.9,
        seed=0,
    )
    results = demo.run_demo(args)
    assert set(results) == {"sgd", "sam"}
    assert all(np.isfinite(v) for v in results.values())
    assert results["sgd"] != results["sam"]
    assert "gap SGD - SAM" in capsys.readouterr().out


def test_uniform_teacher_follows_pytorch_linear_default():
    variances = [
        teacher_student(
            num_train=4000, num_test=1, noise=0.0, seed=seed, teacher_init="uniform"
        )[0][1].var()
        for seed in range(16)
    ]  # the output variance of one teacher varies by ~20%: average 16 teachers
    # w ~ U(+-1/sqrt(fan_in)) has variance 1 / (3 fan_in), so a hidden unit's
    # pre-activation has variance ~100 / 300 and Var(relu(z)) = s2 (1/2 - 1/(2 pi));
    # Var(y) ~ 200 units * Var(w2) = 1 / 600 * Var(relu(z)) (biases and
    # correlations between units leave some percent).
    s2 = 100 / 300
    expected = 200 / 600 * s2 * (0.5 - 0.5 / np.pi)
    assert abs(np.mean(variances) - expected) < 0.08 * expected
    with pytest.raises(ValueError, match="`teacher_init`"):
        teacher_student(num_train=5, num_test=5, teacher_init="xavier")


def test_torch_student_init_is_pytorch_linear_default():
    model = student(400, seed=0, init="torch")
    (k1, b1), (k2, b2) = [layer.get_weights() for layer in model.layers[1:]]
    for kernel, bias, fan_in in [(k1, b1, 100), (k2, b2, 400)]:
        bound = 1 / np.sqrt(fan_in)
        assert np.abs(kernel).max() <= bound and np.abs(bias).max() <= bound
        # U(-b, b) has standard deviation b / sqrt(3).
        assert np.std(kernel) == pytest.approx(bound / np.sqrt(3), rel=0.05)
    assert np.std(b1) == pytest.approx(0.1 / np.sqrt(3), rel=0.15)
    assert not np.allclose(b1, 0.0) and not np.allclose(b2, 0.0)
    he = student(400, seed=0)
    assert np.std(he.layers[1].get_weights()[0]) == pytest.approx(
        np.sqrt(2 / 100), rel=0.05
    )
    assert not he.layers[1].get_weights()[1].any()
    with pytest.raises(ValueError, match="init"):
        student(4, init="glorot")


def test_synthetic_paper_preset_uses_the_closest_student():
    from keras_sam.study.workloads import get_preset

    for name in ("paper", "quick"):
        assert get_preset("synthetic", name).model_options == {"init": "torch"}
    for name in ("sparse", "stability", "smoothness"):  # recorded tables
        assert get_preset("synthetic", name).model_options == {}
    model = get_workload("synthetic").build(10, seed=0, init="torch")
    bias = model.layers[2].bias.numpy()
    assert bias.any() and np.abs(bias).max() <= 0.1

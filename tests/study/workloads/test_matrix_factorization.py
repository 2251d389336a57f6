import numpy as np
import pytest

from keras_sam.study.workloads import factorization_data, factorization_model


def test_data_is_linear_and_seeded():
    (x, y), (xt, yt) = factorization_data(num_samples=100, num_test=10, seed=1)
    assert x.shape == (100, 6) and y.shape == (100, 10) and xt.shape == (10, 6)
    a, *_ = np.linalg.lstsq(x, y, rcond=None)  # y = x A^T exactly
    np.testing.assert_allclose(x @ a, y, atol=1e-4)
    np.testing.assert_allclose(xt @ a, yt, atol=1e-4)
    (x2, _), _ = factorization_data(num_samples=100, num_test=10, seed=1)
    np.testing.assert_array_equal(x, x2)


def test_rank_limits_the_best_loss():
    # Rank 10 >= 6 can represent A; rank 4 leaves A's two smallest singular
    # values: the plateau the paper shows.
    (x, y), _ = factorization_data(num_samples=1000, seed=0)
    a, *_ = np.linalg.lstsq(x, y, rcond=None)
    u, s, vt = np.linalg.svd(a)
    best4 = (u[:, :4] * s[:4]) @ vt[:4]
    loss4 = np.mean(np.sum((x @ best4 - y) ** 2, axis=1))
    assert loss4 > 0.1
    model = factorization_model(4)
    assert model.count_params() == 4 * (6 + 10)


def test_bad_rank():
    with pytest.raises(ValueError, match="rank"):
        factorization_model(0)

import keras
import numpy as np
import pytest

from keras_sam.study.workloads import OneHotMeanSquaredError, get_workload


def test_squared_loss_is_the_mean_over_classes_of_the_one_hot_error():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 4)).astype("float32")
    labels = np.array([0, 3, 1, 1, 2])
    one_hot = np.eye(4)[labels]
    per_example = ((logits - one_hot) ** 2).mean(axis=1)
    loss = OneHotMeanSquaredError()
    np.testing.assert_allclose(loss.call(labels, logits), per_example, rtol=1e-6)
    np.testing.assert_allclose(loss.call(labels[:, None], logits), per_example,
                               rtol=1e-6)  # fmt: skip
    assert float(loss(labels, logits)) == pytest.approx(per_example.mean(), rel=1e-6)
    # Same as Keras' "mse" on one-hot targets.
    mse = keras.losses.MeanSquaredError()(one_hot.astype("float32"), logits)
    assert float(loss(labels, logits)) == pytest.approx(float(mse), rel=1e-6)


def test_squared_loss_is_serializable():
    config = keras.losses.serialize(OneHotMeanSquaredError())
    restored = keras.losses.deserialize(config)
    assert isinstance(restored, OneHotMeanSquaredError)


def test_workload_loss_kinds():
    mnist, synthetic = get_workload("mnist"), get_workload("synthetic")
    assert isinstance(mnist.loss("squared"), OneHotMeanSquaredError)
    assert isinstance(mnist.loss(), keras.losses.SparseCategoricalCrossentropy)
    assert synthetic.loss("squared") == synthetic.loss() == "mse"
    mf = get_workload("matrix-factorization")
    assert mf.loss("squared") is mf.loss()
    with pytest.raises(ValueError, match="`loss` must be one of"):
        mnist.loss("hinge")

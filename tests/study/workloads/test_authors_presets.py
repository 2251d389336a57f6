"""The paper presets follow the authors' training code: schedule boundaries,
initializations, the coupled weight-decay form, CIFAR-10 preprocessing."""

import keras
import numpy as np
import pytest
import tensorflow_datasets as tfds

from keras_sam.optimizers import L2SGD
from keras_sam.study.sweep import train
from keras_sam.study.workloads import (
    datasets,
    get_preset,
    lenet_300_100,
    resnet18_cifar,
    resnet50,
)


def _lr(schedule, step):
    return float(schedule(step))


@pytest.mark.parametrize(
    "workload, drops",
    [("mnist", (250, 500, 750)), ("cifar10", (500, 750))],
)
def test_step_drops_apply_from_int_fraction_of_total_steps(workload, drops):
    preset = get_preset(workload, "paper").replace(epochs=100)
    schedule = train.learning_rate(preset, steps_per_epoch=10)  # 1000 steps
    assert train.step_boundaries(preset, 10) == list(drops)
    lr = 0.1
    previous = 0
    for boundary in drops:
        assert _lr(schedule, previous) == pytest.approx(lr)
        assert _lr(schedule, boundary - 1) == pytest.approx(lr)
        lr *= 0.1
        assert _lr(schedule, boundary) == pytest.approx(lr)
        previous = boundary
    assert _lr(schedule, 999) == pytest.approx(lr)


def test_paper_presets_use_the_authors_hyperparameters():
    mnist = get_preset("mnist", "paper")
    assert (mnist.epochs, mnist.batch_size, mnist.lr, mnist.momentum) == (
        100, 128, 0.1, 0.9
    )  # fmt: skip
    assert (mnist.weight_decay, mnist.schedule) == (1e-4, "step3")
    cifar = get_preset("cifar10", "paper")
    assert (cifar.epochs, cifar.batch_size, cifar.momentum, cifar.weight_decay) == (
        200, 128, 0.9, 5e-4
    )  # fmt: skip
    assert cifar.schedule == "step"
    assert cifar.data_options == {"preprocessing": "authors"}
    imagenet = get_preset("imagenet", "paper")
    assert imagenet.model_options == {"init": "lecun", "zero_init_last_bn": True}
    for workload in ("mnist", "cifar10", "imagenet"):
        for name in ("paper", "quick"):
            preset = get_preset(workload, name)
            assert preset.weight_decay_form == "coupled"
            assert preset.model_options["init"] == "lecun"
            optimizer = train.make_optimizer(preset, 10)
            assert isinstance(optimizer, L2SGD)
            assert (optimizer.l2, optimizer.momentum) == (preset.weight_decay, 0.9)
            assert optimizer.weight_decay is None  # not also decoupled
    decoupled = train.make_optimizer(mnist.replace(weight_decay_form="decoupled"), 10)
    assert type(decoupled) is keras.optimizers.SGD and decoupled.weight_decay == 1e-4


def _kernels(model):
    return [layer.kernel.numpy() for layer in model.layers if hasattr(layer, "kernel")]


def test_lecun_init_is_truncated_normal_with_variance_one_over_fan_in():
    model = lenet_300_100(1.0, seed=0, init="lecun")
    for kernel in _kernels(model):
        fan_in = kernel.shape[0]
        assert np.std(kernel) == pytest.approx(np.sqrt(1 / fan_in), rel=0.05)
        # Truncated at two standard deviations of the underlying normal.
        assert np.abs(kernel).max() <= 2 * np.sqrt(1 / fan_in) / 0.8796 + 1e-6
    for layer in model.layers:
        if hasattr(layer, "bias") and layer.bias is not None:
            assert not layer.bias.numpy().any()
    he = _kernels(lenet_300_100(1.0, seed=0))
    assert np.std(he[0]) == pytest.approx(np.sqrt(2 / 784), rel=0.05)
    assert np.std(he[2]) == pytest.approx(np.sqrt(2 / (100 + 10)), rel=0.1)
    with pytest.raises(ValueError, match="init"):
        lenet_300_100(1.0, init="xavier")


def test_resnet_layers_get_their_own_init_and_zero_last_bn_scale():
    model = resnet18_cifar(4, seed=0, init="lecun")
    a = model.get_layer("s0b0_conv2").kernel.numpy()
    b = model.get_layer("s0b1_conv1").kernel.numpy()
    assert a.shape == b.shape and not np.array_equal(a, b)
    assert np.std(a) == pytest.approx(np.sqrt(1 / (9 * 4)), rel=0.25)
    again = resnet18_cifar(4, seed=0, init="lecun")
    np.testing.assert_array_equal(a, again.get_layer("s0b0_conv2").kernel.numpy())
    net = resnet50(1, input_shape=(32, 32, 3), seed=0, zero_init_last_bn=True)
    gammas = {layer.name: layer.gamma.numpy() for layer in net.layers
              if isinstance(layer, keras.layers.BatchNormalization)}  # fmt: skip
    assert all(not g.any() for n, g in gammas.items() if n.endswith("_bn3"))
    assert all((g == 1).all() for n, g in gammas.items() if not n.endswith("_bn3"))


def test_cifar10_authors_preprocessing_pads_the_raw_image_with_zeros():
    image = np.full((32, 32, 3), 255, np.uint8)
    train_map = datasets._cifar_train_map("authors")
    mean, std = np.array(datasets._CIFAR_MEAN), np.array(datasets._CIFAR_AUTHORS_STD)
    black = (0 - mean) / std
    white = (1 - mean) / std
    seen_border = False
    for _ in range(20):
        out = train_map(image, 3)[0].numpy()
        values = np.unique(out.reshape(-1, 3), axis=0)
        assert all(np.allclose(v, black) or np.allclose(v, white) for v in values)
        seen_border |= any(np.allclose(v, black) for v in values)
    assert seen_border  # the crop shows the zero padding of the raw image
    reflect = datasets._cifar_train_map("reflect")(image, 3)[0].numpy()
    expected = np.broadcast_to((1 - mean) / np.array(datasets._CIFAR_STD), (32, 32, 3))
    np.testing.assert_allclose(reflect, expected, rtol=1e-5)  # no black border
    with pytest.raises(ValueError, match="preprocessing"):
        datasets._cifar_train_map("mirror")


def test_cifar10_loader_takes_the_preprocessing_option():
    with tfds.testing.mock_data(num_examples=8):
        _, test, _ = datasets.cifar10(batch_size=8, preprocessing="reflect")
        _, test_authors, _ = datasets.cifar10(batch_size=8)
        x = next(iter(test))[0].numpy()
        y = next(iter(test_authors))[0].numpy()
    ratio = np.array(datasets._CIFAR_AUTHORS_STD) / np.array(datasets._CIFAR_STD)
    np.testing.assert_allclose(x, y * ratio, rtol=1e-4, atol=1e-4)

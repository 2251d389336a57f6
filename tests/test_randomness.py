"""The same randomness in both passes, on every backend, for seeded and
unseeded random layers (dropout, noise, augmentation).

On PyTorch an unseeded `Dropout` draws from torch's global generator
(Keras's fast path), which the step replays in the perturbed pass.
"""

import keras
import numpy as np
import pytest

import keras_sam

# Slots made before the step is traced: one trace, not two (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("optimizer_built_before_tracing")


def random_zoo(sam, seed=None, **options):
    """Augmentation, a convolution, noise and dropout; `seed` None: every
    random layer unseeded."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 1))
    h = keras.layers.RandomFlip("horizontal", seed=seed)(inputs)
    h = keras.layers.Conv2D(2, 3, activation="relu")(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(8, activation="relu")(h)
    h = keras.layers.GaussianNoise(0.1, seed=seed)(h)
    h = keras.layers.Dropout(0.3, seed=seed)(h)
    outputs = keras.layers.Dense(1)(h)
    if sam:
        return keras_sam.SAMModel(inputs, outputs, **options)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6, 6, 1)).astype("float32")
    y = rng.normal(size=(32, 1)).astype("float32")
    return x, y


def _fit(model, x, y, epochs=2):
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
    keras.utils.set_random_seed(1)  # torch's global stream, for unseeded dropout
    return model.fit(x, y, batch_size=8, epochs=epochs, shuffle=False, verbose=0)


@pytest.mark.parametrize("seed", [None, 3])
def test_rho_zero_equals_keras_step_with_random_layers(images, seed):
    x, y = images
    sam_model = random_zoo(True, seed, rho=0.0)
    plain = random_zoo(False, seed)
    sam_history = _fit(sam_model, x, y)
    plain_history = _fit(plain, x, y)
    for a, b in zip(sam_model.weights, plain.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, err_msg=a.path)
    np.testing.assert_allclose(
        sam_history.history["loss"], plain_history.history["loss"], rtol=1e-6
    )
    # The same masks and noise in the perturbed pass.
    np.testing.assert_allclose(
        sam_history.history["perturbed_loss"], sam_history.history["loss"], rtol=1e-6
    )


def _second_epoch(model, x, y):
    # torch's global stream reset where training starts (after Keras's
    # symbolic build of a fresh model, which draws from it).
    reseed = keras.callbacks.LambdaCallback(
        on_train_begin=lambda logs: keras.utils.set_random_seed(2)
    )
    model.fit(
        x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[reseed]
    )


def test_unseeded_resume_is_bit_identical(images, tmp_path):
    """Two epochs straight equal one epoch, save, load, one epoch: the seed
    states of unseeded layers are saved with the model (torch's global
    stream is reset at the boundary in both runs)."""
    x, y = images
    straight = random_zoo(True, rho=0.1)
    _fit(straight, x, y, epochs=1)
    _second_epoch(straight, x, y)

    first = random_zoo(True, rho=0.1)
    _fit(first, x, y, epochs=1)
    path = tmp_path / "model.keras"
    first.save(path)
    resumed = keras.models.load_model(path)
    _second_epoch(resumed, x, y)
    for a, b in zip(straight.weights, resumed.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)

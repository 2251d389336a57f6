"""Training helpers shared by the variant tests: full-batch SGD steps, and
save / load / resume against uninterrupted training."""

import keras
import numpy as np

from tests.models import LR, weights_of

#: Full-batch SGD steps each variant test trains.
STEPS = 6


def train_full_batch(model, x, y, steps=STEPS, **compile_options):
    model.compile(keras.optimizers.SGD(LR), loss="mse", **compile_options)
    model.fit(x, y, batch_size=len(x), epochs=steps, shuffle=False, verbose=0)
    return weights_of(model)


def assert_resume_equals_uninterrupted(fresh, x, y, path):
    """Epoch 1, save, load, epoch 2 equals the saved model's own epoch 2
    (two 1-epoch fits are one 2-epoch fit: no shuffling, and the tests'
    optimizers have no EMA). Saving must leave the model as it was."""

    def values(model):
        return [keras.ops.convert_to_numpy(v) for v in model.variables]

    first = fresh()
    first.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    saved = values(first)
    first.save(path)
    for a, b in zip(saved, values(first)):
        np.testing.assert_array_equal(a, b)
    restored = keras.models.load_model(path)
    assert restored.variant == first.variant
    restored.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    first.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    straight = values(first)
    assert max(np.abs(a - b).max() for a, b in zip(saved, straight)) > 1e-4
    assert len(straight) == len(restored.variables)
    for a, b, v in zip(straight, values(restored), restored.variables):
        np.testing.assert_allclose(a, b, atol=1e-6, err_msg=v.path)

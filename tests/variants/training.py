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
    straight = fresh()
    straight.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    first = fresh()
    first.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    first.save(path)
    restored = keras.models.load_model(path)
    assert restored.variant == first.variant
    restored.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert len(straight.variables) == len(restored.variables)
    for a, b in zip(straight.variables, restored.variables):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(a),
            keras.ops.convert_to_numpy(b),
            atol=1e-6,
            err_msg=a.path,
        )

"""Gradual pruning against the TF-MOT schedule objects; m:n masks; the
TF-MOT import leaves `tf.keras` on Keras 3."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from keras_sam import sparsity
from tests.sparsity.builders import kernels, masks, mlp

# Slots made before the step is traced: one trace, not two (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("optimizer_built_before_tracing")


class Probe(keras.callbacks.Callback):
    """Records (optimizer step after the batch, per-kernel sparsity)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        levels = [1 - np.count_nonzero(k) / k.size for k in kernels(self.model)]
        self.seen.append((step, levels))


@pytest.mark.parametrize("sam", [True, False], ids=["sam", "plain"])
def test_gradual_pruning_follows_the_tfmot_schedule(regression_data, sam):
    x, y = regression_data
    schedule = sparsity.tfmot_schedule(
        "PolynomialDecay",
        initial_sparsity=0.1,
        final_sparsity=0.8,
        begin_step=2,
        end_step=10,
        frequency=2,
    )
    model = mlp(sam=sam)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
    probe = Probe()
    model.fit(
        x,
        y,
        batch_size=8,
        epochs=2,  # 16 steps
        verbose=0,
        callbacks=[sparsity.GradualPruning(schedule), probe],
    )
    sizes = [k.size for k in kernels(model)]
    level = 0.0
    for step, levels in probe.seen:
        # The batch that ends at `step` began at step - 1.
        should_prune, target = schedule(step - 1)
        if bool(should_prune):
            level = float(target)
        assert levels == pytest.approx([round(level * n) / n for n in sizes]), step
    assert level == pytest.approx(0.8)
    for new, mask in zip(kernels(model), masks(model)):
        assert np.all(new[mask == 0] == 0.0)


def test_any_callable_schedule_with_two_four():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(8), keras.layers.Dense(4)]
    )
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    model.fit(
        x,
        x[:, :4],
        batch_size=16,
        epochs=2,
        verbose=0,
        callbacks=[sparsity.GradualPruning(lambda step: (step == 1, 0.0), (2, 4))],
    )
    for kernel in kernels(model):
        groups = np.moveaxis(kernel, 0, -1).reshape(-1, 4)  # 4 input features
        assert np.all(np.count_nonzero(groups, axis=1) == 2)


def test_m_by_n_mask_keeps_two_largest_of_four():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 3, 8, 5))  # conv kernel, 8 input channels
    mask = sparsity.m_by_n_mask(w, 2, 4)
    for i in range(3):
        for j in range(3):
            for o in range(5):
                for g in range(2):
                    group = np.abs(w[i, j, 4 * g : 4 * g + 4, o])
                    kept = mask[i, j, 4 * g : 4 * g + 4, o]
                    assert kept.sum() == 2
                    assert set(np.flatnonzero(kept)) == set(np.argsort(group)[2:])
    with pytest.raises(ValueError, match="multiple of 4"):
        sparsity.m_by_n_mask(np.ones((5, 3)), 2, 4)


def _run(code):
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.backends("tensorflow")  # the TF-MOT import guard
def test_tfmot_import_leaves_tf_keras_on_keras_3():
    """TF-MOT sets TF_USE_LEGACY_KERAS=1 on import; neither keras_sam's own
    import nor its TF-MOT schedules may (one interpreter for both checks)."""
    result = _run(
        """
        import os
        import keras
        import numpy as np
        import keras_sam
        assert "TF_USE_LEGACY_KERAS" not in os.environ, "set by import keras_sam"
        from keras_sam import sparsity
        schedule = sparsity.tfmot_schedule("ConstantSparsity", target_sparsity=0.5,
                                           begin_step=0, frequency=1)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)])
        model.compile("sgd", "mse")
        model.fit(np.ones((8, 4)), np.ones((8, 8)), verbose=0,
                  callbacks=[sparsity.GradualPruning(schedule)])
        assert "TF_USE_LEGACY_KERAS" not in os.environ
        import tensorflow as tf
        assert tf.keras.Model is keras.Model, tf.keras.Model
        print("ok", tf.keras.version())
        """
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("ok 3.")

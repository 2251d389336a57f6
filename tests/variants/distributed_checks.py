"""Runs variants under MirroredStrategy on 2 logical CPUs and prints, as
JSON, each case's deviation from the single-device NumPy reference.

A separate process: logical devices must be configured before TensorFlow
starts its runtime. Used by tests/variants/test_distributed.py.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from tests.distributed.two_cpus import STRATEGY  # noqa: E402

# isort: split
import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_sam import variants  # noqa: E402
from tests.models import mlp  # noqa: E402
from tests.variants import reference  # noqa: E402

LR, RHO, STEPS, BATCH = 0.1, 0.2, 3, 32
rng = np.random.default_rng(0)
X = rng.normal(size=(BATCH, 5)).astype("float32")
Y = rng.normal(size=(BATCH, 1)).astype("float32")

CASES = {
    "looksam": (variants.LookSAM(every=2, alpha=0.7), {"every": 2, "alpha": 0.7}),
    "gsam": (variants.GSAM(alpha=0.4), {"alpha": 0.4}),
}


def run(name, jit):
    variant, options = CASES[name]
    with STRATEGY.scope():
        model = mlp(rho=RHO, variant=variant)
    start = [v.numpy().astype(np.float64) for v in model.trainable_variables]
    model.compile(keras.optimizers.SGD(LR), loss="mse", jit_compile=jit)
    model.fit(X, Y, batch_size=BATCH, epochs=STEPS, shuffle=False, verbose=0)
    weights = [v.numpy().astype(np.float64) for v in model.trainable_variables]
    expected, passes = reference.train(name, start, X, Y, RHO, LR, STEPS, **options)
    return {
        "deviation": max(
            float(np.max(np.abs(a - b))) for a, b in zip(weights, expected)
        ),
        "passes": model.gradient_passes,
        "expected_passes": passes,
    }


def run_wsam(jit):
    """Decoupled WSAM with momentum SGD: the shift written once per step."""
    with STRATEGY.scope():
        model = mlp(rho=RHO, variant=variants.WSAM(gamma=0.8))
        # The momentum slots are mirrored: made inside the scope.
        optimizer = keras.optimizers.SGD(LR, momentum=0.9)
        model.compile(optimizer, loss="mse", jit_compile=jit)
    start = [v.numpy().astype(np.float64) for v in model.trainable_variables]
    model.fit(X, Y, batch_size=BATCH, epochs=STEPS, shuffle=False, verbose=0)
    weights = [v.numpy().astype(np.float64) for v in model.trainable_variables]
    expected = reference.train_wsam_momentum(
        start, X, Y, RHO, [LR] * STEPS, 0.8, decoupled=True
    )
    return {
        "deviation": max(
            float(np.max(np.abs(a - b))) for a, b in zip(weights, expected)
        ),
        "passes": model.gradient_passes,
        "expected_passes": 2 * STEPS,
    }


def main():
    # LookSAM: skipped passes, stored state, the step index; GSAM: the
    # all-reduced combine, with each replica's passes compiled by XLA.
    # WSAM: the decoupled term written outside the optimizer, on each device.
    return {
        "looksam-jit0": run("looksam", False),
        "gsam-jit1": run("gsam", True),
        "wsam-jit0": run_wsam(False),
    }


if __name__ == "__main__":
    print("RESULTS " + json.dumps(main()))

"""The SAM step on every backend: a model zoo against plain Keras, models
moving between backends through `.keras`, and JAX's data parallelism.

Runs once per backend (`make test`); the numeric SAM references are in
test_sam_model.py, which runs on every backend too."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_sam
from keras_sam import sparsity
from tests.conftest import BACKEND, with_fast_xla
from tests.models import ZOO, cast_float32, mlp

# Slots made before the step is traced: one trace, not two (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("optimizer_built_before_tracing")

RNG = np.random.default_rng(7)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_rho_zero_equals_plain_keras_and_sam_moves(name):
    """rho=0 takes Keras's own steps (state, add_loss, multi-output); rho>0
    takes different, finite ones."""
    final = {}
    for rho in (None, 0.0, 0.5):
        keras.utils.set_random_seed(0)
        model, data, loss = ZOO[name]()
        if rho is not None:
            model = keras_sam.sam(model, rho=rho)
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9), loss=loss)
        history = model.fit(*cast_float32(data), batch_size=8, shuffle=False, verbose=0)
        assert np.isfinite(history.history["loss"]).all()
        final[rho] = [v.numpy() for v in model.weights]
    for a, b in zip(final[0.0], final[None]):
        np.testing.assert_allclose(a, b, atol=1e-5)
    gap = max(np.max(np.abs(a - b)) for a, b in zip(final[0.5], final[None]))
    assert gap > 1e-4


def _pruned_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5,))
    h = keras.layers.Dense(8)(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Activation("tanh")(h)
    outputs = keras.layers.Dense(1)(h)
    model = keras_sam.SAMModel(
        inputs, outputs, rho=0.2, perturbation="asam", micro_batch_size=8
    )
    sparsity.prune_at_init(model, 0.5, seed=0)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
    return model


_LOAD_AND_TRAIN = """
import json, sys
import keras, numpy as np
import keras_sam
from keras_sam import sparsity

path, data_path, out_path = sys.argv[1:4]
data = np.load(data_path)
model = keras.models.load_model(path)
if keras.backend.backend() == "torch":
    # The file keeps the jit_compile its backend resolved ("auto" is True on
    # JAX): torch.compile takes minutes on a CPU and is not run in the suite
    # (tests/conftest.py JIT_COMPILE); the eager step reads the same state.
    model.jit_compile = False
targets = sparsity.prunable_weights(model)
model.fit(data["x"], data["y"], batch_size=16, epochs=1, shuffle=False, verbose=0)
np.savez(out_path, *[v.numpy() for v in model.weights])
print(json.dumps({
    "backend": keras.backend.backend(),
    "class": type(model).__name__,
    "rho": model.rho,
    "perturbation": type(model.perturbation).__name__,
    "micro_batch_size": model.micro_batch_size,
    "masked": [t.mask is not None for t in targets],
    "optimizer_iterations": int(model.optimizer.iterations.numpy()),
}))
"""

#: Each backend's run saves a model and hands it to the next backend.
_NEXT = {"tensorflow": "jax", "jax": "torch", "torch": "tensorflow"}


def test_keras_file_moves_to_another_backend_and_trains_on(tmp_path):
    """SAM settings, masks, weights and optimizer state survive a `.keras`
    file written on this backend and read on the next; one more epoch there
    gives the weights it gives here."""
    target = _NEXT[BACKEND]
    if importlib.util.find_spec(target) is None:
        pytest.skip(f"{target} is not installed (`make test` installs it)")
    x = RNG.normal(size=(32, 5)).astype("float32")
    y = RNG.normal(size=(32, 1)).astype("float32")
    model = _pruned_model()
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    np.savez(tmp_path / "data.npz", x=x, y=y)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)

    env = dict(os.environ, KERAS_BACKEND=target, TF_CPP_MIN_LOG_LEVEL="3")
    if target == "jax":  # as in the suite's own JAX processes
        env["XLA_FLAGS"] = with_fast_xla(env.get("XLA_FLAGS", ""))
    out = tmp_path / "after.npz"
    result = subprocess.run(
        [sys.executable, "-c", _LOAD_AND_TRAIN, str(path), str(tmp_path / "data.npz")]
        + [str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    assert facts == {
        "backend": target,
        "class": "FunctionalSAMModel",
        "rho": 0.2,
        "perturbation": "ASAM",
        "micro_batch_size": 8,
        "masked": [True, True],
        "optimizer_iterations": 4,
    }
    there = np.load(out)
    here = [v.numpy() for v in model.weights]
    assert len(there.files) == len(here)
    for i, value in enumerate(here):
        np.testing.assert_allclose(there[f"arr_{i}"], value, atol=1e-5)
    for target in sparsity.prunable_weights(model):
        mask = target.mask.mask.numpy()
        assert np.all(target.variable.numpy()[mask == 0] == 0)


_DATA_PARALLEL = """
import keras, numpy as np
import keras_sam
from tests.models import mlp

assert len(keras.distribution.list_devices()) == 2
rng = np.random.default_rng(0)
x = rng.normal(size=(32, 5)).astype("float32")
y = rng.normal(size=(32, 1)).astype("float32")

def train(**options):
    model = mlp(rho=0.3, **options)
    model.compile(keras.optimizers.SGD(0.1), loss="mse")
    model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    return [v.numpy() for v in model.trainable_variables]

for options in ({}, {"micro_batch_size": 4}):
    single = train(**options)
    keras.distribution.set_distribution(keras.distribution.DataParallel())
    parallel = train(**options)
    keras.distribution.set_distribution(None)
    for a, b in zip(single, parallel):
        np.testing.assert_allclose(a, b, atol=1e-6)

keras.distribution.set_distribution(keras.distribution.DataParallel())
try:
    train(replica_eps="per_replica")
except ValueError as error:
    assert "replica_eps" in str(error) and "micro_batch_size" in str(error)
else:
    raise AssertionError("per_replica was not refused")
print("ok")
"""


@pytest.mark.backends("jax")
def test_jax_data_parallel_equals_single_device():
    """Two (forced host) devices under `keras.distribution.DataParallel`:
    synchronized eps is SAM on the global batch, with micro-batches too;
    per-replica eps is refused with a clear error."""
    env = dict(
        os.environ,
        KERAS_BACKEND="jax",
        XLA_FLAGS=os.environ.get("XLA_FLAGS", "")
        + " --xla_force_host_platform_device_count=2",
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_DATA_PARALLEL)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


def test_rho_schedule_reads_the_step_against_numpy():
    """rho = 0.2 * 0.5**step: two SGD steps against NumPy SAM at 0.2, 0.1."""
    from tests import reference
    from tests.models import LR, weights_of

    x = RNG.normal(size=(16, 5)).astype("float32")
    y = RNG.normal(size=(16, 1)).astype("float32")
    model = mlp(rho=keras.optimizers.schedules.ExponentialDecay(0.2, 1, 0.5))
    params = weights_of(model)
    for rho in (0.2, 0.1):
        _, _, grads = reference.sam_gradient("sam", params, x, y, rho)
        params = [p - LR * g for p, g in zip(params, grads)]
    model.compile(keras.optimizers.SGD(LR), loss="mse")
    model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    for got, want in zip(weights_of(model), params):
        np.testing.assert_allclose(got, want, atol=1e-6)


# Off TensorFlow, with TensorFlow made unimportable (as where it is not
# installed): the library imports, a SAM model (a variant, masks, micro-batches,
# HessianMetrics) trains and round-trips through .keras, and sharpness runs.
OFF_TENSORFLOW = """
import os, sys, tempfile
sys.modules["tensorflow"] = None
import keras
import numpy as np
import keras_sam
from keras_sam import callbacks, hessian, sparsity

def model():
    inputs = keras.Input((4,))
    h = keras.layers.Dense(8, activation="relu")(inputs)
    h = keras.layers.BatchNormalization()(h)
    return keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Dropout(0.1)(h)))

x, y = np.random.rand(16, 4).astype("float32"), np.random.rand(16, 1).astype("float32")
base = model()
sparsity.prune_at_init(base, 0.5, seed=0)
sam = keras_sam.sam(base, variant="looksam", rho=0.05)
sam.compile(optimizer="sgd", loss="mse")
sam.fit(x, y, batch_size=8, epochs=2, verbose=0,
        callbacks=[callbacks.HessianMetrics((x, y), orders=(2,))])
path = os.path.join(tempfile.mkdtemp(), "m.keras")
sam.save(path)
keras.saving.load_model(path).fit(x, y, batch_size=8, verbose=0)
micro = keras_sam.sam(model(), micro_batch_size=4)
micro.compile(optimizer="sgd", loss="mse")
micro.fit(x, y, batch_size=8, verbose=0)
assert np.isfinite(hessian.sharpness(sam, (x, y)))
loaded = [m for m, v in sys.modules.items() if m.startswith("tensorflow") and v]
print(keras.backend.backend(), sorted(loaded))
"""


@pytest.mark.backends("jax", "torch")
def test_the_library_runs_without_tensorflow_off_tensorflow():
    backend = keras.backend.backend()
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=str(root))
    result = subprocess.run(
        [sys.executable, "-c", OFF_TENSORFLOW],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == f"{backend} []"

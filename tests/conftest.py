import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
if os.environ["KERAS_BACKEND"] == "jax" and "xla_backend_optimization_level" not in (
    os.environ.get("XLA_FLAGS", "")
):
    # Much of the JAX suite's CPU time is XLA compiling tiny programs, much
    # of that in LLVM's optimization passes: level 0 takes ~25 % less CPU
    # (tests28d's note) and the same operations run (no fast-math at any
    # level); every tolerance holds. Set before JAX starts; subprocesses
    # inherit it.
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    os.environ["XLA_FLAGS"] = flags.strip()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

#: The Keras backend of this test process (one process per backend: `make test`).
BACKEND = keras.backend.backend()
#: torch.compile takes minutes per model on a CPU: jit_compile=True is not run in
#: the PyTorch suite (checked by hand, see docs/benchmarks.md).
JIT_COMPILE = (False, True) if BACKEND != "torch" else (False,)


#: Where the tests marked `backend_independent` run (the study, the notebooks
#: and the examples read their data with TensorFlow's tools).
INDEPENDENT_BACKEND = "tensorflow"


def pytest_collection_modifyitems(config, items):
    """Every test runs on every backend unless a marker says otherwise:
    `backends(*names)` (only there) or `backend_independent` (once, on
    INDEPENDENT_BACKEND). The others skip it, with the reason."""
    for item in items:
        marker = item.get_closest_marker("backends")
        if marker is not None and BACKEND not in marker.args:
            only = ", ".join(marker.args)
            item.add_marker(pytest.mark.skip(reason=f"{only} only; backend {BACKEND}"))
        elif (
            item.get_closest_marker("backend_independent")
            and BACKEND != INDEPENDENT_BACKEND
        ):
            reason = f"backend-independent: runs once, on {INDEPENDENT_BACKEND}"
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def mixed_precision():
    """Sets a global dtype policy for one test and restores the previous one."""
    previous = keras.config.dtype_policy()

    def set_policy(name):
        keras.config.set_dtype_policy(name)

    yield set_policy
    keras.config.set_dtype_policy(previous)


@pytest.fixture(scope="session")
def regression_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype("float32")
    y = rng.normal(size=(64, 1)).astype("float32")
    return x, y

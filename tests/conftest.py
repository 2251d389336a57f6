import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def with_fast_xla(flags: str) -> str:
    """XLA_FLAGS `flags` with XLA's backend optimization level 0 (unless they
    set a level). Much of the JAX suite's CPU time is XLA compiling tiny
    programs, much of that in LLVM's optimization passes: level 0 takes ~25 %
    less CPU (tests28d's note) and the same operations run (no fast-math at
    any level); every tolerance holds."""
    if "xla_backend_optimization_level" in flags:
        return flags
    return (flags + " --xla_backend_optimization_level=0").strip()


if os.environ["KERAS_BACKEND"] == "jax":
    # Set before JAX starts; subprocesses inherit it.
    os.environ["XLA_FLAGS"] = with_fast_xla(os.environ.get("XLA_FLAGS", ""))

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


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "optimizer_built_in_the_trace: on TensorFlow, leaves the optimizer unbuilt "
        "until the SAM step is traced (Keras's own path for a model made without "
        "a tf.distribute strategy), for the library's branches there; `SAMModel` "
        "otherwise builds it at the start of `fit` (`build_optimizer_before_tracing`)",
    )


@pytest.fixture(autouse=True)
def _optimizer_unbuilt_until_the_trace(request, monkeypatch):
    if BACKEND != "tensorflow" or not request.node.get_closest_marker(
        "optimizer_built_in_the_trace"
    ):
        return
    from keras_sam.backend.tensorflow import trainer

    monkeypatch.setattr(trainer, "build_optimizer_before_tracing", lambda model: None)


@pytest.fixture
def optimizer_built_before_tracing(request, monkeypatch):
    """On TensorFlow, `fit` and `train_on_batch` of every `keras.Model` (the
    plain references too) build the optimizer before the step is traced, as
    Keras does for a model made under a tf.distribute strategy and `SAMModel`
    does always (`backend/tensorflow/trainer.py`). Otherwise Keras builds it
    inside the first trace, and the slot variables made there make
    tf.function trace the whole step a second time: a third to a half of a
    small test's CPU. Modules whose subject is the numbers use it; a test
    marked `optimizer_built_in_the_trace` keeps Keras's default path."""
    if BACKEND != "tensorflow" or request.node.get_closest_marker(
        "optimizer_built_in_the_trace"
    ):
        return
    for name in ("fit", "train_on_batch"):
        monkeypatch.setattr(keras.Model, name, _built_first(getattr(keras.Model, name)))


def _built_first(method):
    def built_first(self, *args, **kwargs):
        optimizer = getattr(self, "optimizer", None)
        if self.built and optimizer is not None and not optimizer.built:
            with self.distribute_strategy.scope():
                optimizer.build(self.trainable_variables)
        return method(self, *args, **kwargs)

    return built_first


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

"""SAMModel under tf.distribute, checked in separate processes (logical
devices and TF_CONFIG must be set before TensorFlow starts)."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests import reference
from tests.distributed.checks import run_checks

pytestmark = pytest.mark.backends("tensorflow")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mirrored():
    return run_checks("distributed/mirrored_checks.py")


# Each rule and each mode, with and without XLA (pairs, as in
# tests/distributed/mirrored_checks.py).
MLP_CASES = [
    "mlp-sam-synchronized-jit0",
    "mlp-sam-per_replica-jit1",
    "mlp-usam-synchronized-jit1",
    "mlp-usam-per_replica-jit0",
]


@pytest.mark.parametrize("case", MLP_CASES)
def test_mirrored_matches_numpy_reference(mirrored, case):
    """synchronized: single-device SAM on the global batch; per_replica: the
    mean of per-shard SAM gradients (usam shows the 1/R loss scaling undone)."""
    result = mirrored[case]
    assert result["deviation"] <= 1e-5
    assert result["moved"] > 1e-2
    expected_m = 32 if "synchronized" in case else 16
    assert result["eps_batch_size"] == expected_m


@pytest.mark.parametrize("mode", ["synchronized", "per_replica"])
def test_mirrored_micro_batches_equal_single_device_micro_batches(mirrored, mode):
    result = mirrored[f"mlp-micro8-{mode}"]
    assert result["deviation"] <= 1e-5 and result["moved"] > 1e-2
    assert result["eps_batch_size"] == 8


@pytest.mark.parametrize(
    "case",
    ["bn-synchronized-jit1", "bn-per_replica-jit0"],
)
def test_mirrored_with_batch_norm_matches_by_hand_shards(mirrored, case):
    assert mirrored[case]["deviation"] <= 1e-5


def test_mirrored_mixed_precision_skips_on_every_replica(mirrored):
    result = mirrored["mixed-float16-skip"]
    assert result["deviation"] == 0.0
    assert result["scale"] == 2.0**14


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(out, *args, timeout=240):
    """Runs the 2 workers of tests/distributed/multi_worker.py on 127.0.0.1.

    When one worker exits with an error the other is killed (it would wait
    for its peer forever); every process is reaped. Returns the exit codes.
    """
    cluster = {"worker": [f"127.0.0.1:{free_port()}" for _ in range(2)]}
    script = ROOT / "tests" / "distributed" / "multi_worker.py"
    processes = []
    try:
        for index in range(2):
            config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
            env = dict(
                os.environ,
                TF_CONFIG=json.dumps(config),
                TF_CPP_MIN_LOG_LEVEL="3",
                PYTHONPATH=str(ROOT),
            )
            processes.append(
                subprocess.Popen(
                    [sys.executable, str(script), str(out), *args],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in processes):
            if time.monotonic() > deadline:
                raise TimeoutError("multi-worker run did not finish in time")
            if any(p.poll() not in (None, 0) for p in processes):
                break
            time.sleep(0.2)
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
        for p in processes:
            p.wait()
    return [p.returncode for p in processes], [
        p.stderr.read()[-2000:] for p in processes
    ]


def worker_weights(out):
    """Each worker's trainable weights, in `trainable_variables` order."""
    weights = []
    for i in range(2):
        saved = np.load(out / f"worker_{i}.npz")
        weights.append([saved[f"arr_{k}"] for k in range(len(saved.files))])
    return weights


def multi_worker_reference(epochs):
    """Single-device SAM on the global batch, in NumPy."""
    from tests.distributed.multi_worker import BATCH, data
    from tests.models import mlp

    model = mlp(rho=0.2)
    params = [v.numpy().astype(np.float64) for v in model.trainable_variables]
    x, y = data()
    for _ in range(epochs):
        for start in range(0, len(x), BATCH):
            batch = slice(start, start + BATCH)
            grads = reference.sam_gradient("sam", params, x[batch], y[batch], 0.2)[2]
            params = [p - 0.1 * g for p, g in zip(params, grads)]
    return params


def assert_matches_reference(weights, expected):
    assert len(weights) == len(expected)
    for value, want in zip(weights, expected):
        np.testing.assert_allclose(value, want, atol=1e-5)


def test_multi_worker_resumes_after_a_killed_worker(tmp_path):
    # Also the multi-worker step itself: the workers stay equal and end at
    # single-device SAM on the global batch (epochs 0 and 1 from the killed
    # run's backup, epoch 2 from the resumed one).
    backup = tmp_path / "backup"
    codes, _ = run_workers(
        tmp_path, "--epochs", "3", "--backup", str(backup), "--die-after-epoch", "1"
    )
    assert codes[1] == 17 and codes[0] != 0  # worker 1 died, worker 0 was killed
    assert not (tmp_path / "worker_0.npz").exists()
    codes, errors = run_workers(tmp_path, "--epochs", "3", "--backup", str(backup))
    assert codes == [0, 0], errors
    for i in range(2):  # epochs 0 and 1 were backed up: only epoch 2 ran again
        record = json.loads((tmp_path / f"worker_{i}.json").read_text())
        assert record["epochs_run"] == [2]
    first, second = worker_weights(tmp_path)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert_matches_reference(first, multi_worker_reference(epochs=3))


def test_mirrored_synchronized_batch_norm_equals_single_device(mirrored):
    result = mirrored["sync-bn"]
    assert result["deviation"] <= 1e-5
    assert result["statistics_deviation"] <= 1e-5


def test_mirrored_backup_and_restore_resumes_exactly(mirrored):
    assert mirrored["backup-and-restore"]["deviation"] <= 1e-6


def test_distributed_example_runs_on_two_logical_cpus():
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "distributed.py"),
            "--epochs",
            "1",
            "--num-train",
            "256",
            "--hidden",
            "8",
            "--batch-size",
            "64",
            "--replica-eps",
            "per_replica",
        ],
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 replica(s), eps_batch_size 32" in result.stdout


@pytest.mark.parametrize("mode", ["synchronized", "per_replica"])
def test_mirrored_pruned_weights_stay_zero(mirrored, mode):
    result = mirrored[f"sparse-{mode}"]
    assert result["num_pruned"] > 0
    assert result["pruned_max_abs"] == 0.0
    if mode == "synchronized":
        assert result["deviation"] <= 1e-5

"""SAMModel under tf.distribute, checked in separate processes (logical
devices and TF_CONFIG must be set before TensorFlow starts)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_checks(script, timeout=300):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "distributed" / script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULTS ")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    return json.loads(lines[-1][len("RESULTS ") :])


@pytest.fixture(scope="module")
def mirrored():
    return run_checks("mirrored_checks.py")


MLP_CASES = [
    f"mlp-{rule}-{mode}-jit{jit}"
    for rule in ("sam", "usam")
    for mode in ("synchronized", "per_replica")
    for jit in (0, 1)
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
    [
        "bn-synchronized-jit0",
        "bn-synchronized-jit1",
        "bn-per_replica-jit0",
        "bn-per_replica-jit1",
    ],
)
def test_mirrored_with_batch_norm_matches_by_hand_shards(mirrored, case):
    assert mirrored[case]["deviation"] <= 1e-5


def test_mirrored_mixed_precision_skips_on_every_replica(mirrored):
    result = mirrored["mixed-float16-skip"]
    assert result["deviation"] == 0.0
    assert result["scale"] == 2.0**14

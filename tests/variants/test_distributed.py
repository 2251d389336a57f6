"""Variants under MirroredStrategy (2 logical CPUs, separate process): each
replica's step equals single-device training on the global batch."""

import pytest

from tests.distributed.checks import run_checks

pytestmark = pytest.mark.backends("tensorflow")


@pytest.fixture(scope="module")
def mirrored():
    return run_checks("variants/distributed_checks.py")


@pytest.mark.parametrize("case", ["looksam-jit0", "gsam-jit1", "wsam-jit0"])
def test_mirrored_variants_match_single_device_numpy(mirrored, case):
    result = mirrored[case]
    assert result["deviation"] <= 1e-5
    assert result["passes"] == result["expected_passes"]

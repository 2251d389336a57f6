"""The command line: clear errors for bad options, a quiet start."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from keras_sam import _quiet
from keras_sam.study import cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--sizes", "0", r"`sizes` must be a finite number > 0, got sizes=0"),
        ("--sizes", "100,-3", r"`sizes` must be a finite number > 0, got sizes=-3"),
        ("--lr", "0", r"`lr` must be a finite number > 0, got lr=0.0"),
        ("--epochs", "0", r"`epochs` must be a positive integer, got epochs=0"),
    ],
)
def test_sweep_rejects_bad_options_by_name(capsys, option, value, message):
    code = cli.main(["sweep", "synthetic", "--dry-run", option, value])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("keras-sam sweep: error: ")
    assert message in err


NOTICES = (
    "WARNING: All log messages before absl::InitializeLog() is called are "
    "written to STDERR\n"
    "I0000 00:00:1796 11874 port.cc:153] oneDNN custom operations are on. You "
    "may see slightly different numerical results.\n"
    "I0000 00:00:1796 11874 cudart_stub.cc:31] Could not find cuda drivers on "
    "your machine, GPU will not be used.\n"
    "E0000 00:00:1796 11874 cuda_platform.cc:52] failed call to cuInit: "
    "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n"
)
REAL = "E0000 00:00:1796 11874 op_kernel.cc:1] a real failure\nW0000 a warning\n"


def test_native_stderr_filter_keeps_real_errors(capfd):
    with _quiet.filtered_native_stderr():
        os.write(2, (NOTICES + REAL).encode())
        print("from Python", file=sys.stderr)
    # (pytest takes Python's stderr around the descriptor: order may differ)
    lines = capfd.readouterr().err.splitlines(keepends=True)
    assert sorted(lines) == sorted((REAL + "from Python\n").splitlines(True))


def test_cuinit_failure_is_kept_where_cuda_drivers_were_found():
    cuinit = NOTICES.splitlines(keepends=True)[-1]
    assert _quiet.without_notices(cuinit) == cuinit
    assert _quiet.without_notices(NOTICES) == ""


def test_command_starts_quietly():
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, "-m", "keras_sam", "sweep", "synthetic", "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "preset 'quick'" in result.stdout
    assert result.stderr == ""

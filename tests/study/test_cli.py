"""The command line: clear errors for bad options, a quiet start."""

import json
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


FRAMEWORKS = ("tensorflow", "jax", "torch", "keras")
HELP_CHECK = """
import json, sys, time
sys.argv[0] = "keras-sam"  # as the installed command
start = time.perf_counter()
from keras_sam.study import cli
codes = []
for argv in (["--help"], ["sweep", "--help"], ["demo", "--help"],
             ["compare", "--help"]):
    try:
        cli.main(argv)
    except SystemExit as exit:
        codes.append(exit.code)
seconds = time.perf_counter() - start
loaded = sorted(m for m in FRAMEWORKS if m in sys.modules)
print(json.dumps({"codes": codes, "seconds": seconds, "loaded": loaded}))
""".replace("FRAMEWORKS", repr(FRAMEWORKS))


def _fresh(code, **env):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3", **env)
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def test_every_help_is_fast_and_imports_no_framework():
    result = _fresh(HELP_CHECK)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["codes"] == [0, 0, 0, 0]
    assert report["loaded"] == []
    # Parsing only: the four helps together, imports included.
    assert report["seconds"] < 1.0, report
    for command in ("sweep", "demo", "compare"):
        assert f"keras-sam {command}" in result.stdout


def test_help_check_sees_a_framework_import():
    # The check above can fail: a framework imported on the way is seen (a
    # stand-in module by that name: a real import of one costs seconds).
    stand_in = "import sys, types\nsys.modules['keras'] = types.ModuleType('keras')\n"
    result = _fresh(stand_in + HELP_CHECK)
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["loaded"] == ["keras"]


def test_python_m_keras_sam_help():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "keras_sam", "sweep", "--help"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0 and result.stderr == ""
    assert "mnist1d" in result.stdout and "--rhos" in result.stdout


MISSING = """
import sys
sys.modules[MODULE] = None  # as on an install without it
sys.argv[0] = "keras-sam"
from keras_sam.study import cli
sys.exit(cli.main(ARGV))
"""


@pytest.mark.parametrize(
    "module, backend, argv, extra",
    [
        ("tensorflow", "tensorflow", ["sweep", "synthetic", "--dry-run"], "study"),
        ("tensorflow", "jax", ["sweep", "synthetic", "--dry-run"], "study"),
        ("tensorflow", "tensorflow", ["compare", "m.keras", "--data", "d.npz"],
         "tensorflow"),
        ("jax", "jax", ["demo"], "jax"),
    ],
)  # fmt: skip
def test_a_missing_extra_is_one_line_naming_it(module, backend, argv, extra):
    code = MISSING.replace("MODULE", repr(module)).replace("ARGV", repr(argv))
    result = _fresh(code, KERAS_BACKEND=backend)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"keras-sam {argv[0]}: error: ")
    assert f"needs {module!r}" in lines[0]
    assert f"pip install 'keras-sam[{extra}]'" in lines[0]


def test_an_unrelated_missing_module_is_not_hidden():
    error = ModuleNotFoundError("No module named 'typo'", name="typo")
    assert cli.missing_extra_message("sweep", error) is None
    error = ModuleNotFoundError("No module named 'sklearn'", name="sklearn.datasets")
    assert "keras-sam[study]" in cli.missing_extra_message("sweep", error)


def test_the_command_line_and_the_submitit_launcher_import_no_cycle():
    import ast

    def imports(module, module_level=False):
        path = ROOT / (module.replace(".", "/") + ".py")
        tree = ast.parse(path.read_text())
        found = set()
        for node in tree.body if module_level else ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        return found

    launcher = "keras_sam.study.sweep.submitit_launcher"
    assert not {"keras_sam.study.cli", "keras_sam.study.sweep_cli"} & imports(launcher)
    assert launcher not in imports("keras_sam.study.cli")
    # The command line only parses: no framework, no command at import.
    top = imports("keras_sam.study.cli", module_level=True)
    assert not {"keras", "tensorflow", "numpy", "keras_sam.study.sweep_cli"} & top

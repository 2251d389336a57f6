"""Runs the MirroredStrategy check scripts (tests/distributed/mirrored_checks.py,
tests/variants/distributed_checks.py) in one fresh process (logical devices
must be set before TensorFlow starts; one start serves both) and returns a
script's results, the JSON its `main()` returned."""

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ("distributed/mirrored_checks.py", "variants/distributed_checks.py")

_DRIVER = """
import json, runpy, sys
results = {path: runpy.run_path(path)["main"]() for path in sys.argv[1:]}
print("RESULTS " + json.dumps(results))
"""


@functools.cache
def _all_results(timeout=480):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    paths = [str(ROOT / "tests" / script) for script in SCRIPTS]
    result = subprocess.run(
        [sys.executable, "-c", _DRIVER, *paths],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULTS ")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    results = json.loads(lines[-1][len("RESULTS ") :])
    return {script: results[path] for script, path in zip(SCRIPTS, paths)}


def run_checks(script):
    """The results of `script` (one of SCRIPTS, relative to tests/)."""
    return _all_results()[script]

"""What the core install of keras-sam weighs against the full one (with the
``study`` extras): `import keras_sam` time and installed size; prints ratios.

- Import time: fresh interpreters, `import keras_sam` with the study
  packages present (full) and made unimportable (core, as after
  ``pip install keras-sam``), and `import keras` alone for reference;
  interleaved over several rounds, medians reported.
- Installed size: the files of every distribution in the dependency closure
  of ``keras-sam`` (core) and ``keras-sam[study]`` (full) as this
  checkout's pyproject.toml declares them, sized from this environment's
  package metadata (nothing is installed).

    python benchmarks/import_weight.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("tensorflow_datasets", "matplotlib", "tensorflow_model_optimization")
BLOCK = f"""
import importlib.abc, sys
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {EXTRAS!r}:
            raise ModuleNotFoundError(name, name=name)
sys.meta_path.insert(0, Missing())
"""
CASES = {
    "keras only": "import keras",
    "core": BLOCK + "import keras_sam",
    "full": "import keras_sam",
}


def import_seconds(code: str) -> float:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", code], env=env, check=True, stderr=subprocess.DEVNULL
    )
    return time.perf_counter() - start


def _name(requirement: str) -> str:
    return re.split(r"[ ;<>=!~\[]", requirement, maxsplit=1)[0].lower()


def closure(requirements: list[str]) -> set[str]:
    """Installed distributions reachable from `requirements` (no extras of
    dependencies, no environment markers that do not apply)."""
    seen, todo = set(), [_name(r) for r in requirements]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        for requirement in dist.requires or []:
            if ";" in requirement and "extra ==" in requirement:
                continue
            marker = requirement.split(";", 1)[1] if ";" in requirement else ""
            if marker and not _marker_holds(marker):
                continue
            todo.append(_name(requirement))
    return seen


def _marker_holds(marker: str) -> bool:
    try:
        from packaging.markers import Marker

        return Marker(marker).evaluate()
    except Exception:
        return True


def megabytes(names: set[str]) -> float:
    total = 0
    for name in names:
        for file in metadata.distribution(name).files or []:
            path = file.locate()
            if path.is_file():
                total += path.stat().st_size
    return total / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs")
    times = {case: [] for case in CASES}
    for _ in range(args.rounds):
        for case, code in CASES.items():
            times[case].append(import_seconds(code))
    core_time = statistics.median(times["core"])
    for case, values in times.items():
        median = statistics.median(values)
        print(
            f"import {case:>10}: median {median:.2f} s (min {min(values):.2f}, "
            f"max {max(values):.2f}), {median / core_time:.2f}x core"
        )
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = closure(project["dependencies"])
    full = closure(project["dependencies"] + project["optional-dependencies"]["study"])
    core_size, full_size = megabytes(core), megabytes(full)
    print(f"installed core: {len(core)} distributions, {core_size:.0f} MiB")
    print(
        f"installed full: {len(full)} distributions, {full_size:.0f} MiB "
        f"({full_size / core_size:.2f}x core; study adds {sorted(full - core)})"
    )


if __name__ == "__main__":
    main()

"""Time to install `make test`'s environment on a fresh clone: pip against uv.

Each round makes a fresh venv per installer and installs the project (editable,
the extras `make test` takes, `constraints-cpu.txt`) the way the Makefile does
(uv: bootstrapped by pip into the venv, handed pip's find-links) and the way it
did before (pip alone), the installers alternating, with an empty download cache
each time (pip's `--no-cache-dir`, a fresh `UV_CACHE_DIR`): the cost on a machine
that has never installed the project. Wall time, the load average printed beside.

    python benchmarks/install_time.py --rounds 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ".[tensorflow,study,test,docs,jax,torch]"


def _find_links() -> list[str]:
    configured = (
        os.environ.get("PIP_FIND_LINKS")
        or subprocess.run(
            ["python3", "-m", "pip", "config", "get", "global.find-links"],
            capture_output=True,
            text=True,
        ).stdout
    )
    return [arg for link in configured.split() for arg in ("--find-links", link)]


def _install(installer: str, clone: Path, scratch: Path) -> float:
    venv = scratch / "venv"
    shutil.rmtree(venv, ignore_errors=True)
    shutil.rmtree(scratch / "uv-cache", ignore_errors=True)
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    quiet_pip = [python, "-m", "pip", "install", "--quiet", "--no-cache-dir"]
    start = time.perf_counter()
    if installer == "pip":
        commands = [
            quiet_pip + ["--upgrade", "pip"],
            quiet_pip + ["-c", "constraints-cpu.txt", "-e", EXTRAS],
        ]
    else:
        commands = [
            quiet_pip + ["uv"],
            [str(venv / "bin" / "uv"), "pip", "install", "--quiet", "--python", python]
            + ["--compile-bytecode", "-c", "constraints-cpu.txt"]
            + ["--index-strategy", "unsafe-best-match", *_find_links(), "-e", EXTRAS],
        ]
    environment = dict(os.environ, UV_CACHE_DIR=str(scratch / "uv-cache"))
    for command in commands:
        run = subprocess.run(
            command, cwd=clone, env=environment, capture_output=True, text=True
        )
        if run.returncode:
            raise SystemExit(f"{' '.join(command)} failed:\n{run.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        clone = scratch / "clone"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        times: dict[str, list[float]] = {"pip": [], "uv": []}
        for round_ in range(args.rounds):
            for installer in times:
                load = os.getloadavg()[0]
                seconds = _install(installer, clone, scratch)
                times[installer].append(seconds)
                print(
                    f"round {round_ + 1} {installer} {seconds:.1f} s (load {load:.2f})"
                )
    for installer, seconds in times.items():
        mean = sum(seconds) / len(seconds)
        print(f"{installer}: best {min(seconds):.1f} s, mean {mean:.1f} s")
    print(f"uv / pip (mean): {sum(times['uv']) / sum(times['pip']):.2f}x")


if __name__ == "__main__":
    main()

"""The PyTorch curvature tools the curvature benchmarks compare against,
in a virtual environment of their own (never this project's).

    python benchmarks/_peers.py [--venv /work/venvs/curvature-peers]

makes (once) a venv with PyHessian 0.1, curvlinops-for-pytorch 3.0.1 and
hessian-eigenthings 1.0.0a5 (a pre-release). PyTorch, NumPy and SciPy are
the ones of the interpreter that runs this script when it has them (a
``.pth`` file puts its site-packages last on the venv's path: PyPI's
default torch wheel is the multi-GB CUDA build), else pip installs them.
Prints the venv's python.
"""

from __future__ import annotations

import argparse
import os
import site
import subprocess
import sys
import venv

DEFAULT_VENV = "/work/venvs/curvature-peers"
PEERS = (
    "pyhessian==0.1",
    "curvlinops-for-pytorch==3.0.1",
    "hessian-eigenthings==1.0.0a5",
)
# The peers' dependencies but torch's own stack: installed without their
# dependencies when torch is reused (backpack asks for torchvision, which
# would pull a CUDA torch; none of the three imports it).
_REST = (
    "backpack-for-pytorch==1.7.1",
    "unfoldNd",
    "einconv",
    "linear_operator",
    "opt-einsum",
    "einops",
    "tqdm",
)
_CHECK = "import pyhessian, curvlinops, hessian_eigenthings, torch"


def _python(path: str) -> str:
    return os.path.join(path, "bin", "python")


def _works(python: str) -> bool:
    if not os.path.exists(python):
        return False
    return subprocess.run([python, "-c", _CHECK], capture_output=True).returncode == 0


def ensure(path: str = DEFAULT_VENV) -> str:
    """The venv's python, the venv made and filled first where needed."""
    python = _python(path)
    if _works(python):
        return python
    if not os.path.exists(python):
        venv.EnvBuilder(with_pip=True).create(path)
    install = [python, "-m", "pip", "install", "--quiet", "--pre", *PEERS]
    try:
        import torch  # noqa: F401

        # Reuse this interpreter's torch (and NumPy / SciPy): appended to
        # the venv's path, so the venv's own packages come first.
        here = [p for p in site.getsitepackages() if os.path.isdir(p)]
        out = subprocess.run(
            [python, "-c", "import site; print(site.getsitepackages()[0])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        with open(os.path.join(out, "_reuse_torch.pth"), "w") as f:
            f.write("\n".join(here) + "\n")
        install += [*_REST, "--no-deps"]
    except ImportError:
        pass
    subprocess.run(install, check=True)
    if not _works(python):
        raise RuntimeError(f"{path}: the peers do not import ({_CHECK}).")
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--venv", default=DEFAULT_VENV)
    args = parser.parse_args()
    print(ensure(args.venv))


if __name__ == "__main__":
    sys.exit(main())

"""The release checks of `make package-check`, and the README's Usage snippet.

    python tests/release_check.py archives DIST   # the sdist and the wheel in DIST
    python tests/release_check.py usage README.md [--epochs N] [--installed]

`usage` runs the first ```python block of the README's "## Usage" section as a
script (with `epochs=` of its `fit` replaced by N if given); `--installed` also
checks that keras_sam came from an installed wheel, not a checkout, and that
TensorFlow is neither importable nor imported (a one-backend install). Runs
with the standard library alone: it is run in the fresh venv of the lane.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import sys
import tarfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Files the sdist must hold beside the package's sources.
SDIST_FILES = ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "PKG-INFO")


def usage_snippet(readme: str) -> str:
    """The first Python block of the README's "## Usage" section."""
    section = re.search(r"^## Usage\n(.*?)(?=^## )", readme, re.M | re.S)
    if section is None:
        raise ValueError("README.md has no '## Usage' section")
    block = re.search(r"^```python\n(.*?)^```", section.group(1), re.M | re.S)
    if block is None:
        raise ValueError("README.md's Usage section has no ```python block")
    return block.group(1)


def with_epochs(code: str, epochs: int) -> str:
    """`code` with the `epochs=` of its `fit` call set to `epochs`."""
    code, count = re.subn(r"\bepochs=\d+", f"epochs={epochs}", code)
    if count != 1:
        raise ValueError(f"expected one `epochs=` in the snippet, found {count}")
    return code


def run_usage(readme_path: str, epochs: int | None, installed: bool) -> None:
    with open(readme_path, encoding="utf-8") as f:
        code = usage_snippet(f.read())
    if epochs is not None:
        code = with_epochs(code, epochs)
    exec(compile(code, f"{readme_path}:Usage", "exec"), {"__name__": "__main__"})
    import keras

    import keras_sam

    where = os.path.dirname(keras_sam.__file__)
    print(f"Usage snippet ran: Keras {keras.__version__} on {keras.backend.backend()}")
    print(f"keras_sam {keras_sam.__version__} from {where}")
    if installed:
        checkout = os.path.join(ROOT, "keras_sam")
        if "site-packages" not in where or os.path.samefile(where, checkout):
            sys.exit(f"keras_sam came from {where}, not from an installed wheel")
        if "tensorflow" in sys.modules or importlib.util.find_spec("tensorflow"):
            sys.exit("TensorFlow is installed or imported in a jax-only install")


def _source_files() -> set[str]:
    found = set()
    for folder, dirs, files in os.walk(os.path.join(ROOT, "keras_sam")):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith(".py"):
                found.add(os.path.relpath(os.path.join(folder, name), ROOT))
    return found


def check_archives(dist: str) -> list[str]:
    """What is wrong with the one sdist and the one wheel in `dist`."""
    names = sorted(os.listdir(dist))
    sdists = [n for n in names if n.endswith(".tar.gz")]
    wheels = [n for n in names if n.endswith(".whl")]
    if len(sdists) != 1 or len(wheels) != 1:
        return [f"expected one sdist and one wheel in {dist}, found {names}"]
    problems = []
    sources = _source_files()
    with tarfile.open(os.path.join(dist, sdists[0])) as sdist:
        members = {m.name.split("/", 1)[1] for m in sdist.getmembers() if m.isfile()}
    for name in sorted(sources - members):
        problems.append(f"sdist lacks {name}")
    for name in SDIST_FILES:
        if name not in members:
            problems.append(f"sdist lacks {name}")
    for name in sorted(members):
        if name.startswith(("tests/", "notebooks/", "docs/")):
            problems.append(f"sdist holds {name} (left out on purpose: MANIFEST.in)")
    with zipfile.ZipFile(os.path.join(dist, wheels[0])) as wheel:
        members = set(wheel.namelist())
        metadata_name = next(n for n in members if n.endswith(".dist-info/METADATA"))
        metadata = wheel.read(metadata_name).decode()
    for name in sorted(sources - members):
        problems.append(f"wheel lacks {name}")
    top_level = {n.split("/", 1)[0] for n in members}
    for name in sorted(top_level):
        if name != "keras_sam" and not name.endswith(".dist-info"):
            problems.append(f"wheel installs {name}/ beside keras_sam")
    if not any(n.endswith(".dist-info/licenses/LICENSE") for n in members):
        problems.append("wheel lacks its LICENSE")
    for line in ("License-Expression: Apache-2.0", "Project-URL: Repository, "):
        if line not in metadata:
            problems.append(f"wheel METADATA lacks {line!r}")
    return problems


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    archives = commands.add_parser("archives", help="check the sdist and the wheel")
    archives.add_argument("dist")
    usage = commands.add_parser("usage", help="run the README's Usage snippet")
    usage.add_argument("readme")
    usage.add_argument("--epochs", type=int, default=None)
    usage.add_argument("--installed", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "archives":
        problems = check_archives(args.dist)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            sys.exit(1)
        print(f"sdist and wheel in {args.dist}: complete")
    else:
        run_usage(args.readme, args.epochs, args.installed)


if __name__ == "__main__":
    main()

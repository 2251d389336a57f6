"""What `import keras_sam` costs (the core install's dependencies only), and the
release: the README's install and Usage snippet, metadata, the repository's
address, the archives' contents (`make package-check` builds and installs them)."""

import ast
import builtins
import re
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests import release_check
from tests.fresh_imports import EXTRAS, fresh_imports, library_modules

pytestmark = pytest.mark.backend_independent

ROOT = Path(__file__).resolve().parents[1]


def test_import_needs_only_the_core_dependencies():
    # With the extras made unimportable, as in a core install (one interpreter
    # shared with test_layout's import check: tests/fresh_imports.py).
    report = fresh_imports(library_modules())
    study = tuple(f"keras_sam.study.{m}" for m in ("workloads", "sweep", "cli"))
    loaded = [m for m in report["keras_sam"] if m.startswith(study)]
    assert loaded == [], f"import keras_sam loaded the study: {loaded}"
    extras = [m for m in report["every_module"] if m.split(".")[0] in EXTRAS]
    assert extras == [], f"import keras_sam loaded optional packages: {extras}"


def test_core_dependencies_are_what_the_sam_step_needs():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(requirements):
        return {re.split(r"[<>=\[ ]", r, maxsplit=1)[0] for r in requirements}

    # No backend in the core: a JAX or PyTorch user does not install TensorFlow.
    assert names(project["dependencies"]) == {"keras", "numpy"}
    extras = project["optional-dependencies"]
    assert names(extras["tensorflow"]) == {"tensorflow"}
    assert names(extras["jax"]) == {"jax"}
    assert names(extras["torch"]) == {"torch"}
    assert names(extras["study"]) >= {
        "tensorflow-datasets",
        "matplotlib",
        "tensorflow-model-optimization",
    }
    assert names(extras["tfmot"]) == {"tensorflow", "tensorflow-model-optimization"}


# --- The release: README, metadata, the repository's address, the archives ---

README = (ROOT / "README.md").read_text(encoding="utf-8")
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
REPOSITORY = PROJECT["urls"]["Repository"]


def test_readme_usage_snippet_defines_what_it_uses():
    code = release_check.usage_snippet(README)
    tree = ast.parse(code)
    defined = set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            defined.add(node.id)
        elif isinstance(node, ast.alias):
            defined.add((node.asname or node.name).split(".")[0])
    used = {
        node.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)
    }
    assert used <= defined, f"the Usage snippet uses undefined {used - defined}"
    # The backend is chosen before Keras is imported.
    assert code.index('os.environ.setdefault("KERAS_BACKEND"') < code.index(
        "import keras\n"
    )
    assert "keras_sam.sam(" in code and ".fit(" in code


def test_readme_installs_from_the_repository_before_usage():
    install = README.index("## Install")
    assert install < README.index("## Usage")
    section = README[install : README.index("## Usage")]
    assert f"pip install 'keras-sam[jax] @ git+{REPOSITORY}'" in section
    assert f"git clone {REPOSITORY}" in section
    assert "pip install '.[jax]'" in section
    assert "--index-url https://download.pytorch.org/whl/cpu" in section
    assert "KERAS_BACKEND" in section


def test_repository_address_is_one_setting():
    github = REPOSITORY.removeprefix("https://github.com/")
    assert github != REPOSITORY and github.count("/") == 1, REPOSITORY
    for name, url in PROJECT["urls"].items():
        assert url.startswith(REPOSITORY), (name, url)
    mkdocs = (ROOT / "mkdocs.yml").read_text()
    assert f"repo_url: {REPOSITORY}\n" in mkdocs
    for path in ("README.md", "CHANGELOG.md", "docs/index.md"):
        text = (ROOT / path).read_text(encoding="utf-8")
        for url in re.findall(r"https://github\.com/[\w.-]+/[\w.-]+", text):
            assert url in (REPOSITORY, REPOSITORY + ".git"), (path, url)
        for url in re.findall(
            r"https://raw\.githubusercontent\.com/[\w.-]+/[\w.-]+", text
        ):
            assert url == f"https://raw.githubusercontent.com/{github}", (path, url)


def test_readme_links_are_absolute_and_resolve():
    # The README is the project's page on the package index too, where
    # relative links and images break.
    github = REPOSITORY.removeprefix("https://github.com/")
    raw = f"https://raw.githubusercontent.com/{github}/main/"
    links = re.findall(r"\]\(([^)\s]+)\)", README) + re.findall(
        r'<img[^>]+src="([^"]+)"', README
    )
    assert links
    for link in links:
        assert link.startswith(("https://", "#")), f"relative link in README: {link}"
        for prefix in (f"{REPOSITORY}/blob/main/", f"{REPOSITORY}/tree/main/", raw):
            if link.startswith(prefix):
                path = link.removeprefix(prefix).split("#")[0]
                assert (ROOT / path).exists(), f"README links a missing file: {link}"


def test_license_and_metadata():
    license_text = (ROOT / "LICENSE").read_text()
    assert "Apache License\n" in license_text
    assert "Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text
    assert PROJECT["license"] == "Apache-2.0"
    assert PROJECT["license-files"] == ["LICENSE"]
    # An SPDX license expression excludes License :: classifiers (PEP 639).
    assert not any(c.startswith("License ::") for c in PROJECT["classifiers"])
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]
    assert build["requires"] == ["setuptools>=77"]


def test_extras_are_ranges_and_the_make_environments_take_cpu_builds():
    requirements = list(PROJECT["dependencies"])
    for extra in PROJECT["optional-dependencies"].values():
        requirements += extra
    pinned = [r for r in requirements if "==" in r]
    assert pinned == [], f"pinned requirements: {pinned}"
    assert PROJECT["optional-dependencies"]["torch"] == ["torch>=2.4"]
    constraints = (ROOT / "constraints-cpu.txt").read_text()
    assert re.search(r"^torch==[\d.]+\+cpu$", constraints, re.M)
    makefile = (ROOT / "Makefile").read_text()
    # Every install of the project into a make environment (editable).
    installs = [line for line in makefile.splitlines() if ' -e ".[' in line]
    assert len(installs) >= 4, installs
    assert all(
        "$(UV_INSTALL)" in line or "$(PIP_INSTALL)" in line for line in installs
    ), installs
    definitions = dict(
        re.findall(r"^(UV_INSTALL|PIP_INSTALL) = ((?:.*\\\n)*.*)$", makefile, re.M)
    )
    assert sorted(definitions) == ["PIP_INSTALL", "UV_INSTALL"]
    for definition in definitions.values():
        assert "-c $(CONSTRAINTS)" in definition
        assert "--extra-index-url $(CPU_INDEX)" in definition
    # uv reads no pip configuration: pip's find-links are handed to it.
    assert "--find-links" in definitions["UV_INSTALL"]


def test_changelog_keeps_a_changelog():
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    versions = re.findall(r"^## \[([^\]]+)\](.*)$", changelog, re.M)
    assert versions[0] == ("Unreleased", "")
    assert versions[1][0] == PROJECT["version"]
    assert re.fullmatch(r" - \d{4}-\d{2}-\d{2}", versions[1][1])
    init = (ROOT / "keras_sam" / "__init__.py").read_text()
    assert f'__version__ = "{PROJECT["version"]}"' in init
    for version, _ in versions:
        assert f"\n[{version}]: {REPOSITORY}/" in changelog


def _archives(folder, sdist_names, wheel_names, metadata):
    folder.mkdir()
    with tarfile.open(folder / "keras_sam-0.1.0.tar.gz", "w:gz") as sdist:
        for name in sdist_names:
            source = ROOT / name if (ROOT / name).exists() else ROOT / "README.md"
            sdist.add(source, arcname=f"keras_sam-0.1.0/{name}")
    with zipfile.ZipFile(folder / "keras_sam-0.1.0-py3-none-any.whl", "w") as wheel:
        for name in wheel_names:
            wheel.writestr(name, "")
        wheel.writestr("keras_sam-0.1.0.dist-info/METADATA", metadata)
    return str(folder)


def test_archive_check_finds_what_is_missing_or_extra(tmp_path):
    sources = sorted(release_check._source_files())
    complete_sdist = [*sources, *release_check.SDIST_FILES]
    complete_wheel = [*sources, "keras_sam-0.1.0.dist-info/licenses/LICENSE"]
    metadata = (
        f"License-Expression: Apache-2.0\nProject-URL: Repository, {REPOSITORY}\n"
    )
    good = _archives(tmp_path / "good", complete_sdist, complete_wheel, metadata)
    assert release_check.check_archives(good) == []
    bad = _archives(
        tmp_path / "bad",
        [n for n in complete_sdist if n not in ("LICENSE", sources[0])]
        + ["tests/test_x.py"],
        [n for n in complete_wheel if "licenses" not in n] + ["tests/__init__.py"],
        "License: Apache-2.0\n",
    )
    assert sorted(release_check.check_archives(bad)) == sorted(
        [
            f"sdist lacks {sources[0]}",
            "sdist lacks LICENSE",
            "sdist holds tests/test_x.py (left out on purpose: MANIFEST.in)",
            "wheel installs tests/ beside keras_sam",
            "wheel lacks its LICENSE",
            "wheel METADATA lacks 'License-Expression: Apache-2.0'",
            "wheel METADATA lacks 'Project-URL: Repository, '",
        ]
    )

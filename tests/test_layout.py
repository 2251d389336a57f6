"""The library never imports the study harness (`keras_sam.study`).

Read from the import graph of the source: every `import` and `from ... import`
statement (module level or inside a function, relative ones resolved), followed
transitively from each library module. `python -m keras_sam` belongs to the
study side.
"""

import ast
import textwrap
from pathlib import Path

import pytest

from tests import fresh_imports

pytestmark = pytest.mark.backend_independent

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "keras_sam"
STUDY = "keras_sam.study"
BACKENDS = ("tensorflow", "jax", "torch")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(path: Path, name: str) -> set[str]:
    """Every module (and `from` target) the file's import statements name."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            found.add(source)
            # `from keras_sam import study` imports the submodule `study`.
            found.update(f"{source}.{alias.name}" for alias in node.names)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        targets = set()
        for imported in imported_names(path, name):
            # `import a.b.c` runs a, a.b and a.b.c.
            parts = imported.split(".")
            targets.update(
                ".".join(parts[:i])
                for i in range(1, len(parts) + 1)
                if ".".join(parts[:i]) in files
            )
        graph[name] = targets - {name}
    return graph


def is_study(name: str) -> bool:
    return name == STUDY or name.startswith(STUDY + ".")


def study_side(graph: dict[str, set[str]]) -> set[str]:
    return {n for n in graph if is_study(n)} | {"keras_sam.__main__"}


def library_modules(graph: dict[str, set[str]]) -> list[str]:
    return sorted(set(graph) - study_side(graph))


def path_to_study(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """An import chain from `start` into the study, or None."""
    study = study_side(graph)
    parents, frontier = {start: None}, [start]
    while frontier:
        name = frontier.pop()
        for target in graph.get(name, ()):
            if target in parents:
                continue
            parents[target] = name
            if target in study:
                chain = [target]
                while parents[chain[-1]] is not None:
                    chain.append(parents[chain[-1]])
                return chain[::-1]
            frontier.append(target)
    return None


def test_no_library_module_imports_the_study():
    graph = import_graph()
    assert "keras_sam.study.sweep.runner" in graph  # the graph sees the study
    assert len(library_modules(graph)) > 40
    chains = {m: path_to_study(graph, m) for m in library_modules(graph)}
    offenders = {m: " -> ".join(c) for m, c in chains.items() if c}
    assert not offenders, f"library modules import the study: {offenders}"


def test_the_graph_sees_an_import_of_the_study(tmp_path):
    # The check above must be able to fail: a library module with a function-level
    # relative import of the study is found.
    graph = import_graph()
    graph["keras_sam.hessian.measures"] = graph["keras_sam.hessian.measures"] | {
        "keras_sam.study.workloads"
    }
    chain = path_to_study(graph, "keras_sam.callbacks.hessian_metrics")
    assert chain is not None and chain[-1] == "keras_sam.study.workloads"
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from ..study import sweep\n")
    assert "keras_sam.study.sweep" in imported_names(source, "keras_sam.hessian.m")


def imported_test_modules(source: str, name: str) -> set[str]:
    """The test modules (`tests. ... .test_*`) that module `name`'s `source`
    imports: in its import statements, relative ones resolved, and in the
    scripts of its string constants (what it runs in a subprocess)."""
    package = name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if "import" in node.value:
                try:
                    found |= imported_test_modules(textwrap.dedent(node.value), name)
                except SyntaxError:
                    pass  # prose, not a script
    return {
        m for m in found if m.startswith("tests.") and m.rsplit(".")[-1][:5] == "test_"
    }


def test_no_test_module_imports_another():
    # Shared builders live in helper modules (tests/models.py,
    # tests/variants/training.py, ...), shared fixtures in conftest.py files.
    offenders = {}
    for path in sorted((ROOT / "tests").rglob("*.py")):
        if path == Path(__file__).resolve():
            continue  # its examples below of what is refused
        imported = imported_test_modules(path.read_text(), module_name(path))
        if imported:
            offenders[str(path.relative_to(ROOT))] = sorted(imported)
    assert not offenders, f"test modules imported by: {offenders}"


def test_an_imported_test_module_is_found():
    # The check above can fail: an import statement, a relative import, a
    # `from package import test_module` and a subprocess script are found.
    name = "tests.variants.helper"
    cases = {
        "from tests.test_sam_model import mlp\n": "tests.test_sam_model",
        "from tests import reference, test_backends\n": "tests.test_backends",
        "def f():\n    from .test_step import LR\n": "tests.variants.test_step",
        'S = """\nimport sys\nfrom tests.test_x import f\n"""\n': "tests.test_x",
    }
    for source, expected in cases.items():
        assert imported_test_modules(source, name) == {expected}, source
    helpers = "from tests.models import mlp\nfrom tests import reference\n"
    assert imported_test_modules(helpers + 'X = "not an import"\n', name) == set()


def test_importing_every_library_module_loads_no_study_module():
    # What the source graph cannot see (importlib by name): import each library
    # module in a fresh process and look at sys.modules (the extras made
    # unimportable: one interpreter shared with test_package's import check,
    # tests/fresh_imports.py).
    graph = import_graph()
    names = [
        m
        for m in library_modules(graph)
        # Each backend's package imports its framework.
        if not m.startswith(tuple(f"keras_sam.backend.{name}" for name in BACKENDS))
    ]
    assert tuple(names) == fresh_imports.library_modules()
    loaded = fresh_imports.fresh_imports(tuple(names))["every_module"]
    assert [m for m in loaded if is_study(m)] == []


def declares_all(path: Path) -> bool:
    """Whether the module assigns `__all__` at its top level."""
    tree = ast.parse(path.read_text(), str(path))
    return any(
        isinstance(node, ast.Assign | ast.AnnAssign)
        and any(
            isinstance(t, ast.Name) and t.id == "__all__"
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
        )
        for node in tree.body
    )


def public_library_modules(graph: dict[str, set[str]]) -> list[str]:
    """Library modules a user may import: no part of the name is private, and
    not a backend's own modules (its package, `keras_sam.backend.<name>`, is
    the interface)."""
    backend_parts = tuple(f"keras_sam.backend.{name}." for name in BACKENDS)
    return [
        m
        for m in library_modules(graph)
        if not any(part.startswith("_") for part in m.split("."))
        and not m.startswith(backend_parts)
    ]


def test_every_public_library_module_declares_all(tmp_path):
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    public = public_library_modules(import_graph())
    assert {"keras_sam.sam_step", "keras_sam.variants.gsam"} <= set(public)
    assert "keras_sam.backend.jax" in public
    assert "keras_sam.backend.jax.step" not in public
    missing = sorted(m for m in public if not declares_all(files[m]))
    assert not missing, f"public modules without __all__: {missing}"
    # The check can fail: a module without `__all__` is found.
    source = tmp_path / "m.py"
    source.write_text("x = 1\n")
    assert not declares_all(source)
    source.write_text('__all__ = ["x"]\nx = 1\n')
    assert declares_all(source)

"""The API reference (docs/api/hooks.py): every public name has a page, and what
would leave one without it is found. `make docs` builds the whole site in CI
with warnings as errors (broken links included)."""

import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.backend_independent

ROOT = Path(__file__).resolve().parents[1]


def load(name):
    path = ROOT / "docs" / "api" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"docs_api_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


hooks = load("hooks")


def test_every_public_name_of_the_package_has_a_page():
    import keras_sam
    import keras_sam.study

    reference = hooks.Reference()
    assert reference.problems() == []
    # Each public module, by __all__, from the roots down.
    expected = {"keras_sam", "keras_sam.study"}
    for name in keras_sam.__all__:
        if name != "__version__" and hasattr(getattr(keras_sam, name), "__path__"):
            expected.add(f"keras_sam.{name}")
    assert expected <= set(reference.modules)
    for path in reference.modules:
        module = sys.modules[path]
        page = reference.page(path)
        entries = {e.name: e for e in reference.modules[path].entries}
        assert list(entries) == list(module.__all__)
        for name, entry in entries.items():
            if name == "__version__":
                continue
            if entry.module:
                assert f"[`{entry.target}`]({entry.target}.md)" in page
            else:
                assert entry.target.rsplit(".", 1)[-1] == name
                assert f"::: {entry.target}\n" in page, (path, name)


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A package with one of each case: imported, lazy, constant, missing
    docstring, submodule without __all__, a name that does not resolve."""
    name = "docs_fixture_package"
    files = {
        "__init__.py": '''
            """The fixture."""
            from docs_fixture_package import sub
            from docs_fixture_package._impl import documented, undocumented

            __all__ = [
                "documented", "undocumented", "sub", "CONST", "lazy", "TABLE", "gone"
            ]

            #: A documented constant.
            CONST = 1


            def __getattr__(name):
                if name in ("lazy", "TABLE"):
                    from docs_fixture_package import _lazy

                    return getattr(_lazy, name)
                raise AttributeError(name)
            ''',
        "_impl.py": '''
            def documented():
                """Documented."""


            def undocumented():
                pass
            ''',
        "_lazy.py": '''
            def lazy():
                """Imported on first use."""

            #: The table the package exports.
            TABLE = {"a": 1}
            ''',
        "_other.py": """
            TABLE = {"b": 2}  # another object of the same name
            """,
        "sub.py": '''
            """A public module without __all__."""
            ''',
    }
    folder = tmp_path / name
    folder.mkdir()
    for file, text in files.items():
        (folder / file).write_text(textwrap.dedent(text).lstrip())
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, str(tmp_path)
    for module in [m for m in sys.modules if m.split(".")[0] == name]:
        del sys.modules[module]


def test_reference_finds_what_leaves_a_name_without_a_page(package):
    name, path = package
    reference = hooks.Reference(roots=(name,), search_path=path)
    assert set(reference.modules) == {name, f"{name}.sub"}
    problems = reference.problems()
    assert f"{name}.sub: a public module without __all__" in problems
    assert f"{name}.undocumented: no docstring" in problems
    gone = f"{name}.gone: in __all__ but does not resolve"
    assert any(p.startswith(gone) for p in problems)
    assert len(problems) == 3, problems
    page = reference.page(name)
    assert f"::: {name}.documented\n" in page
    assert f"::: {name}.CONST\n" in page  # its `#:` comment is its docstring
    assert f"::: {name}._lazy.lazy\n" in page  # lazy: from where it is defined
    assert f"::: {name}._lazy.TABLE\n" in page  # the very object, not _other's
    assert f"[`{name}.sub`]({name}.sub.md)" in page


def test_comment_docstrings():
    comments = load("comment_docstrings")
    lines = ["x = 0", "#: First line", "  #: second line.", "VALUE = 1"]
    assert comments.comment_above(lines, 4) == "First line\nsecond line."
    assert comments.comment_above(lines, 1) == ""

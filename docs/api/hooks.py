"""MkDocs hook: the API reference, one page per public module, driven by `__all__`.

From `ROOTS`, every module that a public module exports (a name of its `__all__`
that is a module) is public too and gets a page rendering each exported name
through mkdocstrings, in the order of `__all__`. `__all__` and the exported
objects are read from the imported modules, so lazy exports (a module
`__getattr__`, a computed `__all__`) appear as users see them; each object is
rendered under its public path where the module defines or imports it, else
from where it is defined (its `__module__` and `__qualname__`, or for a
constant the module-level assignment in the package that holds the very
object), read by griffe. A
public module without `__all__`, an exported name that does not resolve, or one
without a docstring is a warning, so `mkdocs build --strict` fails on it.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging
import os
import sys
from pathlib import Path
from types import ModuleType

import griffe
from mkdocs.structure.files import File

#: The public packages: the library and the study harness.
ROOTS = ("keras_sam", "keras_sam.study")
#: Exported names that need no docstring of their own.
NO_DOCSTRING = frozenset({"__version__"})
SOURCE_DIR = str(Path(__file__).resolve().parents[2])
#: The griffe extension that mkdocs.yml gives mkdocstrings too.
EXTENSION = f"{Path(__file__).with_name('comment_docstrings.py')}:CommentDocstrings"

log = logging.getLogger("mkdocs.plugins.keras_sam.api")


@dataclasses.dataclass
class Entry:
    """One exported name: where it is rendered from, or what is wrong with it."""

    name: str
    target: str | None = None  # the dotted path mkdocstrings renders
    module: bool = False
    problem: str | None = None


@dataclasses.dataclass
class PublicModule:
    """A public module: whether it has a docstring and `__all__`, its exports."""

    path: str
    docstring: bool
    has_all: bool
    entries: list[Entry]


class Reference:
    """The public modules of a package, their exports and their definitions."""

    def __init__(self, roots: tuple[str, ...] = ROOTS, search_path: str = SOURCE_DIR):
        if search_path not in sys.path:
            sys.path.insert(0, search_path)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        self.package = roots[0]
        self.static = griffe.load(
            self.package,
            search_paths=[search_path],
            extensions=griffe.load_extensions(EXTENSION),
            resolve_aliases=False,
        )
        self.modules: dict[str, PublicModule] = {}
        pending = [importlib.import_module(root) for root in roots]
        while pending:
            module = pending.pop()
            if module.__name__ not in self.modules:
                pending += self._add(module)
        self.modules = dict(sorted(self.modules.items()))

    def _add(self, module: ModuleType) -> list[ModuleType]:
        names = getattr(module, "__all__", None)
        entries, submodules = [], []
        for name in names or ():
            entry = Entry(name)
            entries.append(entry)
            try:
                value = _export(module, name)
            except Exception as error:  # noqa: BLE001 (any failure is the finding)
                entry.problem = f"in __all__ but does not resolve ({error!r})"
                continue
            if inspect.ismodule(value):
                entry.module, entry.target = True, value.__name__
                submodules.append(value)
            else:
                self._locate(module.__name__, entry, value)
        self.modules[module.__name__] = PublicModule(
            module.__name__, bool(inspect.getdoc(module)), names is not None, entries
        )
        return submodules

    def _static(self, path: str) -> griffe.Object | griffe.Alias | None:
        if path == self.package:
            return self.static
        try:
            return self.static[path.removeprefix(self.package + ".")]
        except (KeyError, ValueError, griffe.AliasResolutionError):
            return None

    def _locate(self, module: str, entry: Entry, value: object) -> None:
        public = f"{module}.{entry.name}"
        defined_in = getattr(value, "__module__", None)
        qualname = getattr(value, "__qualname__", None)
        if self._static(public) is not None:  # defined or imported there
            entry.target = public
        elif (
            (inspect.isclass(value) or inspect.isroutine(value))
            and isinstance(defined_in, str)
            and isinstance(qualname, str)
            and self._static(f"{defined_in}.{qualname}") is not None
        ):
            entry.target = f"{defined_in}.{qualname}"
        else:  # a constant: the module of the package whose assignment it is
            found = [
                path
                for path in self._assignments(entry.name)
                if _runtime_value(path) is value
            ]
            if len(found) != 1:
                where = ", ".join(found) or "none"
                entry.problem = f"no one definition in the package (found: {where})"
                return
            entry.target = found[0]
        try:
            documented = bool(self._static(entry.target).docstring)
        except griffe.AliasResolutionError as error:
            entry.problem = f"its import does not resolve ({error})"
            return
        if not documented and entry.name not in NO_DOCSTRING:
            entry.problem = "no docstring"

    def _assignments(self, name: str) -> list[str]:
        found, pending = [], [self.static]
        while pending:
            module = pending.pop()
            for member in module.members.values():
                if member.is_alias:
                    continue
                if member.is_module:
                    pending.append(member)
                elif member.name == name and member.is_attribute:
                    found.append(member.path)
        return sorted(found)

    def problems(self) -> list[str]:
        """What keeps a public name from a complete page."""
        found = []
        for path, module in self.modules.items():
            if not module.docstring:
                found.append(f"{path}: the module has no docstring")
            if not module.has_all:
                found.append(f"{path}: a public module without __all__")
            for entry in module.entries:
                if entry.problem:
                    found.append(f"{path}.{entry.name}: {entry.problem}")
        return found

    def page(self, path: str) -> str:
        """The Markdown of a module's page: its docstring, then each export."""
        module = self.modules[path]
        lines = [
            f"# `{path}`",
            "",
            f"::: {path}",
            "    options:",
            "      show_root_heading: false",
            "      members: false",
            "",
        ]
        submodules = [e.target for e in module.entries if e.module]
        if submodules:
            links = ", ".join(f"[`{m}`]({m}.md)" for m in submodules)
            lines += [f"Modules: {links}.", ""]
        for entry in module.entries:
            if entry.module or entry.problem or entry.name in NO_DOCSTRING:
                continue
            lines += [f"::: {entry.target}", ""]
        return "\n".join(lines)


def _export(module: ModuleType, name: str) -> object:
    """`from module import name`: an attribute, else a submodule."""
    try:
        return getattr(module, name)
    except AttributeError:
        if not hasattr(module, "__path__"):
            raise
        return importlib.import_module(f"{module.__name__}.{name}")


def _runtime_value(path: str) -> object:
    module, name = path.rsplit(".", 1)
    try:
        return getattr(importlib.import_module(module), name)
    except Exception:  # noqa: BLE001 (not a candidate then)
        return None


def page_name(path: str) -> str:
    return f"api/{path}.md"


_reference: list[Reference] = []


def on_config(config):
    _reference[:] = [Reference()]
    pages = [{path: page_name(path)} for path in _reference[0].modules]
    config["nav"] = [*(config["nav"] or []), {"API reference": pages}]
    return config


def on_files(files, config):
    reference = _reference[0]
    for message in reference.problems():
        log.warning("API reference: %s", message)
    for path in reference.modules:
        content = reference.page(path)
        files.append(File.generated(config, page_name(path), content=content))
    return files

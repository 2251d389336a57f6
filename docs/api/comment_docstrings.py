"""Griffe extension: a `#:` comment block above a module constant is its docstring.

The sources document constants the Sphinx way::

    #: Added to norms in denominators so that a zero gradient gives eps = 0.
    TINY = 1e-12

Griffe reads only a string under the assignment; this gives such constants the
comment's text, so the API reference renders it and counts it as documented.
"""

from __future__ import annotations

from typing import Any

import griffe


def comment_above(lines: list[str], lineno: int) -> str:
    """The text of the `#:` lines right above line `lineno` (1-based)."""
    found = []
    index = lineno - 2
    while index >= 0 and lines[index].lstrip().startswith("#:"):
        found.append(lines[index].lstrip()[2:].strip())
        index -= 1
    return "\n".join(reversed(found))


class CommentDocstrings(griffe.Extension):
    def on_attribute_instance(
        self, *, node: Any, attr: griffe.Attribute, agent: Any, **kwargs: Any
    ) -> None:
        if attr.docstring or attr.lineno is None or attr.filepath is None:
            return
        try:
            lines = attr.lines_collection[attr.filepath]
        except KeyError:
            return
        text = comment_above(lines, attr.lineno)
        if text:
            attr.docstring = griffe.Docstring(text, lineno=attr.lineno, parent=attr)

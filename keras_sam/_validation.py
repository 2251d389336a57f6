"""Argument checks shared by the whole package, with one message style.

Each helper returns the value in its canonical type or raises a
`ValueError` that names the argument, what it accepts and what it got:

```python
rho = non_negative_float(rho, "rho")
# ValueError: `rho` must be a finite number >= 0, got rho=-1.
```

Booleans are rejected where a number is expected (``True`` is an `int` in
Python, and ``rho=True`` is almost certainly a mistake).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any


def _fail(name: str, accepted: str, value: Any) -> ValueError:
    return ValueError(f"`{name}` must be {accepted}, got {name}={value!r}.")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def positive_int(
    value: Any, name: str, *, allow_none: bool = False, hint: str = ""
) -> int | None:
    """An integer >= 1 (or None where `allow_none`). `hint` (e.g. what else
    the argument accepts) goes into the message."""
    if value is None and allow_none:
        return None
    if not _is_int(value) or value < 1:
        accepted = "a positive integer" + (" or None" if allow_none else "")
        raise _fail(name, accepted + (f" ({hint})" if hint else ""), value)
    return int(value)


def int_at_least(value: Any, name: str, minimum: int) -> int:
    """An integer >= `minimum`."""
    if not _is_int(value) or value < minimum:
        raise _fail(name, f"an integer >= {minimum}", value)
    return int(value)


def non_negative_int(value: Any, name: str) -> int:
    """An integer >= 0."""
    return int_at_least(value, name, 0)


def finite_float(value: Any, name: str) -> float:
    """A finite number, of either sign."""
    if not _is_real(value) or not math.isfinite(value):
        raise _fail(name, "a finite number", value)
    return float(value)


def positive_float(value: Any, name: str) -> float:
    """A finite number > 0."""
    if not _is_real(value) or not math.isfinite(value) or not value > 0:
        raise _fail(name, "a finite number > 0", value)
    return float(value)


def non_negative_float(value: Any, name: str) -> float:
    """A finite number >= 0."""
    if not _is_real(value) or not math.isfinite(value) or not value >= 0:
        raise _fail(name, "a finite number >= 0", value)
    return float(value)


def fraction(value: Any, name: str, *, hint: str = "") -> float:
    """A number in [0, 1). `hint` (e.g. what 0 and 0.9 mean) goes into the
    message."""
    if not _is_real(value) or not 0.0 <= value < 1.0:
        accepted = "a number in [0, 1)" + (f" ({hint})" if hint else "")
        raise _fail(name, accepted, value)
    return float(value)


def unit_fraction(value: Any, name: str) -> float:
    """A number in (0, 1]."""
    if not _is_real(value) or not 0.0 < value <= 1.0:
        raise _fail(name, "a number in (0, 1]", value)
    return float(value)


def one_of(value: Any, name: str, choices: Iterable[Any]) -> Any:
    """One of `choices` (compared with ==, no conversion)."""
    choices = list(choices)
    if isinstance(value, bool) or value not in choices:
        raise _fail(name, f"one of {choices}", value)
    return value


def boolean(value: Any, name: str) -> bool:
    """True or False (not 0, 1 or a string)."""
    if not isinstance(value, bool):
        raise _fail(name, "True or False", value)
    return value


def string(value: Any, name: str) -> str:
    """A `str`."""
    if not isinstance(value, str):
        raise _fail(name, "a string", value)
    return value


def non_empty_tuple(value: Any, name: str, item_check=None) -> tuple:
    """A non-empty list or tuple (not a string), each item passed through
    ``item_check(item, name)`` when given."""
    if isinstance(value, str) or not isinstance(value, list | tuple) or not value:
        raise _fail(name, "a non-empty tuple", value)
    if item_check is None:
        return tuple(value)
    try:
        return tuple(item_check(v, name) for v in value)
    except ValueError as error:
        raise ValueError(f"{error} (in {name}={value!r})") from None

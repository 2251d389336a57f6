"""Named, Keras-serializable subclasses of one base class.

The shared machinery behind `keras_sam.perturbations` (rules) and
`keras_sam.variants`: a class decorator that registers a subclass under one
or more names, and `get`, which accepts a name, an instance or a serialized
config.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras


class Configurable:
    """Base of objects defined by their options (`get_config`): rebuilt from
    them, shown by them, equal when they are equal."""

    def get_config(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config(cls, config: dict[str, Any]):
        return cls(**config)

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({options})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash((type(self), repr(self)))


class Registry:
    """Subclasses of `base` by name.

    Args:
        base: the base class every registered class must extend.
        argument: the user-facing argument name, used in error messages.
        public_name: how error messages name `base` (its public path).
        allow_none: whether `get(None)` returns None (no object).
    """

    def __init__(
        self, base: type, argument: str, public_name: str, *, allow_none=False
    ):
        self.base = base
        self.argument = argument
        self.public_name = public_name
        self.allow_none = allow_none
        self._classes: dict[str, type] = {}

    def register(self, *names: str) -> Callable[[type], type]:
        """Class decorator: makes a subclass of `base` available by `names`
        and serializable with Keras (package ``keras_sam``)."""

        def decorator(cls: type) -> type:
            if not (isinstance(cls, type) and issubclass(cls, self.base)):
                raise TypeError(f"{cls!r} is not a subclass of {self.base.__name__}.")
            for name in names:
                self._classes[name.lower()] = cls
            return keras.saving.register_keras_serializable(package="keras_sam")(cls)

        return decorator

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._classes)

    def get(self, identifier: Any) -> Any:
        """An instance from a registered name (default options), an instance,
        a serialized config, or None where `allow_none`."""
        if isinstance(identifier, self.base) or (
            identifier is None and self.allow_none
        ):
            return identifier
        if isinstance(identifier, str):
            cls = self._classes.get(identifier.lower())
            if cls is None:
                none = ", None," if self.allow_none else ""
                raise ValueError(
                    f"Unknown `{self.argument}`={identifier!r}; accepted names are "
                    f"{self.names()}{none} or a {self.public_name}."
                )
            return cls()
        if isinstance(identifier, dict):
            instance = keras.saving.deserialize_keras_object(identifier)
            if isinstance(instance, self.base):
                return instance
        none = "None, " if self.allow_none else ""
        raise ValueError(
            f"`{self.argument}` must be {none}one of {self.names()} or a "
            f"{self.public_name} instance, got {identifier!r}."
        )

"""One registry for every "a new X is one class" extension point: attribution methods, threat models,
training objectives. A registry is a dict (name -> class, in registration order) with a class decorator
that adds a class under its ``name`` and a look-up that names the known choices when it fails."""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T", bound=type)


class Registry(dict, Generic[T]):
    """``name -> class``; ``kind`` names the choice in errors ("norm"), ``error`` is the exception raised."""

    def __init__(self, kind: str, error: type[Exception]):
        super().__init__()
        self.kind, self.error = kind, error

    def register(self, cls: T) -> T:
        """Class decorator: make ``cls`` available under ``cls.name``."""
        if not getattr(cls, "name", None):
            raise TypeError(f"{cls.__name__} needs a class attribute `name`")
        self[cls.name] = cls
        return cls

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self)

    def unknown(self, name: str) -> str:
        """The one-line message for a name that is not registered."""
        return f"unknown {self.kind} '{name}' (choose from {', '.join(self)})"

    def lookup(self, name: str) -> T:
        """The class registered as ``name``; an unknown name raises ``error`` listing the known ones."""
        if name not in self:
            raise self.error(self.unknown(name))
        return self[name]


__all__ = ["Registry"]

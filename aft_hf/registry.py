"""One registry for every "a new X is one class" extension point: attribution methods, metrics, threat
models, training objectives. A registry is a dict (name -> class, in registration order) with a class
decorator that adds a class under its ``name``, and a look-up that accepts the spellings users type
(case, ``-`` for ``_``, aliases) and names the known choices when it fails.

Every way in (the decorator, or ``REGISTRY[name] = cls`` as the docs show for metrics) checks the name
once, when the class is registered: a name no look-up could ever find (``maskMean``, ``grad-x``) is
refused there, not at the first use, and replacing a registered class by another one is said in a
warning, since it changes what the built-in name computes.
"""

from __future__ import annotations

import logging
import re
from typing import Generic, Mapping, Optional, TypeVar

T = TypeVar("T", bound=type)
logger = logging.getLogger(__name__)
NAME = re.compile(r"[a-z][a-z0-9_]*")
"""What a registered name looks like: what :meth:`Registry.key` makes of any spelling a user types."""


def _suggestion(name: str) -> str:
    """A registrable spelling of ``name``: ``My Norm`` -> ``my_norm``, ``2d`` -> ``n2d``."""
    key = re.sub(r"[^a-z0-9_]+", "_", name.strip().lower()).strip("_") or "name"
    return key if key[0].isalpha() else "n" + key


def _origin(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class Registry(dict, Generic[T]):
    """``name -> class``; ``kind`` names the choice in errors ("norm"), ``error`` is the exception raised;
    ``aliases`` maps other names to registered ones (classes may also list their own in ``aliases``)."""

    def __init__(self, kind: str, error: type[Exception], aliases: Optional[Mapping[str, str]] = None):
        super().__init__()
        self.kind, self.error = kind, error
        self.aliases: dict[str, str] = dict(aliases or {})

    def __setitem__(self, name: str, cls: T) -> None:
        for spelling in (name, *getattr(cls, "aliases", ())):
            if not isinstance(spelling, str) or not NAME.fullmatch(spelling):
                what = "name" if spelling is name else f"alias (of '{name}')"
                raise self.error(f"{self.kind} {what} {spelling!r} cannot be looked up: use lower-case letters, digits "
                                 f"and _ (e.g. {_suggestion(str(spelling))!r})")
        old, aliased = self.get(name), self._alias_target(name)
        if old is not None and old is not cls and _origin(old) != _origin(cls):  # a re-run notebook cell is no news
            logger.warning("%s '%s' (%s) is replaced by %s", self.kind, name, _origin(old), _origin(cls))
        elif old is None and aliased:
            logger.warning("%s '%s' is also an alias of '%s': the name now means the new %s", self.kind, name,
                           aliased, self.kind)
        super().__setitem__(name, cls)

    def register(self, cls: T) -> T:
        """Class decorator: make ``cls`` available under ``cls.name``."""
        if not getattr(cls, "name", None):
            raise TypeError(f"{cls.__name__} needs a class attribute `name`")
        self[cls.name] = cls
        return cls

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self)

    @staticmethod
    def key(name: str) -> str:
        """The registered spelling of what a user typed: ``Grad-CAM`` -> ``grad_cam``."""
        return name.strip().lower().replace("-", "_")

    def _alias_target(self, key: str) -> Optional[str]:
        if key in self.aliases:
            return self.aliases[key]
        return next((name for name, cls in self.items() if key in getattr(cls, "aliases", ())), None)

    def resolve(self, name: str) -> str:
        """The registered name meant by ``name`` (any case, ``-`` or ``_``, an alias); a registered name wins
        over an alias. Unknown names raise ``error`` listing the known ones."""
        key = self.key(name)
        if key in self:
            return key
        target = self._alias_target(key)
        if target is None or target not in self:
            raise self.error(self.unknown(name))
        return target

    def unknown(self, name: str) -> str:
        """The one-line message for a name that is not registered."""
        return f"unknown {self.kind} '{name}' (choose from {', '.join(self)})"

    def lookup(self, name: str) -> T:
        """The class registered as ``name`` (exactly); an unknown name raises ``error`` listing the known ones."""
        if name not in self:
            raise self.error(self.unknown(name))
        return self[name]


__all__ = ["NAME", "Registry"]

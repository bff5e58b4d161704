"""The data area's error: a data set that cannot be used, with what to do about it."""

from __future__ import annotations

from ..errors import AftError


class DataError(AftError, RuntimeError):
    """The data set cannot be used; the message says why and what to do."""


class UnknownDatasetError(DataError, ValueError):
    """A ``builtin:`` data set name that does not exist (a ``ValueError`` too, as it was before)."""

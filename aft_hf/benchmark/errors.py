"""The benchmark's error: bad options, a dataset copy that is incomplete or inconsistent."""

from __future__ import annotations

from ..errors import AftError


class BenchmarkError(AftError, ValueError):
    """A benchmark setting or dataset that cannot give the protocol's numbers (one line, no traceback)."""


__all__ = ["BenchmarkError"]

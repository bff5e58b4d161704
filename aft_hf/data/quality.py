"""Book-keeping of unreadable samples: capped warnings, counts, and a limit on their share.

One corrupt file in a million must not stop a run; a data set where half the files are broken
must, at once and with a clear message, instead of silently training on the survivors.
"""

from __future__ import annotations

import logging
from typing import Optional

from .errors import DataError

logger = logging.getLogger("aft_hf.data")

MIN_READS_FOR_FRACTION = 20
"""The share of bad samples is judged only once this many have been read (one bad file among the
first three is no evidence of a broken data set)."""


class BadSamples:
    """Counts samples read and samples skipped; logs the first ``max_logged`` by name.

    :meth:`bad` raises :class:`DataError` when more than ``max_bad_fraction`` of the samples read
    so far were unreadable. Counts are per process (and per DataLoader worker).
    """

    def __init__(self, max_bad_fraction: float = 1.0, source: str = "the data set", max_logged: int = 10):
        self.max_bad_fraction, self.source, self.max_logged = max_bad_fraction, source, max_logged
        self.read = 0
        self.skipped = 0
        self.last_error: Optional[str] = None
        self.logged: set[str] = set()  # the samples named in a warning so far (at most max_logged)

    def good(self) -> None:
        self.read += 1

    def bad(self, where: Optional[str], error: BaseException) -> None:
        """Count one unreadable sample (``where``: its path or position); log it the first time it is
        seen, while fewer than ``max_logged`` have been named (a file drawn in every epoch is named once)."""
        self.read += 1
        self.skipped += 1
        self.last_error = f"{where or 'a sample'}: {type(error).__name__}: {error}"
        key = where or f"#{self.skipped}"
        if key not in self.logged and len(self.logged) < self.max_logged:
            self.logged.add(key)
            logger.warning("skipping unreadable image%s: %s", f" '{where}'" if where else "", error)
            if len(self.logged) == self.max_logged:
                logger.warning("%d unreadable images so far; further ones are counted, not logged", self.skipped)
        self.check()

    def check(self) -> None:
        """Raise :class:`DataError` if the share of unreadable samples is over the limit."""
        if self.read >= MIN_READS_FOR_FRACTION and self.skipped > self.max_bad_fraction * self.read:
            raise DataError(
                f"{self.skipped} of the {self.read} images read from {self.source} were unreadable, more than "
                f"data.max_bad_fraction={self.max_bad_fraction:g} of them (last: {self.last_error}); "
                "check the data set, or raise data.max_bad_fraction to train on what can be read")

    def summary(self) -> str:
        return f"{self.skipped} of {self.read} images unreadable"

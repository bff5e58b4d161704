"""A watchdog on the data pipeline: say so in the log when no batch has come for a while.

Only the time spent *waiting for* the next batch counts (not the training step between two
batches), so a slow model never triggers it; a stalled stream, a dead network mount or a
shuffle buffer that takes long to fill does, with what the pipeline is waiting on.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Iterable, Iterator, Optional

logger = logging.getLogger("aft_hf.data")


def describe_source(loader) -> str:
    """What a loader is waiting on, from its dataset's own account when it has one."""
    dataset = getattr(loader, "dataset", None)
    describe = getattr(dataset, "describe", None)
    text = describe() if callable(describe) else f"a {type(dataset or loader).__name__}"
    workers = getattr(loader, "num_workers", 0)
    return text + (f" (decoded in {workers} worker processes; counts above are this process's)" if workers else "")


class _Watch:
    """A daemon thread that warns while :meth:`arm` has been called and not :meth:`disarm`-ed for long."""

    def __init__(self, seconds: float, loader) -> None:
        self.seconds, self.loader = seconds, loader
        self.since: Optional[float] = None
        self.warned = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="aft-data-watch", daemon=True)

    def arm(self) -> None:
        self.warned, self.since = 0, time.monotonic()

    def disarm(self) -> None:
        self.since = None

    def _run(self) -> None:
        while not self.stop.wait(min(self.seconds / 4, 5.0)):
            since = self.since
            if since is None:
                continue
            waited = time.monotonic() - since
            if waited >= self.seconds * (self.warned + 1):
                self.warned += 1
                try:
                    what = describe_source(self.loader)
                except Exception as e:  # describing must never take the run down
                    what = f"(could not describe the source: {e})"
                logger.warning("no batch from the data pipeline for %.0f s (data.stall_warning_s=%g); waiting on %s",
                               waited, self.seconds, what)


def watch_stalls(batches: Iterable, seconds: float, loader=None) -> Iterator:
    """Yield from ``batches``; log a warning each ``seconds`` spent waiting for one batch (0: off).

    ``loader`` is what to describe in the warning (default: ``batches`` itself).
    """
    if not seconds or seconds <= 0:
        yield from batches
        return
    watch = _Watch(seconds, loader if loader is not None else batches)
    watch.thread.start()
    iterator = iter(batches)
    try:
        while True:
            watch.arm()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            finally:
                watch.disarm()
            yield batch
    finally:
        watch.stop.set()

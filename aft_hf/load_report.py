"""transformers' load-report table, held back while a load is checked by aft_hf.

``from_pretrained`` logs a multi-line "LOAD REPORT" table (missing / unexpected / mismatched
weights) as soon as it has loaded. Where aft_hf inspects the loading info itself and refuses the
checkpoint with its own one-line error, that table arrives first and the error behind it: the
table is held while the load and the check run, dropped when the check raises (the error then
stands alone, last), and re-emitted unchanged when the checked block completes.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

REPORTING_LOGGER = "transformers.modeling_utils"  # the logger from_pretrained passes to log_state_dict_report


class _Hold(logging.Filter):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.expected = False
        """Set inside the block when the caller found the report holds nothing a user must see (the text tower's
        weights left out of a vision-only load, say): it is then dropped, not re-emitted."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "LOAD REPORT" in str(record.msg):
            self.records.append(record)
            return False
        return True


@contextlib.contextmanager
def held_load_report() -> Iterator[_Hold]:
    """Hold load reports logged inside the block; re-emit them only if the block does not raise and did not mark
    them ``expected``."""
    logger = logging.getLogger(REPORTING_LOGGER)
    hold = _Hold()
    logger.addFilter(hold)
    try:
        yield hold
    finally:
        logger.removeFilter(hold)
    for record in [] if hold.expected else hold.records:  # reached only without an exception: the table is news
        logger.handle(record)

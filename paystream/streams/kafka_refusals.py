"""aiokafka's own line for each bootstrap address it could not connect to, held back
while a caller that will say so itself runs (`Unable connect to "host:port": ...`), and
logged after all unless the caller quoted it (a dead broker among live ones, review
h60o).

A CLI command whose brokers are all away printed aiokafka's line beside its own one
error (review h60m), and a worker waiting for its brokers printed it at every try: both
quote the last held line in their own words instead. A known broker lost mid-run (its
"node with id" line) is never held.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

__all__ = ["BootstrapRefusals", "bootstrap_refusals_held"]


class BootstrapRefusals(logging.Filter):
    """Holds back the "aiokafka" logger's bootstrap refusals (``held``)."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[logging.LogRecord] = []
        self.quoted = False  # set by a caller that said them in its own words

    @property
    def last(self) -> str | None:
        """The last refusal held, as it would have been logged (one line, bounded)."""
        return self.held[-1].getMessage()[:300] if self.held else None

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith('Unable connect to "'):
            self.held.append(record)
            return False
        return True


@contextlib.contextmanager
def bootstrap_refusals_held() -> Iterator[BootstrapRefusals]:
    """The refusals logged inside the block, held; after it, logged unless ``quoted``."""
    logger = logging.getLogger("aiokafka")
    refusals = BootstrapRefusals()
    logger.addFilter(refusals)
    try:
        yield refusals
    finally:
        logger.removeFilter(refusals)
        if not refusals.quoted:
            for record in refusals.held:
                logger.handle(record)

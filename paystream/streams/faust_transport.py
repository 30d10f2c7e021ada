"""Faust transport figures the worker runs with, in a module light enough for the bench's
bare Faust forwarder to import (``paystream.app`` builds the worker's app on import), so
that the baseline has the very same ones."""

from __future__ import annotations

__all__ = ["MAX_POLL_RECORDS", "PRODUCER_MAX_BATCH_SIZE", "max_poll_records"]

# A poll's worth of records, enough that polls are not what limits throughput.
MAX_POLL_RECORDS = 500
# The command agent sends each topic-partition's share of a batch as one record batch
# (streams/batch_producer.py); Faust's 16 KiB default splits them up.
PRODUCER_MAX_BATCH_SIZE = 512 * 1024


def max_poll_records(buffer_maxsize: int) -> int:
    """Records one poll hands Faust's conductor, at most: fewer than a fifth of an agent's
    queue. Once its queue is 80% full, an agent's topic is no longer fetched
    (streams/backpressure.py), but the poll in hand is delivered; one that filled the
    queue would make the conductor wait on it, and with it every other agent (a ledger
    sink stalled on its database, with 1 MiB polls of outcomes, would stop the commands)."""
    return max(1, min(MAX_POLL_RECORDS, buffer_maxsize // 5 - 1))

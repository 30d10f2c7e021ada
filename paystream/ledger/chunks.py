"""Statements kept under PostgreSQL's bind-parameter limit, however large the batch.

asyncpg refuses a statement with more than 32,767 parameters (an ``InterfaceError``, which
reads as a lost connection): one outcome naming thousands of related entities would
otherwise stall its partition, the same batch failing on every retry."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

__all__ = ["CHUNK", "chunked"]

T = TypeVar("T")

# Rows (or ids) per statement: a multi-VALUES insert of up to a few dozen columns, or an
# IN list, stays far below the limit.
CHUNK = 500


def chunked(items: Iterable[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    """``items`` in consecutive lists of at most ``size``."""
    batch = list(items)
    for start in range(0, len(batch), size):
        yield batch[start : start + size]

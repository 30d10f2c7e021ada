"""Statements kept small, however large the batch.

asyncpg refuses a statement with more than 32,767 parameters (an ``InterfaceError``, which
reads as a lost connection): one outcome naming thousands of related entities would
otherwise stall its partition, the same batch failing on every retry. And the worker's
``command_timeout`` bounds each call: an executemany of every row of a tenant's batch in
one call was bounded as a whole, and a batch too large to finish in it timed out, read
as a lost connection, on every retry (review h63a)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import Executable

__all__ = ["CHUNK", "EXECUTEMANY_ROWS", "chunked", "execute_in_chunks"]

T = TypeVar("T")

# Ids per IN list: far below the limit.
CHUNK = 500
# Rows per executemany call: about 50 ms on the development host, far inside a timeout.
EXECUTEMANY_ROWS = 1000


def chunked(items: Iterable[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    """``items`` in consecutive lists of at most ``size``."""
    batch = list(items)
    for start in range(0, len(batch), size):
        yield batch[start : start + size]


async def execute_in_chunks(
    session: AsyncSession,
    statement: Executable,
    rows: Sequence[dict[str, Any]],
    *,
    returning: bool = False,
) -> list[Any]:
    """``statement`` (one statement, compiled once and cached) run with ``rows`` as
    executemany calls of at most EXECUTEMANY_ROWS each, in order; with ``returning``,
    the RETURNING scalars of all of them. A multi-VALUES statement per chunk instead was
    compiled anew every time: a third of the ledger sink's CPU."""
    returned: list[Any] = []
    for chunk in chunked(rows, EXECUTEMANY_ROWS):
        result = await session.execute(statement, list(chunk))
        if returning:
            returned.extend(result.scalars().all())
    return returned

"""The sink's bulk writes: one cached statement each, run as executemany calls of at most
EXECUTEMANY_ROWS rows. Unbounded, one call held every row of a tenant's batch, and the
worker's command_timeout (60 s, meant per statement) bounded the whole batch: one too
large timed out, read as a lost connection, on every retry (review h63a). Compiled per
chunk as multi-VALUES statements, they were a third of the sink's CPU."""

from __future__ import annotations

import uuid
from collections import defaultdict
from typing import Any

from sqlalchemy import Insert, event
from sqlalchemy.engine.interfaces import CacheStats
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.ledger import create_engine
from paystream.ledger.audit import verify_audit
from paystream.ledger.chunks import EXECUTEMANY_ROWS
from paystream.ledger.sink import LedgerSink
from paystream.tenancy.crypto import MasterKeyring
from tests.ledger.factories import EventFactory, LedgerDb


def _watched(engine: AsyncEngine) -> tuple[dict[str, list[int]], dict[str, list[bool]]]:
    """Per table inserted into: the rows of each execute call, and for each statement its
    cursor ran whether its compiled form came from the cache."""
    rows: dict[str, list[int]] = defaultdict(list)
    cached: dict[str, list[bool]] = defaultdict(list)

    @event.listens_for(engine.sync_engine, "before_execute")
    def called(conn: Any, clause: Any, multiparams: Any, params: Any, options: Any) -> None:
        if isinstance(clause, Insert):
            rows[clause.table.name].append(len(multiparams) if multiparams else 1)

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def ran(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        if statement.startswith("INSERT INTO "):
            cached[statement.split()[2]].append(context.cache_hit is CacheStats.CACHE_HIT)

    return rows, cached


async def test_a_large_batch_goes_in_bounded_calls_of_one_cached_statement(
    ledger_db: LedgerDb, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    engine = create_engine(ledger_db.app_url)
    calls, cached = _watched(engine)
    try:
        tenant = f"t{uuid.uuid4().hex[:8]}"
        sink = LedgerSink(engine, keyring)
        for batch in range(2):
            events = [make_event.payment(tenant, f"pay_{batch}_{i}") for i in range(2_500)]
            result = await sink.write_batch(events)
            assert result.written.events_written == 2_500 and not result.dead_letters
        for table in ("events", "payments", "audit_log"):
            sizes = calls[table]
            assert sum(sizes) == 5_000, (table, sizes)
            assert max(sizes) <= EXECUTEMANY_ROWS, (table, sizes)
            assert cached[table].count(False) <= 1, table  # compiled once, then cached
        verified = await verify_audit(engine, tenant, keyring)
        assert verified.ok, verified.problems
    finally:
        await engine.dispose()

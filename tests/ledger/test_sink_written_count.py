"""A batch spanning tenants whose later tenant held a refused event: the first tenant's
transaction committed before the refusal, its result was thrown away, and the bisection's
re-write found the rows stored, counted `duplicate`, not `written`: the written count
under-counted the new ledger rows a reconciler compares against the outcomes consumed
(review h68l)."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.ledger.sink import LedgerSink
from paystream.tenancy.crypto import MasterKeyring
from tests.ledger.factories import EventFactory


async def test_events_first_written_before_a_refusal_are_counted_written(
    app_engine: AsyncEngine, keyring: MasterKeyring, make_event: EventFactory
) -> None:
    a, b = (f"t{uuid.uuid4().hex[:8]}" for _ in range(2))
    good = make_event.payment(a, "pay_ok", 1)  # tenant a: its own transaction, first
    poison = make_event.payment(b, "pay_huge", 2**63)  # tenant b: refused by the database
    sink = LedgerSink(app_engine, keyring, initial_backoff=0.01, max_backoff=0.01)
    result = await sink.write_batch([good, poison])
    assert [d.event_id for d in result.dead_letters] == [poison.event_id]
    # One new row was stored, none was a replay.
    assert (result.written.events_written, result.written.duplicates) == (1, 0)

"""The stalled gauge was left at 1 once a transient failure was followed by a batch the
database refused whole (every outcome parked): nothing was retried, yet the sink said it
was stalled until a later write succeeded, and PaystreamLedgerSinkStalled paged after 5m
on a quiet partition (review h68l)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.ledger.sink import STALLED, LedgerSink
from paystream.tenancy.crypto import MasterKeyring
from tests.ledger.factories import EventFactory


async def test_a_refused_batch_after_a_blip_does_not_leave_the_sink_stalled(
    app_engine: AsyncEngine,
    keyring: MasterKeyring,
    make_event: EventFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import paystream.ledger.sink as sink_mod

    real_write = sink_mod.write_events
    calls = {"n": 0}

    async def blip_then_real(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionRefusedError("database restarting")
        return await real_write(*args, **kwargs)

    async def no_sleep(delay: float) -> None:
        return None

    monkeypatch.setattr(sink_mod, "write_events", blip_then_real)
    tenant = f"t{uuid.uuid4().hex[:8]}"
    poison = make_event.payment(tenant, "pay_huge", 2**63)  # past bigint: refused (22003)
    sink = LedgerSink(app_engine, keyring, initial_backoff=0.01, max_backoff=0.01, sleep=no_sleep)
    result = await sink.write_batch([poison])
    assert [d.event_id for d in result.dead_letters] == [poison.event_id]
    # Nothing is being retried any more: the batch is done (parked).
    assert not sink.stalled, "LedgerSink.stalled left True after the batch returned"
    assert STALLED._value.get() == 0, "paystream_ledger_sink_stalled left at 1"

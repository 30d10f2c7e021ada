"""`PaystreamClient` in an application's own process, which never installed the record
batch reader (review h66a): one batch no parser reads on the events topic ended its
outcome reader, and every send after failed, until the application made a new client."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.consumer import fetcher
from aiokafka.record.memory_records import MemoryRecords

from paystream.settings import CloudEventsMode
from paystream.streams import record_batches
from paystream.streams.admin import bootstrap_servers
from paystream.streams.codec import encode_event
from tests.e2e import raw_batches as rb
from tests.fixtures.pipeline import RawSend
from tests.test_client import _outcome

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]


async def test_a_clients_outcome_reader_outlives_an_unreadable_outcome_batch(
    deployment_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A process that never installed it (this test process may have, in other tests).
    monkeypatch.setattr(fetcher, "MemoryRecords", MemoryRecords)
    monkeypatch.setattr(fetcher, "PartitionRecords", record_batches._PartitionRecords.__bases__[0])
    dep = await deployment_factory()
    broker = bootstrap_servers(dep.settings.require_broker())
    async with dep.client() as client:
        waiting = client.expect("acme", "cmd-1")  # (a send awaiting its outcome)
        poison = rb.batch([rb.record(0, b"other", b"{}", [(b"ce_id", b"x")])], bad_crc=True)
        assert await rb.produce(broker, dep.settings.events_topic, 0, poison) == 0
        # Its outcome, behind the bad batch on the same partition: read past it.
        rec = encode_event(_outcome("cmd-1"), b"acme", CloudEventsMode.BINARY)
        await dep.produce(
            dep.settings.events_topic, RawSend(rec.key, rec.value, 0, tuple(rec.headers))
        )
        answered = await asyncio.wait_for(waiting, 30)
        assert answered.get_extension("causationid") == "cmd-1"
        assert client.reading

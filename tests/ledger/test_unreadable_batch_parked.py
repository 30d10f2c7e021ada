"""What stands for a batch of outcomes no parser reads (streams/record_batches.py) is
parked by the ledger sink without bytes, marked so: a batch of outcomes holds customers'
personal data in the clear, and the ledger's dead-letter topic is kept for ever, out of
an erasure's reach (review h65a)."""

from __future__ import annotations

import struct
import types
import uuid

import pytest
from aiokafka.consumer import fetcher
from aiokafka.structs import TopicPartition
from sqlalchemy.ext.asyncio import AsyncEngine

from paystream.streams import record_batches
from paystream.tenancy.crypto import MasterKeyring
from tests.e2e import raw_batches as rb
from tests.ledger.test_sink import _outcome_record, _sink_parks


async def test_an_unreadable_batch_of_customer_outcomes_is_parked_without_personal_data(
    app_engine: AsyncEngine, keyring: MasterKeyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = f"t{uuid.uuid4().hex[:8]}"
    data = {
        "tenant_id": tenant,
        "command_id": "cmd_c1",
        "entity_id": "cus_1",
        "object": {"id": "cus_1", "email": "ann@example.com", "name": "Ann"},
    }
    out = _outcome_record(tenant, "customer.created", data)
    headers = [(k.encode(), v) for k, v in out.headers]
    # In the clear and its CRC good, but its count claims a record more than it holds.
    records = [rb.record(0, out.key, out.value, headers)]
    batch = bytearray(rb.batch(records, count=2, last_offset_delta=1))
    struct.pack_into(">q", batch, 0, 9)
    record_batches.install(types.SimpleNamespace(commands_topic="cmds", events_topic="ev"))  # type: ignore[arg-type]
    read, stand_in = list(
        fetcher.PartitionRecords(
            TopicPartition("ev", 0), fetcher.MemoryRecords(bytes(batch)), None, 0,
            None, None, True, 0,
        )
    )  # fmt: skip
    assert read.value == out.value
    assert (stand_in.key, stand_in.value) == (None, b"")  # (none of the batch's bytes)
    # Parked without a value whatever it carries (one a producer shaped so, one from a
    # version that copied the batch's bytes).
    sent = await _sink_parks(
        monkeypatch, app_engine, keyring, None, out.value, list(stand_in.headers)
    )
    [(_topic, _key, value, parked)] = sent
    assert parked["paystream-dlq-reason"] == b"ledger_undecodable"
    assert (
        b"record batch at ev[0] offsets 9-10 unreadable from offset 10"
        in parked["paystream-dlq-detail"]
    )
    assert (value, parked["paystream-dlq-redacted"]) == (b"", b"personal_data")

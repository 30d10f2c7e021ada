"""What stands for a record batch no parser reads (streams/record_batches.py) is
dead-lettered `unreadable_batch`, unanswered, and its bytes are kept only where the
pipeline's card scan can read them (review h65a: a compressed batch's card number was
kept in the dead letter, and with it a record refused `card_data_forbidden` before)."""

from __future__ import annotations

import struct
import types
import zlib
from typing import Any

import pytest
from aiokafka.consumer import fetcher
from aiokafka.structs import TopicPartition

from paystream.agents.inbound import Inbound
from paystream.streams import record_batches
from paystream.streams.record_batches import UNREADABLE_BATCH_HEADER
from tests.agents.harness import Harness
from tests.e2e import raw_batches as rb

pytestmark = pytest.mark.asyncio(loop_scope="session")

PAN = b"4242424242424242"
_CE = [
    (b"ce_specversion", b"1.0"),
    (b"ce_id", b"c1"),
    (b"ce_source", b"/x"),
    (b"ce_type", b"com.paystream.command.customer.create"),
    (b"ce_tenantid", b"acme"),
]


def _fetched(data: bytes) -> list[Any]:
    record_batches.install(types.SimpleNamespace(commands_topic="cmds", events_topic="outs"))  # type: ignore[arg-type]
    batch = bytearray(data)
    struct.pack_into(">q", batch, 0, 3)  # (the broker's offset for it)
    records = fetcher.PartitionRecords(
        TopicPartition("cmds", 0), fetcher.MemoryRecords(bytes(batch)), None, 0,
        None, None, True, 0,
    )  # fmt: skip
    return list(records)


async def _dead_letter(harness: Harness, stand_in: Any) -> tuple[bytes, dict[str, bytes], int]:
    """The stand-in's dead letter (value, headers) and how many other records it made."""
    rec = Inbound(stand_in.key, stand_in.value, dict(stand_in.headers), stand_in.timestamp,
                  "cmds", 0, stand_in.offset)  # fmt: skip
    emits = await harness.raw(rec)
    [letter] = [e.record for e in emits if e.topic == harness.settings.dlq_topic]
    return letter.value, dict(letter.headers), len(emits) - 1


def _inflated(value: bytes) -> bytes:
    start = value.find(b"\x1f\x8b")
    return zlib.decompressobj(wbits=31).decompress(value[start:]) if start >= 0 else b""


@pytest.mark.parametrize("case", ["crc", "cut_short"])
async def test_a_compressed_batch_holding_a_card_number_is_not_kept(
    harness: Harness, case: str
) -> None:
    value = b'{"email":"a@example.com","description":"card ' + PAN + b'"}'
    one = [rb.record(0, b"acme", value, _CE)]
    kw: dict[str, Any] = (
        {"bad_crc": True} if case == "crc" else {"count": 2, "last_offset_delta": 1}
    )
    got = _fetched(rb.batch(one, codec=rb.GZIP, **kw))
    stand_in = got[-1]
    assert UNREADABLE_BATCH_HEADER in dict(stand_in.headers)
    kept, headers, others = await _dead_letter(harness, stand_in)
    assert headers["paystream-dlq-reason"] == b"unreadable_batch"
    assert kept == b"" and PAN not in _inflated(kept)
    assert b"are not kept (compressed or corrupt: unscanned)" in headers["paystream-dlq-detail"]
    assert others == 0  # (no sender to answer)


async def test_a_card_number_read_before_the_fault_is_not_kept_with_the_rest(
    harness: Harness,
) -> None:
    records = [
        rb.record(0, b"acme", b'{"description":"card ' + PAN + b'"}', _CE),
        rb.record(1, b"acme", b"{}", _CE),
    ]
    got = _fetched(rb.batch(records, count=3, last_offset_delta=2))  # (a third it lacks)
    assert [r.offset for r in got] == [3, 4, 5]
    assert PAN in got[2].value  # (in the clear: the pipeline's scan reads it)
    kept, headers, others = await _dead_letter(harness, got[2])
    assert (kept, headers["paystream-dlq-redacted"]) == (b"", b"card_number")
    assert others == 0


async def test_a_batch_in_the_clear_is_kept_for_an_operator(harness: Harness) -> None:
    batch = rb.batch([rb.record(0, b"acme", b"{}", _CE)], count=2, last_offset_delta=1)
    got = _fetched(batch)
    kept, headers, others = await _dead_letter(harness, got[-1])
    assert kept[8:] == batch[8:]  # (all but the broker's offset)
    assert headers["paystream-source"] == b"cmds/0/4"
    assert headers["paystream-dlq-reason"] == b"unreadable_batch"
    assert others == 0

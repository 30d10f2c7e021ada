"""What stands for a record batch no parser reads (streams/record_batches.py) is
dead-lettered `unreadable_batch`, unanswered, without the batch's bytes: the pipeline's
card scan reads a record's value, not a batch's framing. Kept, they carried a compressed
batch's card number, a record refused `card_data_forbidden` before the fault, a security
code in a header and a card number behind a length byte that reads as a digit (reviews
h65a, h65c)."""

from __future__ import annotations

import struct
import types
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


def _one(value: bytes = b"{}", extra: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    return rb.record(0, b"acme", value, [*_CE, *extra])


_CASES = {
    # A card number in a compressed record, the batch's CRC wrong or its count too high.
    "gzip_crc": lambda: rb.batch([_one(b'{"d":"' + PAN + b'"}')], codec=rb.GZIP, bad_crc=True),
    "gzip_cut_short": lambda: rb.batch(
        [_one(b'{"d":"' + PAN + b'"}')], codec=rb.GZIP, count=2, last_offset_delta=1
    ),
    # In the clear, its CRC sound, a record missing: a code in a header, one in a trace
    # state, a card number behind a length byte that is the digit 4 (a 26-byte value).
    "cvc_header": lambda: rb.batch(
        [_one(extra=((b"ce_cardcvc", b"737"),))], count=2, last_offset_delta=1
    ),
    "tracestate": lambda: rb.batch(
        [_one(extra=((b"ce_tracestate", b"vendor=x,cvc=737"),))], count=2, last_offset_delta=1
    ),
    "length_digit": lambda: rb.batch(
        [_one(extra=((b"ce_note", PAN + b" exp 12/30"),))], count=2, last_offset_delta=1
    ),
    # A record refused for its card number before the fault.
    "refused_before": lambda: rb.batch(
        [_one(b'{"d":"' + PAN + b'"}'), _one()], count=3, last_offset_delta=2
    ),
}


@pytest.mark.parametrize("case", sorted(_CASES))
async def test_an_unreadable_batch_is_dead_lettered_without_its_bytes(
    harness: Harness, case: str
) -> None:
    batch = _CASES[case]()
    stand_in = _fetched(batch)[-1]
    assert UNREADABLE_BATCH_HEADER in dict(stand_in.headers) and stand_in.value == b""
    rec = Inbound(None, b"", dict(stand_in.headers), stand_in.timestamp, "cmds", 0,
                  stand_in.offset)  # fmt: skip
    emits = await harness.raw(rec)
    [letter] = [e.record for e in emits if e.topic == harness.settings.dlq_topic]
    assert len(emits) == 1  # (no sender to answer)
    headers = dict(letter.headers)
    assert headers["paystream-dlq-reason"] == b"unreadable_batch"
    assert headers["paystream-source"] == f"cmds/0/{stand_in.offset}".encode()
    detail = headers["paystream-dlq-detail"].decode()
    assert detail.startswith("record batch at cmds[0] offsets 3-")
    assert detail.endswith(f"its {len(batch)} bytes are not copied")
    assert letter.value == b"" and letter.key is None

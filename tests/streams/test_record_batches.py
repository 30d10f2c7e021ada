"""Fetched record batches whose header names are not UTF-8 are read (streams/
record_batches.py): aiokafka's C parser raised UnicodeDecodeError on every fetch of such
a batch, so one record a producer wrote so crashed the worker, for good."""

from __future__ import annotations

import struct
import types
from typing import Any

import pytest
from aiokafka.consumer import fetcher
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import DefaultRecordBatch, _DefaultRecordBatchBuilderPy
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import calc_crc32c
from aiokafka.structs import TopicPartition

from paystream.streams import record_batches
from paystream.streams.record_batches import UNREADABLE_BATCH_HEADER, LenientMemoryRecords
from tests.e2e import raw_batches as rb


class _RawName(str):
    """A header name aiokafka's Python builder writes as the bytes given, not UTF-8."""

    raw: bytes

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self.raw


def _named(raw: bytes) -> str:
    name = _RawName("x")
    name.raw = raw
    return name


def _batch(*records: tuple[bytes, list[tuple[str, bytes]]], base: int = 0) -> bytes:
    builder = _DefaultRecordBatchBuilderPy(2, 0, 0, -1, -1, -1, 1 << 20)
    for i, (value, headers) in enumerate(records):
        builder.append(i, 1_700_000_000_000, b"acme", value, headers)
    batch = bytearray(builder.build())
    struct.pack_into(">q", batch, 0, base)  # (the broker's offset for the batch)
    return bytes(batch)


def _read(records: Any) -> list[tuple[int, bytes, list[tuple[str, bytes]]]]:
    out = []
    while records.has_next():
        for r in records.next_batch():
            out.append((r.offset, r.value, list(r.headers)))
    return out


def test_aiokafkas_own_parser_refuses_such_a_batch() -> None:
    """(What the lenient reader is for: should aiokafka come to read them, it can go.)"""
    data = _batch((b"{}", [(_named(b"ce_\xff\xfe"), b"v")]))
    with pytest.raises(UnicodeDecodeError):
        _read(MemoryRecords(data))


def test_a_header_name_that_is_no_utf8_is_read_with_the_rest_of_its_batch() -> None:
    data = _batch(
        (b"before", [("ce_id", b"c1")]),
        (b"{}", [(_named(b"ce_\xff\xfe"), b"v"), ("ce_id", b"c2")]),
        (b"after", [("ce_id", b"c3")]),
    ) + _batch((b"next batch", [("ce_id", b"c4")]), base=3)
    assert _read(LenientMemoryRecords(data)) == [
        (0, b"before", [("ce_id", b"c1")]),
        (1, b"{}", [("ce_\\xff\\xfe", b"v"), ("ce_id", b"c2")]),
        (2, b"after", [("ce_id", b"c3")]),
        (3, b"next batch", [("ce_id", b"c4")]),
    ]


def test_a_batch_aiokafka_reads_is_read_by_it() -> None:
    data = _batch((b"v", [("ce_id", b"c\xc3\xa9"), ("n\u00e9", b"")]))
    records = LenientMemoryRecords(data)
    batch = records.next_batch()
    assert isinstance(batch._batch, DefaultRecordBatch)  # (aiokafka's own, C when built)
    assert [(r.value, list(r.headers)) for r in batch] == [
        (b"v", [("ce_id", b"c\xc3\xa9"), ("n\u00e9", b"")])
    ]
    assert _read(MemoryRecords(data)) == _read(LenientMemoryRecords(data))


# ---- batches no parser reads (stood for on the commands and outcomes topics) ----------

_STOOD_FOR = types.SimpleNamespace(commands_topic="cmds", events_topic="outs")


def _at(base: int, data: bytes) -> bytes:
    """A hand-written batch (tests/e2e/raw_batches.py) at the broker's offset ``base``."""
    batch = bytearray(data)
    struct.pack_into(">q", batch, 0, base)  # (outside the CRC, as the broker writes it)
    return bytes(batch)


def _fetched(topic: str, data: bytes, fetch_offset: int = 0) -> tuple[list[Any], int]:
    """What aiokafka's fetcher hands a consumer of ``data`` fetched from ``topic``
    partition 3, and where it fetches next."""
    record_batches.install(_STOOD_FOR)  # type: ignore[arg-type]
    records = fetcher.PartitionRecords(
        TopicPartition(topic, 3),
        fetcher.MemoryRecords(data),
        None,
        fetch_offset,
        None,
        None,
        True,  # check_crcs: the consumer's default
        0,
    )
    return list(records), records.next_fetch_offset


_CE = [(b"ce_id", b"c1")]
_NEXT = _at(5, rb.batch([rb.record(0, b"acme", b"after", _CE), rb.record(1, b"acme", b"b", _CE)]))


def _stood_for(got: Any) -> tuple[int, bytes | None, str]:
    [(name, detail)] = got.headers
    assert name == UNREADABLE_BATCH_HEADER
    return got.offset, got.key, detail.decode()


@pytest.mark.parametrize(
    ("case", "failure"),
    [
        ("crc", "its CRC does not match its bytes"),
        ("gzip_not_gzip", "EOFError: Compressed file ended"),
        ("zstd_not_zstd", "DecompressionError"),
        ("unknown_codec", "Unknown compression codec 0x07"),
        ("key_past_the_end", "Can't read 1000 bytes"),
    ],
)
def test_a_batch_no_parser_reads_is_stood_for_by_one_record_and_the_next_batch_is_read(
    case: str, failure: str
) -> None:
    one = [rb.record(0, b"acme", b"{}", _CE), rb.record(1, b"acme", b"{}", _CE)]
    bad = _at(3, {
        "crc": lambda: rb.batch(one, bad_crc=True),
        "gzip_not_gzip": lambda: rb.batch(one, codec=rb.GZIP, payload=b"\x1f\x8b\x08\x00junk"),
        "zstd_not_zstd": lambda: rb.batch(one, codec=rb.ZSTD, payload=b"junkjunkjunk"),
        "unknown_codec": lambda: rb.batch(one, attributes=7),
        "key_past_the_end": lambda: rb.batch([rb.record(0, b"acme", b"{}", key_len=1000)]),
    }[case]())  # fmt: skip
    got, next_offset = _fetched("cmds", bad + _NEXT)
    offset, key, detail = _stood_for(got[0])
    assert (offset, key) == (3, None)
    assert detail.startswith("record batch at cmds[3] offsets 3-")
    assert failure in detail
    # None of its bytes: no card scan vouches for a batch's framing (reviews h65a,
    # h65c); the detail says where they are.
    assert got[0].value == b""
    assert detail.endswith(f"its {len(bad)} bytes are not copied")
    assert [(r.offset, r.value) for r in got[1:]] == [(5, b"after"), (6, b"b")]
    assert next_offset == 7


def test_the_records_read_before_a_batch_fails_are_handed_on_and_the_rest_stood_for() -> None:
    # Its count says three records; the third is not there.
    records = [rb.record(0, b"acme", b"r0", _CE), rb.record(1, b"acme", b"r1", _CE)]
    bad = _at(10, rb.batch(records, count=3, last_offset_delta=2))
    got, next_offset = _fetched("outs", bad)
    assert [(r.offset, r.value) for r in got[:2]] == [(10, b"r0"), (11, b"r1")]
    offset, key, detail = _stood_for(got[2])
    assert (offset, key) == (12, None)
    assert "unreadable from offset 12" in detail
    assert next_offset == 13


def test_a_stand_in_before_where_the_fetch_starts_is_not_handed_on_again() -> None:
    """(A worker restarted past a stand-in it dead-lettered fetches from the offset
    after it: the batch is fetched whole again.)"""
    bad = _at(3, rb.batch([rb.record(0, b"acme", b"{}", _CE)], bad_crc=True))
    got, next_offset = _fetched("cmds", bad + _NEXT, fetch_offset=4)
    assert [(r.offset, r.value) for r in got] == [(5, b"after"), (6, b"b")]
    assert next_offset == 7


def test_a_fetch_from_inside_a_batch_stood_for_hands_nothing_of_it_on() -> None:
    """(A gap read, or a restart, from the offset after the stand-in of a batch of three
    records: review h66a found a second stand-in, at the fetch's first offset, each time.)"""
    bad = _at(2, rb.batch([rb.record(i, b"acme", b"{}", _CE) for i in range(3)], bad_crc=True))
    got, next_offset = _fetched("cmds", bad + _NEXT, fetch_offset=2)
    assert [r.offset for r in got] == [2, 5, 6]
    for start in (3, 4):
        got, next_offset = _fetched("cmds", bad + _NEXT, fetch_offset=start)
        assert [(r.offset, r.value) for r in got] == [(5, b"after"), (6, b"b")]
        assert next_offset == 7


def test_a_corrupt_count_does_not_skip_the_next_batch() -> None:
    bad = _at(3, rb.batch([rb.record(0, b"acme", b"{}", _CE)], last_offset_delta=900, bad_crc=True))
    got, next_offset = _fetched("cmds", bad + _NEXT)
    assert [r.offset for r in got] == [3, 5, 6]
    assert next_offset == 7


def test_a_batch_none_reads_fails_the_consumer_elsewhere_saying_where() -> None:
    """A table's changelog or the tenant registry: a record skipped there is state lost
    unseen, so the consumer fails as it did, but names the batch."""
    bad = _at(3, rb.batch([rb.record(0, b"acme", b"{}", _CE)], codec=rb.GZIP, payload=b"junk"))
    with pytest.raises(CorruptRecordException, match=r"unreadable record batch at tenants\[3\]"):
        _fetched("tenants", bad + _NEXT)
    crc = _at(3, rb.batch([rb.record(0, b"acme", b"{}", _CE)], bad_crc=True))
    with pytest.raises(CorruptRecordException, match=r"at tenants\[3\] offsets 3-3: its CRC"):
        _fetched("tenants", crc + _NEXT)


@pytest.mark.parametrize("topic", ["cmds", "tenants"])
def test_bytes_after_the_last_offset_a_batch_claims_are_not_stood_for(topic: str) -> None:
    records = [rb.record(0, b"acme", b"r0", _CE), rb.record(1, b"acme", b"r1", _CE)]
    bad = _at(10, rb.batch(records, count=3))  # (its last offset delta: 1)
    got, next_offset = _fetched(topic, bad)
    assert [(r.offset, r.value) for r in got] == [(10, b"r0"), (11, b"r1")]
    assert next_offset == 12


def test_a_batch_a_broker_sends_again_in_one_fetch_is_stood_for_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Tansu answered one fetch with a corrupt batch 41,000 times over (review h65a):
    each copy past the first made a stand-in (its bytes copied, a line logged) that the
    fetcher then dropped."""
    made: list[int] = []
    real = record_batches.UnreadableBatch

    def made_one(offset: int, *args: Any) -> Any:
        made.append(offset)
        return real(offset, *args)

    monkeypatch.setattr(record_batches, "UnreadableBatch", made_one)
    bad = _at(3, rb.batch([rb.record(0, b"acme", b"{}", _CE)], bad_crc=True))
    got, next_offset = _fetched("cmds", bad * 1000 + _NEXT)
    assert [r.offset for r in got] == [3, 5, 6] and next_offset == 7
    assert made == [3]


@pytest.mark.parametrize("marker", ["cut_short", "empty"])
def test_an_unreadable_transaction_marker_is_read_as_an_abort(marker: str) -> None:
    """`paystream doctor`'s keep-up check reads the commands topic read_committed, and
    aiokafka reads a control batch's marker itself: one cut short (review h65a), or a
    marker batch with no record in it ("Control batch did not contain any records":
    review h65c), failed it on every fetch. Read as an abort, it ends only a transaction
    the broker says was aborted; the records after it are read."""
    records = [] if marker == "empty" else [rb.record(0, None, b"", key_len=50)]
    batch = bytearray(rb.batch(records, attributes=0x30, last_offset_delta=0))
    struct.pack_into(">q", batch, 0, 3)
    struct.pack_into(">q", batch, 43, 77)  # (its producer id)
    struct.pack_into(">I", batch, 17, calc_crc32c(bytes(batch[21:])))
    after = _at(4, rb.batch([rb.record(0, b"acme", b"after", _CE)]))
    record_batches.install(_STOOD_FOR)  # type: ignore[arg-type]
    read = fetcher.PartitionRecords(
        TopicPartition("cmds", 0), fetcher.MemoryRecords(bytes(batch) + after), [], 0,
        None, None, True, 1,  # read_committed
    )  # fmt: skip
    assert [r.value for r in read] == [b"after"]


def test_a_marker_batch_whose_crc_fails_is_stood_for_not_skipped() -> None:
    """Its control bit is not to be trusted: a data batch whose bit flipped was skipped
    unseen (review h65c)."""
    marker = bytearray(rb.batch([rb.record(0, b"\x00\x00\x00\x00", b"")], attributes=0x30))
    struct.pack_into(">q", marker, 0, 3)
    struct.pack_into(">I", marker, 17, 0xBAD)  # (its CRC wrong)
    got, next_offset = _fetched("cmds", bytes(marker) + _NEXT)
    assert [(r.offset, r.key) for r in got] == [(3, None), (5, b"acme"), (6, b"acme")]
    assert got[0].headers[0][0] == UNREADABLE_BATCH_HEADER
    assert next_offset == 7


# Offsets 10-12: 10 and 11 read, the third cut short (its CRC sound).
_CUT = _at(10, rb.batch([
    rb.record(0, b"acme", b"r0", _CE), rb.record(1, b"acme", b"r1", _CE),
    rb.record(2, b"acme", b"{}", key_len=1000),
]))  # fmt: skip
# Offsets 10-12, its CRC wrong.
_CRC = _at(10, rb.batch([rb.record(i, b"acme", b"v", _CE) for i in range(3)], bad_crc=True))
_AFTER = _at(13, _NEXT)


def test_records_read_before_the_fault_are_not_handed_out_again_per_copy() -> None:
    """A corrupt batch a broker sends again in one fetch: its end was capped at the next
    batch's first offset, its own when that is a copy, and the fetcher went back below
    records it had handed out (review h65c)."""
    got, next_offset = _fetched("cmds", _CUT * 3 + _AFTER)
    assert [r.offset for r in got] == [10, 11, 12, 13, 14]
    assert next_offset == 15


def test_a_multi_record_batch_with_a_wrong_crc_sent_twice_is_stood_for_once() -> None:
    got, next_offset = _fetched("cmds", _CRC * 2 + _AFTER)
    assert [r.offset for r in got] == [10, 13, 14]
    assert next_offset == 15


def test_a_partial_copy_at_the_end_of_the_fetch_does_not_take_the_position_back() -> None:
    got, next_offset = _fetched("cmds", _CUT + _CUT[:40])
    assert [r.offset for r in got] == [10, 11, 12]
    assert next_offset == 13


_WILD = _at(3, rb.batch([rb.record(0, b"acme", b"{}", _CE)], last_offset_delta=900, bad_crc=True))


def test_a_corrupt_count_sent_twice_does_not_skip_the_next_batch() -> None:
    """The copy's first offset is its own, no cap: the position jumped to the corrupt
    count's end and the next batch's records were skipped unseen (review h65e)."""
    got, next_offset = _fetched("cmds", _WILD * 2 + _NEXT)
    assert [r.offset for r in got] == [3, 5, 6]
    assert next_offset == 7


@pytest.mark.parametrize("copies", [1, 3])
def test_a_batch_whose_crc_fails_last_in_its_fetch_is_stood_for_once_over_its_count(
    copies: int,
) -> None:
    """A worker at the tail gets the newest batch alone. A broker gives a batch the
    offsets its count claims, so its one stand-in covers them, the range named (ended
    past the offset stood for instead, a 5-record batch made 5 stand-ins over 5 fetches:
    review h65i). Copies of it add none."""
    got, next_offset = _fetched("cmds", _WILD * copies)
    assert [r.offset for r in got] == [3]
    assert _stood_for(got[0])[2].startswith("record batch at cmds[3] offsets 3-903 ")
    assert next_offset == 904


def _txn(base: int, pid: int, records: list[bytes], *, control: bool = False,
         bad_crc: bool = False) -> bytes:  # fmt: skip
    b = bytearray(rb.batch(records, attributes=0x30 if control else 0x10))
    struct.pack_into(">q", b, 0, base)
    struct.pack_into(">q", b, 43, pid)  # (producer id)
    crc = calc_crc32c(bytes(b[21:]))
    struct.pack_into(">I", b, 17, crc ^ 0xDEAD if bad_crc else crc)
    return bytes(b)


def test_an_abort_marker_whose_crc_fails_does_not_drop_its_producers_next_transaction() -> None:
    """read_committed: producer 77's transaction at 0 aborted (the broker lists it), its
    abort marker at 1 has a wrong CRC. Stood for as a batch whose CRC fails, it left 77
    "aborted", and 77's committed record at 2 was skipped unseen (review h65e)."""
    fetch = (
        _txn(0, 77, [rb.record(0, b"acme", b"aborted", _CE)])
        + _txn(1, 77, [rb.record(0, b"\x00\x00\x00\x00", b"")], control=True, bad_crc=True)
        + _txn(2, 77, [rb.record(0, b"acme", b"committed", _CE)])
        + _txn(3, 77, [rb.record(0, b"\x00\x00\x00\x01", b"")], control=True)
    )
    record_batches.install(_STOOD_FOR)  # type: ignore[arg-type]
    records = fetcher.PartitionRecords(
        TopicPartition("cmds", 0), fetcher.MemoryRecords(fetch), [(77, 0)], 0,
        None, None, True, 1,  # read_committed
    )  # fmt: skip
    assert [(r.offset, r.value) for r in records] == [(1, b""), (2, b"committed")]


def _past_its_end(delta: int) -> bytes:
    """One batch claiming one offset (last offset delta 0): a record at offset delta
    ``delta`` that reads, then one cut short (its key runs past the end)."""
    return rb.batch(
        [
            rb.record(delta, b"acme", b"bogus", _CE),
            rb.record(delta + 1, b"acme", b"{}", _CE, key_len=1000),
        ],
        last_offset_delta=0,
    )


def test_a_record_past_its_batchs_end_does_not_take_the_position_past_the_next_batch() -> None:
    """Its offset, read before the batch failed, became the fetch position: the batch
    after it (another tenant's, at the offsets the broker gave it) was skipped unseen,
    and at the tail the position went past the log (review h65j)."""
    others = _at(1, rb.batch([rb.record(i, b"other", b"B%d" % i, _CE) for i in range(3)]))
    got, next_offset = _fetched("cmds", _at(0, _past_its_end(3)) + others)
    assert [(r.offset, r.value) for r in got] == [(0, b""), (1, b"B0"), (2, b"B1"), (3, b"B2")]
    assert "a record at offset 3, past the batch's last" in _stood_for(got[0])[2]
    assert next_offset == 4
    got, next_offset = _fetched("cmds", _at(0, _past_its_end(1_000_000)))
    assert [r.offset for r in got] == [0] and next_offset == 1

"""Fetched record batches whose header names are not UTF-8 are read (streams/
record_batches.py): aiokafka's C parser raised UnicodeDecodeError on every fetch of such
a batch, so one record a producer wrote so crashed the worker, for good."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from aiokafka.record.default_records import DefaultRecordBatch, _DefaultRecordBatchBuilderPy
from aiokafka.record.memory_records import MemoryRecords

from paystream.streams.record_batches import LenientMemoryRecords


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

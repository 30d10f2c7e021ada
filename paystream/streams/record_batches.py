"""Fetched record batches aiokafka cannot read are read, or stood for, not crashed on.

A Kafka header name is a string, but a broker keeps the bytes a producer sends (a
librdkafka producer may send any). aiokafka's record parser decodes header names
strictly: one such record raised UnicodeDecodeError on every fetch of its partition, the
worker crashed, restarted on the same offset and crashed again, and every tenant of the
partition waited behind it. Installed (``install``), a batch aiokafka's C parser refuses
that way is parsed again by aiokafka's own Python parser, header names decoded
leniently (the bytes that are not UTF-8 as backslash escapes): its records reach the
pipeline, which dead-letters the one whose headers are no CloudEvent, and the batch's
other records go on as usual. A batch the C parser reads takes no other path.

A batch no parser reads (its CRC wrong, its compression corrupt or unknown, its records
cut short: real Kafka refuses one on produce, but a broker may store it) crashed the
worker the same way. On a topic whose readers dead-letter what they cannot decode (the
commands and the outcomes: ``install``), the rest of such a batch is handed on as one
keyless record at the first offset not read, its value the batch's bytes and its
``UNREADABLE_BATCH_HEADER`` saying what failed: the command agent and the ledger sink
dead-letter it, and the partition goes on. On any other topic (a table's changelog, the
tenant registry) skipping a record would lose state unseen: the batch still fails the
consumer, named by topic, partition and offset.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, SupportsIndex

from aiokafka.consumer import fetcher
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import _DefaultRecordBatchPy
from aiokafka.record.legacy_records import LegacyRecordBatch
from aiokafka.record.memory_records import MemoryRecords, _MemoryRecordsPy

from paystream.settings import Settings

__all__ = ["UNREADABLE_BATCH_HEADER", "LenientMemoryRecords", "UnreadableBatch", "install"]

log = logging.getLogger(__name__)

# On the record standing for a batch no parser reads: what failed, and where.
UNREADABLE_BATCH_HEADER = "paystream-unreadable-batch"
# Topics a batch no parser reads is stood for on (``install``); elsewhere it fails.
_STOOD_FOR: frozenset[str] = frozenset()


class _LenientBytes(bytearray):
    """A batch's bytes whose slices decode leniently (only header names are decoded)."""

    def __getitem__(self, index: SupportsIndex | slice) -> Any:
        got = super().__getitem__(index)
        return _LenientBytes(got) if isinstance(index, slice) else got

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return super().decode(encoding, "backslashreplace")


class _LenientBatch(_DefaultRecordBatchPy):
    """aiokafka's Python batch parser, its (decompressed) bytes made lenient."""

    def __iter__(self) -> _LenientBatch:
        super().__iter__()  # (decompresses)
        self._buffer = _LenientBytes(self._buffer)  # type: ignore[has-type]
        return self


class _Batch:
    """A v2 batch as aiokafka's C parser reads it; from the record it refuses for a header
    name on, as the lenient parser reads it. One that neither reads (or whose CRC is
    wrong) fails, or on a topic of ``install``'s is stood for (``UnreadableBatch``) from
    the first record not read. Anything else asked of it, the C batch answers."""

    __slots__ = ("_batch", "_crc_failed", "_data", "_failed", "_index", "_stand_for", "_tp")

    def __init__(self, batch: Any, data: bytes, index: int, tp: Any) -> None:
        self._batch = batch
        self._data = data
        self._index = index
        self._tp = tp
        self._stand_for = tp is not None and tp.topic in _STOOD_FOR
        self._crc_failed = False
        self._failed = False  # (a parser failed on it: its own count is not trusted)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batch, name)

    def __next__(self) -> Any:
        # (aiokafka reads a control batch's marker so, from a read_committed consumer: a
        # dunder method is not looked up through __getattr__; review h64j.)
        return next(self._batch)

    def validate_crc(self) -> bool:
        if self._batch.validate_crc():
            return True
        if not self._stand_for:
            return False  # (aiokafka's consumer fails on it, as it always did)
        self._crc_failed = True  # (its records are not read: stood for whole)
        return True

    def __iter__(self) -> Iterator[Any]:
        read = -1  # (the offset of the last record given)
        try:
            if self._crc_failed:
                raise CorruptRecordException("its CRC does not match its bytes")
            try:
                for record in self._batch:
                    read = record.offset
                    yield record
            except UnicodeDecodeError:
                for record in _LenientBatch(_nth_batch(self._data, self._index)):
                    if record.offset > read:
                        read = record.offset
                        yield record
        except Exception as exc:
            # (Whatever a parser raises on bytes it cannot read: CorruptRecordException,
            # EOFError or zlib.error from gzip, cramjam's DecompressionError, an unknown
            # codec's UnsupportedCodecError, ...)
            self._failed = True
            stand_in = self._stand_in(read, exc)
            if stand_in is not None:
                yield stand_in

    def _stand_in(self, read: int, exc: Exception) -> UnreadableBatch | None:
        batch = self._batch
        first = max(read + 1, batch.base_offset)
        end = self.next_offset
        tp = self._tp
        where = f"{tp.topic}[{tp.partition}] " if tp is not None else ""
        where += f"offsets {batch.base_offset}-{end - 1}"
        text = str(exc)[:200]  # (aiokafka's errors name themselves)
        what = text if type(exc).__name__ in text else f"{type(exc).__name__}: {text}"
        if not self._stand_for:
            raise CorruptRecordException(f"unreadable record batch at {where}: {what}") from exc
        if first >= end:
            # Every offset the batch claims was read; only bytes past them are not.
            log.warning(
                "record batch at %s: bytes after its last record not read (%s)", where, what
            )
            return None
        log.error(
            "unreadable record batch at %s (%s): from offset %d on, handed on as one "
            "record to dead-letter",
            where,
            what,
            first,
        )
        raw = bytes(_nth_batch(self._data, self._index))
        detail = (
            f"record batch at {where} unreadable from offset {first} ({what}); "
            f"the value is its {len(raw)} bytes"
        )
        return UnreadableBatch(first, raw, detail)

    @property
    def next_offset(self) -> int:
        # (Read by the fetcher after the batch: where the next fetch starts. A corrupt
        # batch's own count may run past the next batch's first offset, or before its own.)
        batch = self._batch
        if not (self._failed or self._crc_failed):
            return int(batch.next_offset)
        return _end_offset(self._data, self._index, batch.base_offset, batch.next_offset)


@dataclass(frozen=True)
class UnreadableBatch:
    """The record handed on for the rest of a batch no parser reads (what aiokafka's
    fetcher reads of a record)."""

    offset: int
    value: bytes
    detail: str
    key: None = None
    checksum: None = None
    timestamp_type: int = 0

    @property
    def timestamp(self) -> int:
        return time.time_ns() // 1_000_000  # (its own cannot be trusted: when it was read)

    @property
    def headers(self) -> tuple[tuple[str, bytes], ...]:
        return ((UNREADABLE_BATCH_HEADER, self.detail.encode()),)


def _nth_batch(data: bytes, index: int) -> memoryview:
    """The bytes of the ``index``-th batch of ``data`` (as aiokafka's reader cuts them)."""
    records = _MemoryRecordsPy(data)
    for _ in range(index):
        records.next_batch()
    raw = records._next_slice
    assert raw is not None  # (the C reader read it)
    return raw


def _end_offset(data: bytes, index: int, base: int, claimed: int) -> int:
    """The first offset after the ``index``-th batch (``base`` its first): what it
    claims, but never past the next batch's first offset, nor at or before its own."""
    records = _MemoryRecordsPy(data)
    for _ in range(index + 1):
        records.next_batch()
    end = int(claimed)
    if records.has_next():
        following = records._next_slice
        assert following is not None
        end = min(end, int.from_bytes(following[:8], "big", signed=True))
    return max(end, base + 1)


class LenientMemoryRecords:
    """aiokafka's ``MemoryRecords`` for one fetched partition, each v2 batch read as
    ``_Batch`` says: aiokafka's C reader until a header name is not UTF-8."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._records = MemoryRecords(data)
        self._next = 0  # (the index of the next batch)
        self.tp: Any = None  # (its topic-partition: set by ``_PartitionRecords``)

    def size_in_bytes(self) -> int:
        return self._records.size_in_bytes()

    def has_next(self) -> bool:
        return self._records.has_next()

    def next_batch(self) -> Any:
        batch = self._records.next_batch()
        index, self._next = self._next, self._next + 1
        if batch is None or isinstance(batch, LegacyRecordBatch):
            return batch  # (legacy formats have no headers)
        return _Batch(batch, self._data, index, self.tp)


class _PartitionRecords(fetcher.PartitionRecords):
    """aiokafka's records of one fetched partition, which tell its batches their topic."""

    def __init__(self, tp: Any, records: Any, *args: Any) -> None:
        if isinstance(records, LenientMemoryRecords):
            records.tp = tp
        super().__init__(tp, records, *args)


def install(settings: Settings) -> None:
    """Every aiokafka consumer of this process reads fetched partitions so; a batch no
    parser reads is stood for on the commands and outcomes topics of ``settings`` (added
    to those named before: idempotent)."""
    global _STOOD_FOR
    _STOOD_FOR = _STOOD_FOR | {settings.commands_topic, settings.events_topic}
    fetcher.MemoryRecords = LenientMemoryRecords
    fetcher.PartitionRecords = _PartitionRecords

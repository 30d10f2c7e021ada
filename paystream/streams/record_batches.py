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
keyless record at the first offset not read, its ``UNREADABLE_BATCH_HEADER`` saying what
failed and where: the command agent and the ledger sink dead-letter it, and the
partition goes on. It carries none of the batch's bytes (no card scan can vouch for a
batch's framing): they stay on the topic, where the detail says. On any other topic (a
table's changelog, the tenant registry) skipping a record would lose state unseen: the
batch still fails the consumer, named by topic, partition and offset.
"""

from __future__ import annotations

import collections
import logging
import struct
import sys
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, SupportsIndex

from aiokafka.consumer import fetcher
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import _DefaultRecordBatchPy
from aiokafka.record.legacy_records import LegacyRecordBatch
from aiokafka.record.memory_records import MemoryRecords

from paystream.log_limits import ThrottledLog
from paystream.settings import Settings

__all__ = [
    "UNREADABLE_BATCH_HEADER",
    "LenientMemoryRecords",
    "UnreadableBatch",
    "install",
    "offset_after",
    "stands_for",
]

log = logging.getLogger(__name__)
_throttled = ThrottledLog(log)

# On the record standing for a batch no parser reads: what failed, and where.
UNREADABLE_BATCH_HEADER = "paystream-unreadable-batch"
# The stand-ins this process made, by (topic, partition, offset): (the offset past the
# batch each stands for, whether its own fetch vouched for that end, the stand-in's own
# offset). Kept here, not in a header: a producer may send any header. Each is found
# both at its own offset and at the batch's first unread one (after a reset they differ).
_STOOD_FOR_UNTIL: collections.OrderedDict[tuple[str, int, int], tuple[int, bool, int]] = (
    collections.OrderedDict()
)
# The most recent kept: more than the agents' queues hold in flight (a producer whose codec
# is broken sends one such batch a send; one forgotten in flight is dead-lettered twice).
_STOOD_FOR_KEPT = 65_536
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

    __slots__ = ("_batch", "_crc_failed", "_end", "_failed", "_records", "_start")

    def __init__(self, batch: Any, records: LenientMemoryRecords, start: int, end: int) -> None:
        self._batch = batch
        self._records = records  # (its fetch: the bytes, the topic-partition, the position)
        self._start = start  # (where its bytes are in the fetch's)
        self._end = end
        self._crc_failed = False
        self._failed = False  # (a parser failed on it: its own count is not trusted)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batch, name)

    def __next__(self) -> Any:
        # (aiokafka reads a control batch's marker so, from a read_committed consumer: a
        # dunder method is not looked up through __getattr__; review h64j.)
        failure: object
        try:
            marker = next(self._batch)
        except Exception as exc:  # (StopIteration too: a marker batch holds one record)
            if not self._batch.is_control_batch:
                raise
            failure = "no record in it" if isinstance(exc, StopIteration) else exc
        else:
            if marker.key is not None and len(marker.key) >= 4:
                return marker
            failure = "no marker type in its key"
        # A marker that cannot be read ends its producer's transaction as an abort:
        # aiokafka skips that producer's records only while the broker lists an aborted
        # transaction of its that this marker ends, which makes it an abort marker; for
        # any other producer the marker changes nothing (reviews h65a, h65c).
        log.warning("unreadable transaction marker at %s (%s): read as an abort", self, failure)
        return _ABORT

    def _read_as_an_abort(self) -> None:
        """A marker batch whose CRC fails, stood for as any such batch is, is also read as
        an abort, as an unreadable marker is: left a marker of nothing, its producer
        stayed "aborted" for a read_committed reader, which then skipped its next
        committed transaction (review h65e). (Should the bit have flipped on a data
        batch, a transaction the broker lists as aborted ends early: its later records
        in this fetch are read.)"""
        reader = self._records.reader()
        aborted = getattr(reader, "_aborted_producers", None)
        if aborted is not None:
            aborted.discard(self._batch.producer_id)

    # A batch whose CRC fails vouches for nothing past its framing: not for being a
    # marker (skipped unseen, a data batch whose bit flipped would be lost), nor for
    # being part of a transaction. It is stood for (review h65c).
    @property
    def is_control_batch(self) -> bool:
        return not self._crc_failed and bool(self._batch.is_control_batch)

    @property
    def is_transactional(self) -> bool:
        return not self._crc_failed and bool(self._batch.is_transactional)

    def validate_crc(self) -> bool:
        if self._batch.validate_crc():
            return True
        if not self._records.stand_for:
            # The consumer fails on it, as it always did, its error naming the batch
            # (aiokafka's named the partition only; review h65m).
            raise CorruptRecordException(
                f"unreadable record batch at {self}: its CRC does not match its bytes"
            )
        self._crc_failed = True  # (its records are not read: stood for whole)
        return True

    def __iter__(self) -> Iterator[Any]:
        read = -1  # (the offset of the last record given)
        # No record of it is at or past its end: one there (its delta past the batch's
        # last) took the fetch position past records of the batches after it, every
        # tenant's on the partition, unseen (review h65j).
        past = int(self._batch.next_offset)
        try:
            if self._crc_failed:
                if self._batch.is_control_batch:
                    self._read_as_an_abort()
                raise CorruptRecordException("its CRC does not match its bytes")
            try:
                for record in self._batch:
                    if record.offset >= past:
                        raise _past_its_end(record.offset)
                    read = record.offset
                    yield record
            except UnicodeDecodeError:
                for record in _LenientBatch(self._bytes()):
                    if record.offset >= past:
                        raise _past_its_end(record.offset) from None
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

    def __str__(self) -> str:
        tp = self._records.tp
        where = f"{tp.topic}[{tp.partition}] " if tp is not None else ""
        return f"{where}offsets {self._batch.base_offset}-{self.next_offset - 1}"

    def _bytes(self) -> memoryview:
        return memoryview(self._records.data)[self._start : self._end]

    def _stand_in(self, read: int, exc: Exception) -> UnreadableBatch | None:
        batch = self._batch
        first = max(read + 1, batch.base_offset)
        end = self.next_offset
        text = str(exc)[:200]  # (aiokafka's errors name themselves)
        what = text if type(exc).__name__ in text else f"{type(exc).__name__}: {text}"
        position = self._records.position()
        if max(first, position) >= end:
            # Every offset the batch claims was read, or is before where the fetch
            # starts (a broker may send a batch again: Tansu sent one 41,000 times in
            # one fetch; review h65a). Only bytes past them are not read.
            log.debug("record batch at %s: nothing left to read past offset %d", self, end - 1)
            return None
        if not self._records.stand_for:
            raise CorruptRecordException(f"unreadable record batch at {self}: {what}") from exc
        tp = self._records.tp
        unread = first  # (where any reader of the batch finds it unreadable)
        if position > first:
            stood = None if tp is None else _STOOD_FOR_UNTIL.get((tp.topic, tp.partition, first))
            if stood is not None and position > stood[2]:
                # The fetch starts past a stand-in this process handed on (a gap read, a
                # sweep): stood for again at each offset a fetch started at, one batch
                # was dead-lettered once more per read (review h66a).
                log.debug("record batch at %s: stood for already from offset %d", self, first)
                return None
            # Put inside it some other way (a group's offsets reset by hand, a log start
            # inside it): the rest is stood for, or it went without a dead letter (h66c).
            first = position
        _throttled.warning(
            ("unreadable", tp),  # (a producer whose codec is broken sends one a batch)
            "unreadable record batch at %s (%s): from offset %d on, handed on as one "
            "record to dead-letter",
            self,
            what,
            first,
        )
        # Its bytes are not handed on: the pipeline's card scan reads a record's value,
        # not a batch's framing (a code in a header, a card number behind a length byte
        # that reads as a digit, a record refused for one before the fault: reviews
        # h65a, h65c). They stay on the topic, where the detail says.
        size = self._end - self._start
        detail = (
            f"record batch at {self} unreadable from offset {first} ({what}); its {size} "
            "bytes are not copied"
        )
        if tp is not None:
            # Its end is believed where a next batch of the fetch bounds it, or the
            # partition ended there when the broker answered this fetch: decided now,
            # not by where the partition ends when the agents get to it (it moves on;
            # review h66g).
            believed = self._bounded() or self._records.highwater == int(batch.next_offset)
            for at in {first, unread}:  # (a read from inside finds it at ``unread``)
                _STOOD_FOR_UNTIL[(tp.topic, tp.partition, at)] = (end, believed, first)
                _STOOD_FOR_UNTIL.move_to_end((tp.topic, tp.partition, at))
            while len(_STOOD_FOR_UNTIL) > _STOOD_FOR_KEPT:
                _STOOD_FOR_UNTIL.popitem(last=False)
        return UnreadableBatch(first, b"", detail)

    @property
    def next_offset(self) -> int:
        # (Read by the fetcher after the batch: where the next fetch starts. Never before
        # where the consumer has read to: a broker may send a batch again; review h65c.)
        batch = self._batch
        if not (self._failed or self._crc_failed):
            return int(batch.next_offset)
        base = int(batch.base_offset)
        claimed = int(batch.next_offset)
        following = self._records.base_above(self._end, base)  # (a next batch, no copy)
        # Its own count, when nothing later in the fetch says otherwise: a broker gives a
        # batch the offsets its count claims (Tansu gave one claiming 901 records, a
        # CRC wrong, 901 offsets), so its stand-in covers them all (ended past the
        # offset stood for, it made one stand-in an offset, a fetch each; review h65i).
        # Only a count corrupted after the broker stored the batch could run past
        # offsets the log holds: the stand-in's detail names the range.
        end = claimed if following is None else min(claimed, following)
        high = self._records.highwater
        if following is None and high is not None and high > self._records.fetched_from:
            # Nor past where the partition ended when the broker answered: a count
            # corrupted at rest sent the next fetch past the log's end, out of range, and
            # a consumer reset to its earliest read the partition again (review h66h).
            end = min(end, high)
        return max(end, base + 1, self._records.position())

    def _bounded(self) -> bool:
        """Does a next batch in the fetch vouch for where this one ends?"""
        return self._records.base_above(self._end, int(self._batch.base_offset)) is not None


def _past_its_end(offset: int) -> CorruptRecordException:
    return CorruptRecordException(f"a record at offset {offset}, past the batch's last")


@dataclass(frozen=True)
class _Marker:
    key: bytes


_ABORT = _Marker(struct.pack(">hh", 0, 0))  # (aiokafka's ABORT_MARKER: version 0, type 0)


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


class LenientMemoryRecords:
    """aiokafka's ``MemoryRecords`` for one fetched partition, each v2 batch read as
    ``_Batch`` says: aiokafka's C reader until a header name is not UTF-8."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._records = MemoryRecords(data)
        self._at = 0  # (where the next batch's bytes start)
        self.tp: Any = None  # (its topic-partition: set by ``_PartitionRecords``)
        self.stand_for = False  # (its topic is one of ``install``'s)
        # Where the partition ended when the broker answered this fetch (None: unknown).
        self.highwater: int | None = None
        self.fetched_from = -1
        # aiokafka's reader of these records (``_PartitionRecords``), if it is still there.
        self.reader: Callable[[], Any] = lambda: None
        # base_above's answers, by first offset: (from where it looked, what it found).
        self._above: dict[int, tuple[int, int | None]] = {}

    def position(self) -> int:
        """Where the reader has read to (aiokafka's fetcher skips a record before it)."""
        return int(getattr(self.reader(), "next_fetch_offset", -1))

    def base_above(self, at: int, base: int) -> int | None:
        """The first offset of the first batch from byte ``at`` on whose first offset is
        above ``base`` (copies of a batch a broker sends again are passed over)."""
        known = self._above.get(base)
        if known is not None and known[0] <= at:
            return known[1]  # (copies are passed over once, not once per copy)
        data, found, pos = self.data, None, at
        while pos + 8 <= len(data):
            first = int.from_bytes(data[pos : pos + 8], "big", signed=True)
            if first > base:
                found = first
                break
            if pos + 12 > len(data):
                break
            pos += 12 + int.from_bytes(data[pos + 8 : pos + 12], "big")
        self._above[base] = (at, found)
        return found

    def size_in_bytes(self) -> int:
        return self._records.size_in_bytes()

    def has_next(self) -> bool:
        return self._records.has_next()

    def next_batch(self) -> Any:
        batch = self._records.next_batch()
        start = self._at
        # (Every batch, v2 or legacy, starts with its offset and then its length.)
        self._at = end = start + 12 + int.from_bytes(self.data[start + 8 : start + 12], "big")
        if batch is None or isinstance(batch, LegacyRecordBatch):
            return batch  # (legacy formats have no headers)
        return _Batch(batch, self, start, end)


class _PartitionRecords(fetcher.PartitionRecords):
    """aiokafka's records of one fetched partition, which tell its batches their topic
    and how far they have been read."""

    def __init__(self, tp: Any, records: Any, *args: Any) -> None:
        if isinstance(records, LenientMemoryRecords):
            records.tp = tp
            records.stand_for = tp.topic in _STOOD_FOR
            records.reader = weakref.ref(self)  # (no cycle: collected with it)
            # The fetch response's high watermark: aiokafka's fetcher has it in hand
            # (``highwater``, its loop over the response's partitions) as it makes these,
            # and passes it on to nothing else but the partition's state.
            frame = sys._getframe(1).f_locals
            high = frame.get("lso" if args and args[-1] == fetcher.READ_COMMITTED else "highwater")
            records.fetched_from = int(args[1])
            records.highwater = high if isinstance(high, int) else None
        super().__init__(tp, records, *args)


def install(settings: Settings) -> None:
    """Every aiokafka consumer of this process reads fetched partitions so; a batch no
    parser reads is stood for on the commands and outcomes topics of ``settings`` (added
    to those named before: idempotent)."""
    global _STOOD_FOR
    _STOOD_FOR = _STOOD_FOR | {settings.commands_topic, settings.events_topic}
    fetcher.MemoryRecords = LenientMemoryRecords
    fetcher.PartitionRecords = _PartitionRecords


def offset_after(message: Any) -> int:
    """The offset after a Faust ``message``; for a stand-in this process handed on
    (``UnreadableBatch``), the offset past the batch it stands for. Its readers take
    every offset before that as handled with it: the fetcher has moved past them, and a
    read from inside the batch hands nothing on (review h66a: the agents took only the
    stand-in's own offset as handled, read the rest as a gap, and dead-lettered the
    batch again). Known by this process alone: a producer may send any header.

    The batch's own count is taken only where a next batch of its fetch bounds it, or
    the partition ended where it says when the fetch was answered: a count corrupted at
    rest claimed offsets of the records after it, which were then passed over unread and
    unanswered (review h66f). Otherwise the agents read on from the stand-in, and find
    the rest of the batch passed over and the records after it."""
    offset = int(message.offset)
    if message.key is None:  # (every command and outcome has a key)
        tp = message.tp
        stood = _STOOD_FOR_UNTIL.get((tp.topic, tp.partition, offset))
        if stood is not None and stood[1] and stood[2] == offset:
            return max(offset + 1, stood[0])
    return offset + 1


def stands_for(tp: Any, offset: int) -> bool:
    """Did this process hand on a stand-in at ``offset`` of ``tp``?"""
    stood = _STOOD_FOR_UNTIL.get((tp.topic, tp.partition, offset))
    return stood is not None and stood[2] == offset

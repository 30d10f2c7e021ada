"""Fetched record batches whose header names are not UTF-8 are read, not crashed on.

A Kafka header name is a string, but a broker keeps the bytes a producer sends (a
librdkafka producer may send any). aiokafka's record parser decodes header names
strictly: one such record raised UnicodeDecodeError on every fetch of its partition, the
worker crashed, restarted on the same offset and crashed again, and every tenant of the
partition waited behind it. Installed (``install``), a batch aiokafka's C parser refuses
that way is parsed again by aiokafka's own Python parser, header names decoded
leniently (the bytes that are not UTF-8 as backslash escapes): its records reach the
pipeline, which dead-letters the one whose headers are no CloudEvent, and the batch's
other records go on as usual. A batch the C parser reads takes no other path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, SupportsIndex

from aiokafka.consumer import fetcher
from aiokafka.record.default_records import _DefaultRecordBatchPy
from aiokafka.record.legacy_records import LegacyRecordBatch
from aiokafka.record.memory_records import MemoryRecords, _MemoryRecordsPy

__all__ = ["LenientMemoryRecords", "install"]


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
    name on, as the lenient parser reads it. Anything else asked of it, the C batch
    answers."""

    __slots__ = ("_batch", "_data", "_index")

    def __init__(self, batch: Any, data: bytes, index: int) -> None:
        self._batch = batch
        self._data = data
        self._index = index

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batch, name)

    def __next__(self) -> Any:
        # (aiokafka reads a control batch's marker so, from a read_committed consumer: a
        # dunder method is not looked up through __getattr__; review h64j.)
        return next(self._batch)

    def __iter__(self) -> Iterator[Any]:
        read = -1  # (the offset of the last record given)
        try:
            for record in self._batch:
                read = record.offset
                yield record
        except UnicodeDecodeError:
            for record in _LenientBatch(_nth_batch(self._data, self._index)):
                if record.offset > read:
                    yield record


def _nth_batch(data: bytes, index: int) -> memoryview:
    """The bytes of the ``index``-th batch of ``data`` (as aiokafka's reader cuts them)."""
    records = _MemoryRecordsPy(data)
    for _ in range(index):
        records.next_batch()
    raw = records._next_slice
    assert raw is not None  # (the C reader read it)
    return raw


class LenientMemoryRecords:
    """aiokafka's ``MemoryRecords`` for one fetched partition, each v2 batch read as
    ``_Batch`` says: aiokafka's C reader until a header name is not UTF-8."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._records = MemoryRecords(data)
        self._next = 0  # (the index of the next batch)

    def size_in_bytes(self) -> int:
        return self._records.size_in_bytes()

    def has_next(self) -> bool:
        return self._records.has_next()

    def next_batch(self) -> Any:
        batch = self._records.next_batch()
        index, self._next = self._next, self._next + 1
        if batch is None or isinstance(batch, LegacyRecordBatch):
            return batch  # (legacy formats have no headers)
        return _Batch(batch, self._data, index)


def install() -> None:
    """Every aiokafka consumer of this process reads fetched partitions so (idempotent)."""
    fetcher.MemoryRecords = LenientMemoryRecords

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
from aiokafka.record.memory_records import _MemoryRecordsPy

__all__ = ["LenientMemoryRecords", "install"]

_MAGIC_OFFSET = _MemoryRecordsPy.MAGIC_OFFSET


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
    """A v2 batch as aiokafka's C parser reads it, or, for one it refuses for a header
    name, as the lenient parser does; anything else asked of it, the C batch answers."""

    __slots__ = ("_batch", "_raw")

    def __init__(self, batch: Any, raw: memoryview) -> None:
        self._batch = batch
        self._raw = raw

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batch, name)

    def __iter__(self) -> Iterator[Any]:
        try:
            return iter(list(self._batch))
        except UnicodeDecodeError:
            return iter(list(_LenientBatch(self._raw)))


class LenientMemoryRecords:
    """aiokafka's ``MemoryRecords`` for one fetched partition: its batches cut by the
    Python reader (a length read per batch), each parsed as ``_Batch`` says."""

    def __init__(self, data: bytes) -> None:
        self._records = _MemoryRecordsPy(data)

    def size_in_bytes(self) -> int:
        return self._records.size_in_bytes()

    def has_next(self) -> bool:
        return self._records.has_next()

    def next_batch(self) -> Any:
        raw = self._records._next_slice
        batch = self._records.next_batch()
        if raw is None or batch is None or raw[_MAGIC_OFFSET] < 2:
            return batch  # (legacy formats have no headers)
        return _Batch(batch, raw)


def install() -> None:
    """Every aiokafka consumer of this process reads fetched partitions so (idempotent)."""
    fetcher.MemoryRecords = LenientMemoryRecords

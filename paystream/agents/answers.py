"""Rejections that depend on state, kept per record until its offset is committed.

A command rejected because of its tenant's state (suspended, not registered, its gateway
unusable) or a validation rule is not remembered under its idempotency key: sent again,
it must be decided afresh. But the *same record*, redelivered after a crash before its
offset was committed, must get the answer already published. Decided afresh, a payment
answered `tenant_suspended` was charged on its redelivery once the tenant was active
again, after its sender had been told it was refused (and may have sent it again under
a new id); a `validation_error` became `tenant_suspended`: two answers, one event id.

So such rejections are kept, per commands-topic partition, by offset (with a tag of the
command id, so another record at that offset is not mistaken for it), until the
partition's committed offset passes them: only uncommitted records come again. The tenant
limits keep their own rejections the same way (`LimitGate.kept_rejection`).

Every such rejection is kept, however many a stalled commit lets pile up: one record per
``SHARD_OFFSETS`` offsets holds them. A cap per partition (800, or 256 KiB) once let a
rejection past it go unkept, and its redelivery, decided afresh, charged a payment
answered `tenant_suspended` once the tenant was resumed (134 long validation errors of
another tenant were enough to fill it; review finding).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, MutableMapping
from typing import Any

import orjson

__all__ = ["MAX_ENTRY_BYTES", "SHARD_OFFSETS", "RecordAnswers"]

log = logging.getLogger(__name__)

# Offsets whose rejections one record holds: at most MAX_ENTRY_BYTES each (validation
# errors are cut to fit: see the pipeline's ``VALIDATION_ERRORS_SHOWN``), a record stays
# within the changelog's 512 KiB value (a larger one would fail its batch on every
# redelivery, worker after worker). A rejection larger than that is not kept.
SHARD_OFFSETS = 64
MAX_ENTRY_BYTES = 4096


class RecordAnswers:
    """Per partition, the rejection data of records not yet committed, by offset.

    Under :meth:`key_of` (one record per ``SHARD_OFFSETS`` offsets of a partition):
    ``{"kept": {offset: {"id": tag, "data": rejection}}}``. Under :meth:`index_key`, the
    partition's shards held and the committed offset they were pruned to: ``{"floor":
    offset, "shards": [n, ...]}``. Versions before kept one record per partition under
    :meth:`key` (``{"floor", "bytes", "kept"}``): still read, and dropped once the
    committed offset has passed all of it.
    """

    def __init__(
        self, table: MutableMapping[str, Any], committed: Callable[[int], int] | None
    ) -> None:
        self.table = table  # changelog-backed, co-partitioned with the commands topic
        self._committed = committed or (lambda partition: -1)
        # Whether the batch under way may delete from the tables now (the command agent's
        # _may_delete; always, elsewhere), and the shards its prunes dropped: a delete
        # only the batch's tombstones carry, so a batch that made one is never given up
        # with the worker up (commands.ProcessedBatch.deleted; review h69i).
        self.may_drop: Callable[[], bool] = lambda: True
        self.dropped = 0

    @staticmethod
    def key(partition: int) -> str:
        """The record versions before kept a partition's rejections in (all of them)."""
        # No tenant id holds a NUL (the table's other keys are "{tenant}:limits").
        return f"answers\x00{partition}"

    @staticmethod
    def key_of(partition: int, offset: int) -> str:
        """The record keeping the rejection of the record at ``offset``."""
        return f"answers\x00{partition}\x00{offset // SHARD_OFFSETS}"

    @staticmethod
    def index_key(partition: int) -> str:
        return f"answers\x00{partition}\x00index"

    def key_holding(self, partition: int, offset: int) -> str | None:
        """The key of the record holding the offset's entry (None: none does)."""
        return self._found(partition, offset)[1]

    def _found(self, partition: int, offset: int) -> tuple[dict[str, Any] | None, str | None]:
        """The entry kept at the offset and the key holding it: its shard, else (kept by
        a version before) the partition's single record."""
        if offset < 0:
            return None, None
        key = self.key_of(partition, offset)
        entry = _entry_in(self.table.get(key), offset)
        if entry is not None:
            return entry, key
        key = self.key(partition)
        entry = _entry_in(self.table.get(key), offset)
        return (entry, key) if entry is not None else (None, None)

    def kept(self, partition: int, offset: int, command_id: str) -> dict[str, Any] | None:
        """The rejection data this very record was answered with, if it was kept."""
        entry = self._found(partition, offset)[0]
        if entry is None or entry["id"] != _tag(command_id):
            return None
        return dict(entry["data"])

    def parked(self, partition: int, offset: int, command_id: str) -> dict[str, Any] | None:
        """What :meth:`keep_parked` kept for this very record, if anything."""
        entry = self._found(partition, offset)[0]
        if entry is None or entry["id"] != _PARKED + _tag(command_id):
            return None
        return dict(entry["data"])

    def kept_or_parked(
        self, partition: int, offset: int, command_id: str
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """``(kept(...), parked(...))``, from one lookup of the offset's entry: the
        pipeline asks both of every command. Safe as one: both read the one entry kept at
        the offset and match its tag against the command's, ``kept`` as is and ``parked``
        with its prefix, so at most one of them matches; the tag is hashed only when
        there is an entry (as ``kept`` does). Tests compare it with the two calls."""
        entry = self._found(partition, offset)[0]
        if entry is None:
            return None, None
        tag = _tag(command_id)
        found = entry["id"]
        if found == tag:
            return dict(entry["data"]), None
        if found == _PARKED + tag:
            return None, dict(entry["data"])
        return None, None

    @staticmethod
    def fits(data: dict[str, Any]) -> bool:
        """Whether a rejection with this data can be kept (at any offset)."""
        return _size(10**18, {"id": "x" * 16, "data": data}) <= MAX_ENTRY_BYTES

    def keep(self, partition: int, offset: int, command_id: str, data: dict[str, Any]) -> None:
        """Keep a rejection for the record's redeliveries (a record not from Kafka has
        none); what is committed already is dropped."""
        self._keep(partition, offset, _tag(command_id), data)

    def keep_parked(
        self, partition: int, offset: int, command_id: str, data: dict[str, Any]
    ) -> None:
        """Keep that the record was parked, not answered (its redeliveries are parked
        again). Under a tag no version before it matches: one of those, given the record,
        decides it afresh as it always did, rather than answer with this as a rejection."""
        self._keep(partition, offset, _PARKED + _tag(command_id), data)

    def _keep(self, partition: int, offset: int, tag: str, data: dict[str, Any]) -> None:
        if offset < 0:
            return
        entry: dict[str, Any] = {"id": tag, "data": data}
        if _size(offset, entry) > MAX_ENTRY_BYTES:
            return  # (the pipeline cuts validation errors to fit; nothing else is so long)
        index = self._prune(partition)
        shard_no = offset // SHARD_OFFSETS
        key = self.key_of(partition, shard_no * SHARD_OFFSETS)
        shard = self.table.get(key)
        if not isinstance(shard, dict) or not isinstance(shard.get("kept"), dict):
            shard = {"kept": {}}
        # In place: the batch writes the record once, serialised when the batch ends.
        shard["kept"][str(offset)] = entry
        self.table[key] = shard
        if shard_no not in index["shards"]:
            index["shards"].append(shard_no)
            self.table[self.index_key(partition)] = index

    def _prune(self, partition: int) -> dict[str, Any]:
        """The partition's index, its shards the committed offset has passed dropped
        when it has moved since the last prune (kept in the index: it survives recovery
        and hand-overs); the single record of a version before too, once passed."""
        index = self.table.get(self.index_key(partition))
        if not isinstance(index, dict) or not isinstance(index.get("shards"), list):
            index = {"floor": -1, "shards": []}
        floor = self._committed(partition)
        if floor <= index["floor"] or not self.may_drop():
            return index  # (not now: a later prune drops what the index still names)
        index["floor"] = floor
        done = floor // SHARD_OFFSETS  # shards before it hold committed offsets only
        for shard_no in [n for n in index["shards"] if n < done]:
            self._drop(self.key_of(partition, shard_no * SHARD_OFFSETS))
        index["shards"] = [n for n in index["shards"] if n >= done]
        legacy = self.table.get(self.key(partition))
        if legacy is not None:
            kept = legacy.get("kept") if isinstance(legacy, dict) else None
            if not isinstance(kept, dict) or all(_offset(o) < floor for o in kept):
                self._drop(self.key(partition))
        self.table[self.index_key(partition)] = index
        return index

    def _drop(self, key: str) -> None:
        if key in self.table:  # (a table with a default answers any key: not a pop)
            del self.table[key]
            self.dropped += 1


def _entry_in(record: Any, offset: int) -> dict[str, Any] | None:
    """The entry a record keeps at ``offset`` (None for none, or one of another shape)."""
    if not isinstance(record, dict):
        return None
    kept = record.get("kept")
    entry = kept.get(str(offset)) if isinstance(kept, dict) else None
    if not isinstance(entry, dict) or not isinstance(entry.get("data"), dict):
        return None
    return entry


def _offset(text: Any) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        return -1


_PARKED = "parked:"


def _tag(command_id: str) -> str:
    """A command id as kept: short whatever the id's length."""
    return hashlib.blake2b(command_id.encode(), digest_size=8).hexdigest()


def _size(offset: int, entry: dict[str, Any]) -> int:
    """Bytes an entry adds to the record as JSON: itself, its key and separators."""
    return len(orjson.dumps(entry)) + len(str(offset)) + 8

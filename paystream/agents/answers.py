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
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, MutableMapping
from typing import Any

import orjson

__all__ = ["RecordAnswers"]

log = logging.getLogger(__name__)

# Rejections kept per partition at most, by count and by size. Only uncommitted records
# come again (a batch is at most 500 commands and offsets are committed every second),
# and the record must stay well under the broker's 1 MiB (a larger one would fail its
# batch on every redelivery, worker after worker). Past either, and for one rejection
# larger than ``MAX_ENTRY_BYTES`` (validation errors are cut to fit: see the pipeline's
# ``VALIDATION_ERRORS_SHOWN``), a rejection is not kept: its redelivery is decided
# afresh, as before.
MAX_KEPT = 800
MAX_BYTES = 256 * 1024
MAX_ENTRY_BYTES = 4096


class RecordAnswers:
    """Per partition, the rejection data of records not yet committed, by offset.

    The value under :meth:`key` is ``{"floor": offset pruned to, "bytes": size of the
    entries, "kept": {offset: {"id": tag, "data": rejection, "n": size}}}``.
    """

    def __init__(
        self, table: MutableMapping[str, Any], committed: Callable[[int], int] | None
    ) -> None:
        self.table = table  # changelog-backed, co-partitioned with the commands topic
        self._committed = committed or (lambda partition: -1)
        self._full_logged: set[int] = set()

    @staticmethod
    def key(partition: int) -> str:
        # No tenant id holds a NUL (the table's other keys are "{tenant}:limits").
        return f"answers\x00{partition}"

    def _state(self, partition: int) -> dict[str, Any]:
        state = self.table.get(self.key(partition))
        if not isinstance(state, dict) or not isinstance(state.get("kept"), dict):
            # None yet (or not in this shape: nothing to answer from, start afresh).
            return {"floor": -1, "bytes": 0, "kept": {}}
        return state

    def kept(self, partition: int, offset: int, command_id: str) -> dict[str, Any] | None:
        """The rejection data this very record was answered with, if it was kept."""
        if offset < 0:
            return None
        entry = self._state(partition)["kept"].get(str(offset))
        if entry is None or entry["id"] != _tag(command_id):
            return None
        return dict(entry["data"])

    def parked(self, partition: int, offset: int, command_id: str) -> dict[str, Any] | None:
        """What :meth:`keep_parked` kept for this very record, if anything."""
        if offset < 0:
            return None
        entry = self._state(partition)["kept"].get(str(offset))
        if entry is None or entry["id"] != _PARKED + _tag(command_id):
            return None
        return dict(entry["data"])

    def kept_or_parked(
        self, partition: int, offset: int, command_id: str
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """``(kept(...), parked(...))``, from one lookup of the partition's state: the
        pipeline asks both of every command. Safe as one: both read the one entry kept at
        the offset and match its tag against the command's, ``kept`` as is and ``parked``
        with its prefix, so at most one of them matches; the tag is hashed only when
        there is an entry (as ``kept`` does). Tests compare it with the two calls."""
        if offset < 0:
            return None, None
        entry = self._state(partition)["kept"].get(str(offset))
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
        return _size(10**18, {"id": "x" * 16, "data": data, "n": 10**5}) <= MAX_ENTRY_BYTES

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
        state = self._state(partition)
        _prune(state, self._committed(partition))
        entry: dict[str, Any] = {"id": tag, "data": data}
        size = _size(offset, entry)
        if size > MAX_ENTRY_BYTES:
            return  # (the pipeline cuts validation errors to fit; nothing else is so long)
        kept = state["kept"]
        replaced = kept.pop(str(offset), None)
        if replaced is not None:
            state["bytes"] -= replaced["n"]
        if len(kept) >= MAX_KEPT or state["bytes"] + size > MAX_BYTES:
            if partition not in self._full_logged:
                self._full_logged.add(partition)
                log.warning(
                    "partition %d: %d rejections (%d bytes) not yet committed; more are "
                    "not kept for redeliveries until offsets are committed",
                    partition,
                    len(kept),
                    state["bytes"],
                )
            self.table[self.key(partition)] = state  # (what the prune dropped)
            return
        self._full_logged.discard(partition)
        entry["n"] = size
        # In place: the batch writes the record once, serialised when the batch ends.
        kept[str(offset)] = entry
        state["bytes"] += size
        self.table[self.key(partition)] = state


def _prune(state: dict[str, Any], floor: int) -> None:
    """Drop what the partition's committed offset has passed, when it has moved since
    the last prune (kept in the state: it survives recovery and hand-overs)."""
    if floor <= state["floor"]:
        return
    state["floor"] = floor
    kept = state["kept"]
    # Not only the oldest: tenants of a batch run concurrently, so offsets come out of order.
    for offset in [o for o in kept if int(o) < floor]:
        state["bytes"] -= kept.pop(offset)["n"]


_PARKED = "parked:"


def _tag(command_id: str) -> str:
    """A command id as kept: short whatever the id's length."""
    return hashlib.blake2b(command_id.encode(), digest_size=8).hexdigest()


def _size(offset: int, entry: dict[str, Any]) -> int:
    """Bytes an entry adds to the record as JSON: itself, its key and separators, its
    own size field."""
    return len(orjson.dumps(entry)) + len(str(offset)) + 16

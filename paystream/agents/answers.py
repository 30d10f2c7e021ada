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
# batch on every redelivery, worker after worker). Past either, a rejection is not kept
# (its redelivery is decided afresh, as before).
MAX_KEPT = 800
MAX_BYTES = 256 * 1024
# A validation error's list of errors is not kept past this size: the redelivered record,
# the same bytes, gives the same errors again when validated (see ``REVALIDATE``).
MAX_ENTRY_BYTES = 1024
# Kept instead of a validation error too large to keep: "validate the record again".
REVALIDATE = "revalidate"


class RecordAnswers:
    """Per partition, the rejection data of records not yet committed, by offset."""

    def __init__(
        self, table: MutableMapping[str, Any], committed: Callable[[int], int] | None
    ) -> None:
        self.table = table  # changelog-backed, co-partitioned with the commands topic
        self._committed = committed or (lambda partition: -1)
        self._floors: dict[int, int] = {}  # the committed offset last pruned to
        self._full_logged: set[int] = set()

    @staticmethod
    def key(partition: int) -> str:
        # No tenant id holds a NUL (the table's other keys are "{tenant}:limits").
        return f"answers\x00{partition}"

    def kept(self, partition: int, offset: int, command_id: str) -> dict[str, Any] | None:
        """The rejection data this very record was answered with, if it was kept
        (``{REVALIDATE: True}``: a validation error, to be found again)."""
        if offset < 0:
            return None
        state = self.table.get(self.key(partition))
        entry = None if state is None else state["kept"].get(str(offset))
        if entry is None or entry["id"] != _tag(command_id):
            return None
        return {REVALIDATE: True} if entry.get(REVALIDATE) else dict(entry["data"])

    def keep(self, partition: int, offset: int, command_id: str, data: dict[str, Any]) -> None:
        """Keep a rejection for the record's redeliveries (a record not from Kafka has
        none); what is committed already is dropped."""
        if offset < 0:
            return
        key = self.key(partition)
        state = self.table.get(key) or {"bytes": 0, "kept": {}}
        self._prune(state, partition)
        entry: dict[str, Any] = {"id": _tag(command_id), "data": data}
        size = _size(offset, entry)
        if size > MAX_ENTRY_BYTES:
            if data.get("reason") != "validation_error":
                return  # (a message that long is not worth its room)
            entry = {"id": entry["id"], REVALIDATE: True}
            size = _size(offset, entry)
        if len(state["kept"]) >= MAX_KEPT or state["bytes"] + size > MAX_BYTES:
            if partition not in self._full_logged:
                self._full_logged.add(partition)
                log.warning(
                    "partition %d: %d rejections (%d bytes) not yet committed; more are "
                    "not kept for redeliveries until offsets are committed",
                    partition,
                    len(state["kept"]),
                    state["bytes"],
                )
            return
        self._full_logged.discard(partition)
        entry["n"] = size
        # In place: the batch writes the record once, serialised when the batch ends.
        state["kept"][str(offset)] = entry
        state["bytes"] += size
        self.table[key] = state

    def _prune(self, state: dict[str, Any], partition: int) -> None:
        """Drop what the partition's committed offset has passed (oldest first: records
        come in offset order), once per move of that offset."""
        floor = self._committed(partition)
        if self._floors.get(partition) == floor:
            return
        self._floors[partition] = floor
        kept = state["kept"]
        for offset in list(kept):
            if int(offset) >= floor:
                break
            state["bytes"] -= kept.pop(offset)["n"]


def _tag(command_id: str) -> str:
    """A command id as kept: short whatever the id's length."""
    return hashlib.blake2b(command_id.encode(), digest_size=8).hexdigest()


def _size(offset: int, entry: dict[str, Any]) -> int:
    """Bytes an entry adds to the record as JSON: itself, its key and separators, its
    own size field."""
    return len(orjson.dumps(entry)) + len(str(offset)) + 16

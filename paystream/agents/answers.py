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

__all__ = ["RecordAnswers"]

log = logging.getLogger(__name__)

# Rejections kept per partition at most. Only uncommitted records come again (a batch is
# at most 500 commands and offsets are committed every second), and the record must stay
# well under the changelog's 512 KiB (a message is at most a few hundred bytes). Past it,
# a rejection is not kept (its redelivery is decided afresh, as before).
MAX_KEPT = 800


class RecordAnswers:
    """Per partition, the rejection data of records not yet committed, by offset."""

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

    def kept(self, partition: int, offset: int, command_id: str) -> dict[str, Any] | None:
        """The rejection data this very record was answered with, if it was kept."""
        if offset < 0:
            return None
        state = self.table.get(self.key(partition))
        entry = None if state is None else state.get(str(offset))
        if entry is None or entry["id"] != _tag(command_id):
            return None
        return dict(entry["data"])

    def keep(self, partition: int, offset: int, command_id: str, data: dict[str, Any]) -> None:
        """Keep a rejection for the record's redeliveries (a record not from Kafka has
        none); what is committed already is dropped."""
        if offset < 0:
            return
        key = self.key(partition)
        floor = self._committed(partition)
        # A new mapping each time: changelog values are serialised at the end of the batch.
        state = {o: e for o, e in (self.table.get(key) or {}).items() if int(o) >= floor}
        if len(state) >= MAX_KEPT:
            if partition not in self._full_logged:
                self._full_logged.add(partition)
                log.warning(
                    "partition %d: %d rejections not yet committed; more are not kept "
                    "for redeliveries until offsets are committed",
                    partition,
                    len(state),
                )
            return
        self._full_logged.discard(partition)
        state[str(offset)] = {"id": _tag(command_id), "data": data}
        self.table[key] = state


def _tag(command_id: str) -> str:
    """A command id as kept: short whatever the id's length."""
    return hashlib.blake2b(command_id.encode(), digest_size=8).hexdigest()

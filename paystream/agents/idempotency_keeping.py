"""A worker's idempotency records: written, judged live or expired, purged, scrubbed.

A record is judged as of when its command reached the broker (``judged_as_read``), as a
provider judges a key by when its request arrived; the command pipeline
(``CommandProcessor``) builds on this for everything else it does with them.
"""

from __future__ import annotations

import bisect
import hashlib
from collections import deque
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import orjson

from paystream.dlq import stale_after_ms
from paystream.settings import Settings
from paystream.streams.commands import COMMANDS, CommandData
from paystream.tables.commands_view import command_id_key as _command_id_key
from paystream.tables.records import (
    IdempotencyRecord,
    IdempotencyState,
    StoredOutcome,
    scrub_customer_outcome,
)

# Idempotency states of a command let through and not answered, and as stored.
LET_THROUGH = (IdempotencyState.IN_FLIGHT, IdempotencyState.PARKED)
LET_THROUGH_VALUES = frozenset({IdempotencyState.PARKED.value, IdempotencyState.IN_FLIGHT.value})

# What stands for the request hash of a command about a customer since erased.
ERASED_HASH = "erased"

# The broker time (s) of the command record being handled, in its tenant's task: an
# idempotency record is judged live or expired as of when its command reached the
# broker, not when it is read (see IdempotencyKeeping._expiry_now).
_READ_AT: ContextVar[float | None] = ContextVar("paystream_read_at", default=None)


@contextmanager
def judged_as_read(timestamp_ms: int) -> Iterator[None]:
    """Idempotency records judged as of a command record's broker time meanwhile."""
    token = _READ_AT.set(timestamp_ms / 1000 if timestamp_ms > 0 else None)
    try:
        yield
    finally:
        _READ_AT.reset(token)


class IdempotencyKeeping:
    """The idempotency table with its expiry queues; one per worker, as its pipeline."""

    def __init__(self, settings: Settings, idempotency: MutableMapping[str, Any]) -> None:
        self.settings = settings
        self.idempotency = idempotency
        # Tenants read from more than one partition: another's unread records may be
        # older than the last one read here (their purge gives the sweep's grace).
        self._split_tenants: set[str] = set()
        # Per tenant, (expires_at, key) in write order, which is expiry order: the
        # idempotency window is fixed, so purging only ever looks at the front.
        self._expiring: dict[str, deque[tuple[float, str]]] = {}
        # Tenants whose records already in the table (recovered) are queued too: their
        # queue may exist before that (a command of theirs ran first), so not the same.
        self._seeded: set[str] = set()
        # Id pointer → the key of the parked or in-flight record it names, as the last
        # scan found (pointers written before they lasted as long as such records).
        self._parked_ids: dict[str, str] = {}
        self._expiry_seeded = False
        # The latest time idempotency records are judged expired by (None: this
        # process's clock alone): the command agent keeps it a little past the broker's
        # newest command time, so that a worker whose clock runs ahead (by less than the
        # day that stops its deletes) neither purges nor reads as expired records of the
        # window's last hours (review finding: a retry an hour on ran as a new request).
        self.expiry_clock_cap: float | None = None

    def _remember(self, key: str, record: dict[str, Any]) -> None:
        """Write an idempotency record and queue it for deletion when it expires."""
        self.idempotency[key] = record
        # (``partition``: the tenant id, as ``split(":", 1)[0]``, without the list; the
        # tenant's queue made only when it has none, not a deque per write for setdefault)
        tenant_id = key.partition(":")[0]
        queue = self._expiring.get(tenant_id)
        if queue is None:
            queue = self._expiring[tenant_id] = deque()
        entry = (record["expires_at"], key)
        if queue and queue[-1][0] > entry[0]:
            # After a parked record (kept long, see _parked_until): in its place, as the
            # purge only ever looks at the front (review finding: it held back every
            # record written after it).
            bisect.insort(queue, entry)
        else:
            queue.append(entry)

    def purge_expired(
        self, tenant_id: str, now: float, limit: int = 1000, read_at: float | None = None
    ) -> int:
        """Delete up to ``limit`` of the tenant's expired idempotency records.

        Called while one of the tenant's commands is the current event, so the tombstones
        land on the tenant's changelog partition. Records written before this process
        started are found by one scan of the table the first time (again after
        partitions move). Idle tenants' records go with the retention sweep
        (idempotency_expired). ``read_at``: the broker time of the tenant's last command
        handled; the records its successors, redelivered, may be answered from stay (on
        its partition: a tenant split over partitions gets the sweep's grace, as another
        partition's unread records may be older; review finding).
        """
        if tenant_id in self._split_tenants:
            timely = self._timely_since(now)
            read_at = timely if read_at is None else min(read_at, timely)
        now = self._expiry_now(now, read_at)
        self._seed_expiry_once(tenant_id)
        queue = self._expiring.get(tenant_id)
        purged = 0
        while queue and queue[0][0] <= now and purged < limit:
            _, key = queue.popleft()
            raw = self.idempotency.get(key)
            # The key may have been written again since (a retry): only expired ones go.
            if raw is not None and float(raw.get("expires_at", 0)) <= now:
                if self._kept_for_its_parked_record(key, raw):
                    continue
                del self.idempotency[key]
                purged += 1
        return purged

    def idempotency_expired(self, key: Any, raw: Any, now: float) -> bool:
        """For the retention sweep, which walks every tenant's records, idle tenants'
        too: would the purge delete this one now? (The purge runs on a tenant's own
        traffic only: an idle or removed tenant's records, stored outcomes with their
        customer snapshots among them, stayed for ever; review finding.)

        Judged as of a timely command's broker time at the latest (``_expiry_now``): the
        sweep may run before a crash's redelivered records are read again, and one of
        them, taken before a record expired, is answered from it."""
        now = self._expiry_now(now, self._timely_since(now))
        if not isinstance(raw, dict) or float(raw.get("expires_at", 0)) > now:
            return False
        # The scan that finds which id pointers parked records still need (and queues
        # the records this process did not write) comes first.
        tenant = str(key).partition(":")[0]
        self._seed_expiry_once(tenant)
        if self._kept_for_its_parked_record(str(key), raw):
            return False
        # Its queue's front, of keys gone (this one goes now): an idle tenant's queue
        # would otherwise hold an entry per record it wrote in its last window, for good.
        queue = self._expiring.get(tenant)
        while (
            queue
            and queue[0][0] <= now
            and (queue[0][1] == key or queue[0][1] not in self.idempotency)
        ):
            queue.popleft()
        if queue is not None and not queue:
            del self._expiring[tenant]
        return True

    def rescan_expiry(self) -> None:
        """Partitions are moving: records recovered for them (written by another worker
        meanwhile) are found by a fresh scan at the next purge."""
        self._expiry_seeded = False
        self._seeded.clear()
        self._parked_ids.clear()
        # Rebuilt by that scan from what the table holds: queued keys of partitions this
        # worker only stands by for (their owner purges them) were never popped, and the
        # queues grew with every rebalance (review finding).
        self._expiring.clear()

    def _seed_expiry_once(self, tenant_id: str) -> None:
        """Find the records written before this process started (or before it was given
        its partitions): one scan of the table, after which every record is queued (its
        writes here queue it). A scan per tenant first seen later (one of the whole
        table each, a second at 300,000 records, inside a batch) found nothing this one
        had not: partitions moving bring a fresh scan (rescan_expiry), and no purge runs
        before their recovery (review finding)."""
        if not self._expiry_seeded:
            self._seed_expiry(None)
            self._expiry_seeded = True

    def _parked_record_until(self, key: str, raw: dict[str, Any]) -> float | None:
        """Until when the id pointer ``raw`` (at ``key``) must be kept for the parked
        record the scan found for its request, if longer than its own expiry."""
        named = self._parked_ids.get(key)
        if named is None:
            return None
        parked = self.idempotency.get(named)
        if (
            parked is None
            or parked.get("state") not in LET_THROUGH_VALUES
            or parked.get("command_id") != raw.get("command_id")
        ):
            return None
        until = float(parked.get("expires_at", 0))
        return until if until > float(raw.get("expires_at", 0)) else None

    def _kept_for_its_parked_record(self, key: str, raw: dict[str, Any]) -> bool:
        """An expired id pointer whose request is still parked under its key, as the scan
        found: kept as long as that record (written when ids' pointers expired a day
        after they were written: _keep_id_pointer keeps those of later parks)."""
        until = self._parked_record_until(key, raw)
        if until is None:
            return False
        named = self._parked_ids[key]
        self._remember(key, {**raw, "key": named.split(":", 1)[1], "expires_at": until})
        return True

    def _seed_expiry(self, tenant_id: str | None) -> None:
        found: dict[str, list[tuple[float, str]]] = {}
        prefix = f"{tenant_id}:" if tenant_id else ""
        for key, raw in list(self.idempotency.items()):
            if raw is None or not str(key).startswith(prefix):
                continue
            tenant, _, idem = str(key).partition(":")
            found.setdefault(tenant, []).append((float(raw.get("expires_at", 0)), str(key)))
            command_id = raw.get("command_id")
            if (
                raw.get("state") in LET_THROUGH_VALUES
                and isinstance(command_id, str)
                and command_id != idem
            ):
                # A request let through under a key of its own: its id's pointer must
                # last as long as it (_kept_for_its_parked_record).
                self._parked_ids[_command_id_key(tenant, command_id)] = str(key)
        for tenant, entries in found.items():
            # Merged in expiry order: the purge only ever looks at the front.
            queued = self._expiring.get(tenant) or ()
            self._expiring[tenant] = deque(sorted({*queued, *entries}))
            self._seeded.add(tenant)
        if tenant_id is not None:
            self._expiring.setdefault(tenant_id, deque())
            self._seeded.add(tenant_id)

    def _scrub_after_erasure(
        self, tenant_id: str, outcome: StoredOutcome, at: Sequence[int] | None
    ) -> None:
        """A replayed erasure scrubs again: a crash may have kept the customer's table
        write but lost the batch's idempotency writes, which held the old snapshots.
        ``at``: the erasure's own record ([partition, offset]), as first run."""
        customer_id = outcome.data.get("entity_id")
        if outcome.type == "customer.erased" and isinstance(customer_id, str):
            self._scrub_idempotency(tenant_id, customer_id, at)

    def _scrub_idempotency(
        self, tenant_id: str, customer_id: str, at: Sequence[int] | None
    ) -> None:
        """Erasure reaches the stored outcomes too: they hold the customer's old snapshot.
        Not those of commands read after the erasure's record ``at`` (a replayed erasure
        scrubbed them too: a later command's answers, of data given since, changed under
        a resend; review finding)."""
        prefix = f"{tenant_id}:"
        for key, raw in list(self.idempotency.items()):
            if raw is None or not str(key).startswith(prefix):
                continue
            if raw.get("customer_id") == customer_id and raw["request_hash"] != ERASED_HASH:
                # A rejected command about the customer (its create sent again, an update
                # after a delete, one its provider refused): its hash holds personal
                # data, and a provider's message may quote it.
                if not _after(raw, at):
                    self._erase_request_hash(tenant_id, key, _without_provider_text(raw))
                continue
            if not raw.get("outcome") or _after(raw, at):
                continue
            record = IdempotencyRecord.model_validate(raw)
            assert record.outcome is not None
            scrubbed = scrub_customer_outcome(record.outcome, customer_id)
            if scrubbed != record.outcome:
                # Its request hash goes too: a hash of the personal data, which a guessed
                # email and name could be checked against. (A replay of the command now
                # conflicts rather than answering.)
                record.outcome = scrubbed
                self._erase_request_hash(tenant_id, key, record.model_dump(mode="json"))

    def _erase_request_hash(self, tenant_id: str, key: str, raw: dict[str, Any]) -> None:
        """Rewrite an idempotency record (and its command id's) without its request hash."""
        self.idempotency[key] = {**raw, "request_hash": ERASED_HASH}
        named_key = _command_id_key(tenant_id, str(raw["command_id"]))
        named = self.idempotency.get(named_key)
        if named is not None and named_key != key:
            self.idempotency[named_key] = {**named, "request_hash": ERASED_HASH}

    def _idempotency_record(self, key: str, now: float) -> IdempotencyRecord | None:
        raw = self.idempotency.get(key)
        if raw is None:
            return None
        if "\x1f" in key and "state" not in raw:
            # A pointer ("<tenant>:\x1fid:<id>", "...\x1fcreate:..."), named by a key sent
            # to reach it: no idempotency record (read as one it failed validation, a
            # dead letter; review finding). (A record a version taking such keys wrote
            # under one is still one.)
            return None
        record = IdempotencyRecord.model_validate(raw)
        return None if record.expires_at < self._expiry_now(now) else record

    def _kept_for_a_retry(self, key: str, now: float) -> None:
        """A finished record that answered another record (a client's retry under the
        key, or a resend): kept a window from now. Expiring a window after the first
        command, it left the retry, resent or redelivered once it had expired (the retry
        came a minute before), nothing to be answered from: run as a new request, under
        a key the provider may have forgotten too, it charged again (found by time-travel
        explorations). Longer than the provider keeps the key only in that a later
        request under it is answered from here, never sent."""
        raw = self.idempotency.get(key)
        until = now + self.settings.idempotency_ttl_seconds
        if isinstance(raw, dict) and float(raw.get("expires_at", 0)) < until:
            self._remember(key, {**raw, "expires_at": until})

    def _expiry_now(self, now: float, read_at: float | None = None) -> float:
        """The time idempotency records are judged expired by: ``now`` no later than the
        cap, and no later than the broker time of the command being handled (``read_at``
        by default the current record's), if that is under a day old.

        Broker time, as a provider judges a key by when its request arrived: a retry
        taken a minute before its key's record expired, and redelivered after a crash
        that lost its whole batch (the record's longer keep with it), or just read late
        from a backlog, is answered from the record; judged by the clock, it ran as a new
        request under a key the provider may have forgotten too, and charged again (found
        by time-travel explorations). No earlier than a timely command's (the late-park's
        cut-off): one read later than that is parked if it moves money
        (_read_past_provider_window), and a producer's clock far behind on a create-time
        topic must not keep records for ever."""
        cap = self.expiry_clock_cap
        if cap is not None and cap < now:
            now = cap
        if read_at is None:
            read_at = _READ_AT.get()
        if read_at is not None and read_at < now:
            timely = self._timely_since(now)
            now = read_at if read_at > timely else timely
        return now

    def _timely_since(self, now: float) -> float:
        """The oldest broker time a command read at ``now`` is timely for: the late
        park's cut-off (_read_past_provider_window), as seconds."""
        return now - stale_after_ms(self.settings) / 1000


# What a provider's message about an erased customer reads as, answered again.
ERASED_PROVIDER_TEXT = (
    "the provider refused the request (its message went with the customer's data)"
)


def _without_provider_text(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with a provider's refusal text replaced: it may quote what was sent (Stripe:
    "Invalid email address: ..."). Its code and the rejection's reason stay."""
    outcome = raw.get("outcome")
    if not isinstance(outcome, dict) or not isinstance(outcome.get("data"), dict):
        return raw
    data: dict[str, Any] = outcome["data"]
    error = data.get("error")
    if not isinstance(error, dict):
        return raw  # (no provider's answer: a rejection of paystream's own)
    text = ERASED_PROVIDER_TEXT
    data = {**data, "message": text, "error": {**error, "message": text}}
    return {**raw, "outcome": {**outcome, "data": data}}


def _after(raw: Mapping[str, Any], at: Sequence[int] | None) -> bool:
    """Whether an idempotency record was written by a command read after the record
    ``at`` ([partition, offset]) of the commands topic (a tenant's are on one partition,
    read in order). Not known (no source on either): not after."""
    source = raw.get("source")
    if at is None or not isinstance(source, list) or len(source) != 2:
        return False
    return bool(source[0] == at[0] and isinstance(source[1], int) and source[1] > at[1])


def request_hash(command_type: str, data: CommandData | dict[str, Any]) -> str:
    """SHA-256 of the JSON of ``[command_type, data]``, keys sorted (``data``: the
    command's validated data, or its ``model_dump(mode="json")``).

    A validated model is written straight from its fields, without the dump: a command
    model's ``__dict__`` is its fields and nothing else (extra="forbid"), each a str,
    int, bool, None, StrEnum member or dict of str to str (tests/agents/test_pipeline.py
    holds every command model to that), and orjson writes those exactly as the dump has
    them (an enum member as its value): the same bytes, hashed."""
    if isinstance(data, dict):
        fields = data
        model = COMMANDS.get(command_type)
        omits = model.HASH_OMITS_NONE if model is not None else frozenset()
    else:
        model = type(data)
        fields = data.model_dump(mode="json") if model.HASH_BY_DUMP else data.__dict__
        omits = model.HASH_OMITS_NONE
    if omits:
        # Fields added since the command's first release, left out while unset: its
        # earlier requests keep their hashes (CommandData.HASH_OMITS_NONE). (A copy
        # made only when one is there to leave out: most commands carry none of them.)
        kept = fields
        for name in omits:
            if name in kept and kept[name] is None:
                if kept is fields:
                    kept = dict(fields)
                del kept[name]
        fields = kept
    canonical = orjson.dumps([command_type, fields], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()

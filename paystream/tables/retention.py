"""Entity retention: settled entities leave the tables once nothing can act on them.

Without it the entity tables, and their compacted changelogs, keep every payment,
refund, dispute and erased customer ever made: a worker's memory store and a new
replica's recovery grow with all the traffic ever served. The ledger (PostgreSQL) is the
record of history; the tables hold what commands may still act on.

An entity is *settled* when no command can bring it back into use: every payment, refund
and dispute, an erased customer, a detached payment method, or one whose customer is
settled, or deleted, and as old; a canceled subscription; a paid or void invoice once
its subscription is settled and as old, never before (while the subscription lives its
provider lists the invoice again at every read, the newest 24, and a read that found it
missing recorded it again as new, its revenue counted twice: review h73u). A customer
merely deleted stays: erasure may still be asked for, and needs the record. But once
unchanged for the retention it stays without their personal data (in it and in the
outcomes it remembers: what an erasure leaves, but for the mark), so that deleting a
customer does not keep their data in the tables for ever; an erasure asked for later
still shreds the ledger's copy. A live customer or their attached payment method is
named by new payments however long it sits unchanged, so it stays.
A settled entity whose last change (the newest ``at`` among the outcomes it remembers)
is older than ``PAYSTREAM_ENTITY_RETENTION_SECONDS`` is deleted; one with no ``at`` at
all (written by a version before it) is kept. A command naming a deleted entity is
answered ``not_found``.

The sweep deletes inside a command batch, so each tombstone is produced and awaited
with that batch's records (tables/changelog.py) and lands on the entity's changelog
partition in order with its writes; it only ever deletes keys of partitions this worker
serves (actives, not standbys). Each batch examines at most ``budget`` keys and spends
at most ``budget_seconds`` on them (a RocksDB key is read and decoded, ~15 µs), so a
sweep adds a bounded, small cost per batch; a pass over every table rests ``rest_seconds``
before the next begins.

A deletion whose batch is never delivered (a crash, a batch a hand-over gave up on)
leaves the entity in the changelog. The memory store gets it back with its next
recovery and the next pass deletes it again; a RocksDB store has dropped it already, so
it stays in the changelog until a worker rebuilds that partition from it (a new replica,
a store past PAYSTREAM_TABLE_STORE_MAX_AGE_SECONDS), whose sweep then deletes it.

An entity a parked command still needs is *held*: a command let through to its
provider and parked (its answer lost, say) marks the entities it reads with
``held_until`` (HOLD_FIELD: its idempotency key's digest → until when), written at
park time (again if that park is redelivered: agents/entity_holds.py), and none is
expired while a mark is ahead of the clock: swept, its re-drive was parked
``not_found`` for good, the refund the provider made never recorded (review h68p).
The mark is bookkeeping, not a change: ``last_change`` does not read it, outcomes and
views do not show it. It ends at the provider's key
window plus a margin, or when the command finishes (its idempotency record names what
it holds).

Two rules keep a deleted entity from being made again by a command about the old one:
a command whose record or ``time`` is older than the retention less a day is refused
``past_retention`` (pipeline.py: read again that late, a create would charge again),
and the retention is at least 30 days, far past any idempotency window. An id a
producer chose itself, reused for a new entity after the old one left, names a new
entity (README, Retention).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from faust.stores.memory import Store as MemoryStore

from paystream import metrics
from paystream.tables.changelog import at_partition
from paystream.tables.records import CUSTOMER_PII_FIELDS, without_personal_data

__all__ = [
    "HOLD_FIELD",
    "UNREADABLE",
    "RetentionSweep",
    "expired",
    "is_held",
    "last_change",
    "minimized",
    "settled",
]

log = logging.getLogger(__name__)

# Keys a batch examines at most: a few hundred dict lookups, well under a millisecond.
SWEEP_BUDGET = 256
# And the time it spends on them at most (checked every _CLOCK_EVERY keys).
SWEEP_BUDGET_SECONDS = 0.001
_CLOCK_EVERY = 32
# Rest between passes over the tables: retention is counted in days.
PASS_REST_SECONDS = 600.0
# Keys read from one RocksDB partition at a time (no iterator is kept across batches:
# its partition may be closed by a rebalance meanwhile).
_ROCKSDB_CHUNK = 256


def last_change(record: Mapping[str, Any]) -> float | None:
    """When the entity last changed: the newest ``at`` of the outcomes it remembers
    (the worker's clock, unix seconds); None when none says (an older version's)."""
    applied = record.get("applied")
    if not isinstance(applied, dict):
        return None
    newest: float | None = None
    for entry in applied.values():
        at = entry.get("at") if isinstance(entry, dict) else None
        if isinstance(at, int | float) and not isinstance(at, bool):
            newest = at if newest is None or at > newest else newest
    return newest


# The field of an entity record holding it against the sweep for parked commands:
# {idempotency key digest: until, unix seconds} (see the module's docstring).
HOLD_FIELD = "held_until"


def is_held(record: Mapping[str, Any], now: float) -> bool:
    """Does a parked command hold the entity at ``now``? (A mark not readable holds it.)"""
    marks = record.get(HOLD_FIELD)
    if not isinstance(marks, dict):
        return False
    for until in marks.values():
        if not isinstance(until, int | float) or isinstance(until, bool) or until > now:
            return True
    return False


def settled(record: Mapping[str, Any]) -> bool:
    """No command can bring it back into use (see the module's docstring)."""
    kind = record.get("entity_type")
    if kind == "customer":
        # Erased only: a customer merely deleted may still be erased (the right to
        # erasure outlives any retention), and erasure needs the record: removed, it was
        # answered not_found and the ledger never shredded their data (review finding).
        return bool(record.get("erased"))
    if kind == "payment_method":
        return record.get("attached") is False
    if kind == "subscription":
        # Canceled: nothing is billed again. One live is read back for renewals however
        # long it sits unchanged (a yearly one, say), so it stays.
        return record.get("status") == "canceled"
    if kind == "invoice":
        # A subscription's: never on its own, it goes with its subscription (see
        # ``expired``). A one-off invoice (invoice.create: its collection method set, no
        # subscription): paid or void, final.
        one_off = record.get("collection_method") is not None and not record.get("subscription_id")
        return one_off and _invoice_closed(record)
    if kind == "payout":
        # Canceled or failed: final. Paid: the bank may still return it for a few
        # business days (paid → failed), well within any retention (30 days at least):
        # unchanged that long, it is settled. Pending or in transit: live, kept.
        return record.get("status") in ("paid", "failed", "canceled")
    if kind == "tax_calculation":
        # Never changed once made; kept while a payment may name it (see ``expired``).
        return True
    # (A tax rate stays: payments' calculations and subscriptions name it, and it is
    # small; archived, it is applied to nothing new.)
    # (A transfer, as the payment it may come from: unchanged that long, settled.)
    return kind in ("payment", "refund", "dispute", "transfer")


def _invoice_closed(record: Mapping[str, Any]) -> bool:
    """Paid or void: an open (or uncollectible) invoice may yet be paid (the provider
    retries it, or its customer pays it)."""
    return record.get("status") in ("paid", "void")


# The entities judged with their owner, and the field naming it: a payment method with
# its customer, an invoice with its subscription.
OWNER_FIELD = {"payment_method": "customer_id", "invoice": "subscription_id"}


# What an owner lookup answers when the store cannot be read (the entity is kept).
UNREADABLE = object()


def expired(
    record: Any,
    now: float,
    retention_seconds: float,
    owner: Callable[[str], Any] | None = None,
) -> bool:
    """Settled, and unchanged for at least ``retention_seconds``. ``owner(id)`` reads the
    record of the entity's owner (OWNER_FIELD). A payment method still attached counts
    as settled once its customer has itself expired, or was deleted as long ago:
    deleting a customer leaves their methods attached, which would otherwise stay for
    ever. A paid or void invoice counts as settled only once its subscription has
    expired (canceled, and as old): while the subscription lives its provider lists the
    invoice at every read. The sweep walks methods before customers and invoices before
    subscriptions, so each is judged while its expired owner is still there. An owner
    not found keeps the entity: not found may be not readable here (a store closed by a
    rebalance, a tenant split across partitions); so does no ``owner`` to ask. One a
    parked command holds (``is_held``) is kept, and so are the entities it owns."""
    if not isinstance(record, dict) or is_held(record, now):
        return False
    if record.get("entity_type") == "tax_calculation" and not _calculation_expired(record, now):
        return False
    if not settled(record) and not _orphaned(record, now, retention_seconds, owner):
        return False
    changed = last_change(record)
    return changed is not None and changed + retention_seconds <= now


def _calculation_expired(record: Mapping[str, Any], now: float) -> bool:
    """A tax calculation past its ``expires_at``: no payment may name it any more (one not
    readable is kept)."""
    try:
        ends = _timestamp(record.get("expires_at"))
    except (TypeError, ValueError):
        return False
    return ends is not None and ends <= now


def _orphaned(
    record: dict[str, Any],
    now: float,
    retention_seconds: float,
    owner: Callable[[str], Any] | None,
) -> bool:
    kind = record.get("entity_type")
    field = OWNER_FIELD.get(str(kind))
    if owner is None or field is None:
        return False
    if kind == "invoice" and not _invoice_closed(record):
        return False
    held = owner(str(record.get(field) or ""))
    if held is UNREADABLE:
        return False
    if kind == "invoice":
        return expired(held, now, retention_seconds) or _past_listing(record, held)
    return expired(held, now, retention_seconds) or _deleted_for(held, now, retention_seconds)


# The longest a period of each interval can be, in days: an invoice this many periods
# (INVOICES_LISTED_MAX) before its subscription's current one is never listed again.
_PERIOD_DAYS_MAX = {"day": 1, "week": 7, "month": 31, "year": 366}


def _past_listing(record: Mapping[str, Any], held: Any) -> bool:
    """A live subscription's provider lists its newest INVOICES_LISTED_MAX invoices at
    every read: one whose period ended that many periods (at their longest) before the
    subscription's recorded current period began is never listed again, so no read can
    record it again (review h73x: a daily subscription's invoices otherwise stay for as
    long as it lives)."""
    from paystream.gateways.base import INVOICES_LISTED_MAX

    if not isinstance(held, dict):
        return False
    days = _PERIOD_DAYS_MAX.get(str(held.get("interval")))
    try:
        count = int(held.get("interval_count") or 1)
        started = _timestamp(held.get("current_period_start"))
        ended = _timestamp(record.get("period_end"))
    except (TypeError, ValueError):
        return False
    if days is None or started is None or ended is None:
        return False
    return ended + INVOICES_LISTED_MAX * count * days * 86400 <= started


def _timestamp(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    return datetime.fromisoformat(str(value)).timestamp()


def _deleted_for(record: Any, now: float, retention_seconds: float) -> bool:
    """A customer deleted (erased or not) and unchanged for ``retention_seconds``."""
    if not isinstance(record, dict) or record.get("entity_type") != "customer":
        return False
    changed = last_change(record)
    return (
        bool(record.get("deleted")) and changed is not None and (changed + retention_seconds <= now)
    )


def _minimized_already(record: dict[str, Any]) -> bool:
    """Its fields blank and no remembered outcome with a request hash: as
    without_personal_data leaves a record (a deleted customer's record keeps their
    fields, and every outcome it remembers has its hash, until then)."""
    if any(record.get(name) for name in CUSTOMER_PII_FIELDS):
        return False
    applied = record.get("applied") or {}
    return not any(isinstance(e, dict) and "hash" in e for e in applied.values())


def minimized(record: Any, now: float, retention_seconds: float) -> dict[str, Any] | None:
    """A customer deleted (not erased) and unchanged for ``retention_seconds``, as kept
    from then on: without their personal data (see the module's docstring); None when
    there is none left to take out, or it is no such customer."""
    if not _deleted_for(record, now, retention_seconds) or record.get("erased"):
        return None
    if _minimized_already(record):
        return None  # (every pass meets it again: no outcomes validated to find nothing)
    kept = without_personal_data(record)
    return None if kept == record else kept


class RetentionSweep:
    """Walks the entity tables a bounded number of keys per command batch."""

    def __init__(
        self,
        tables: Sequence[Any],
        retention_seconds: float,
        source_topic: str,
        actives: Callable[[], Collection[int]],
        *,
        budget: int = SWEEP_BUDGET,
        budget_seconds: float = SWEEP_BUDGET_SECONDS,
        rest_seconds: float = PASS_REST_SECONDS,
    ) -> None:
        self.tables = tables
        self.retention_seconds = retention_seconds
        self.source_topic = source_topic  # the commands topic: the tables' source
        self.actives = actives  # the commands-topic partitions this worker serves
        self.budget = budget
        self.budget_seconds = budget_seconds
        self.rest_seconds = rest_seconds
        self._walk: Iterator[tuple[Any, int, Any, Callable[[], Any]]] | None = None
        self._next_pass = 0.0
        self._pass_began = 0.0
        # The clock when the pass began: an owner (a customer, a subscription) is judged
        # at it, so one deleted in a pass had expired before its entities were walked,
        # earlier in the same pass, and they went with it (review h73x).
        self._pass_now = 0.0
        self._removed = 0
        # Keys the latest step deleted or minimised (their changelog records go with
        # the batch only: a batch given up with them is not dropped with the worker up).
        self.changed = 0
        self._warned: set[str] = set()
        # Other tables walked the same way, each with its own judge of an expired key,
        # ``judge(key, value, now)``: the idempotency records (pipeline.py), whose purge
        # otherwise ran only on their tenant's own traffic (review finding).
        self.expiring: list[tuple[Any, Callable[[Any, Any, float], bool]]] = []
        # Payment methods are judged with their customer, invoices with their
        # subscription (see ``expired``): the table each one's owner is read from.
        named = {t.name: t for t in tables}
        self._owners = {
            table: named[owners]
            for table, owners in (("payment_methods", "customers"), ("invoices", "subscriptions"))
            if owners in named
        }
        self._owning = {t.name for t in self._owners.values()}

    def step(self, now: float) -> int:
        """Examine up to ``budget`` keys (for up to ``budget_seconds``) and delete the
        expired ones; how many were.

        Call while a batch's changelog writes are collected (see the module's docstring).
        """
        self.changed = 0
        if self.retention_seconds <= 0 and not self.expiring:
            return 0
        if self._walk is None:
            if now < self._next_pass:
                return 0
            self._walk = self._keys()
            self._pass_began, self._removed = time.monotonic(), 0
            self._pass_now = now
        # As assigned now, at every step: a pass begun just before an assignment (the
        # batch a hand-over waited for ends in a step) went on deleting, on partitions
        # then another worker's, from a standby copy maybe far behind (review finding).
        actives = set(self.actives())
        judges = self._judges
        removed = 0
        stop_at = time.perf_counter() + self.budget_seconds
        for examined in range(self.budget):
            if examined % _CLOCK_EVERY == _CLOCK_EVERY - 1 and time.perf_counter() > stop_at:
                break
            item = next(self._walk, None)
            if item is None:
                self._finish_pass(now)
                break
            table, partition, key, current = item
            # Standby partitions are their active owner's to change.
            if partition not in actives:
                continue
            # Judged as it is now: a command may have changed it since the walk read it.
            value = current()
            judge = judges.get(table.name)
            if judge is not None:
                # Judged on the key's partition: a judge may write the key (the
                # idempotency purge extends a pointer its parked request still needs),
                # which goes to the current event's partition (review finding).
                with at_partition(self.source_topic, partition):
                    if value is UNREADABLE or not judge(key, value, now):
                        continue
                    del table[key]
                metrics.ENTITIES_EXPIRED.labels(table=table.name).inc()
                removed += 1
                self.changed += 1
                continue
            owner = self._owner_reader(table.name, partition, key)
            at = min(now, self._pass_now) if table.name in self._owning else now
            if not expired(value, at, self.retention_seconds, owner):
                kept = minimized(value, now, self.retention_seconds)
                if kept is not None:
                    with at_partition(self.source_topic, partition):
                        table[key] = kept
                    metrics.ENTITIES_MINIMIZED.labels(table=table.name).inc()
                    self.changed += 1
                continue
            with at_partition(self.source_topic, partition):
                del table[key]
            metrics.ENTITIES_EXPIRED.labels(table=table.name).inc()
            removed += 1
            self.changed += 1
            self._removed += 1
        return removed

    @property
    def _judges(self) -> dict[str, Callable[[Any, Any, float], bool]]:
        return {table.name: judge for table, judge in self.expiring}

    def _owner_reader(self, table: str, partition: int, key: Any) -> Callable[[str], Any] | None:
        """Reads an owner (a customer, a subscription) of the key's tenant, on the key's
        partition, as all the tenant's state is; None for a table whose entities have no
        owner, or without the owners' table."""
        owners = self._owners.get(table)
        if owners is None:
            return None
        tenant = str(key).partition(":")[0]
        return lambda owner_id: _read_in(owners, partition, f"{tenant}:{owner_id}")

    def restart(self) -> None:
        """Partitions are moving: begin a fresh pass over what this worker now holds."""
        self._walk = None
        self._next_pass = 0.0

    def _finish_pass(self, now: float) -> None:
        self._walk = None
        self._next_pass = now + self.rest_seconds
        if self._removed:
            log.info(
                "retention: %d settled entities unchanged for %.0f days left the tables "
                "(pass took %.1f s)",
                self._removed,
                self.retention_seconds / 86400,
                time.monotonic() - self._pass_began,
            )

    def _keys(self) -> Iterator[tuple[Any, int, Any, Callable[[], Any]]]:
        """(table, partition, key, a read of its value now) of every key held, table after
        table. Values are read from the store itself, not through the table (Faust's read
        of a RocksDB key not in its index probes every partition's database)."""
        entities = self.tables if self.retention_seconds > 0 else ()
        for table in (*entities, *(table for table, _ in self.expiring)):
            store = table.data
            if type(store) is MemoryStore:
                # A snapshot of the keys (the dict changes between batches; a list of
                # keys is quick to copy, ~5 ms a million); each key's partition as the
                # store tracks it (tables/changelog.py keeps it for every write).
                tracked, values = store._key_partition, store.data
                for key in list(tracked):
                    partition = tracked.get(key)
                    if partition is not None:  # (None: deleted meanwhile)
                        yield table, partition, key, functools.partial(values.get, key)
            elif _is_rocksdict(store):
                for partition in sorted(store._dbs):
                    for raw in _rocksdb_keys(store, partition):
                        read = functools.partial(_rocksdb_value, store, partition, raw)
                        yield table, partition, store._decode_key(raw), read
            elif type(store).__name__ not in self._warned:
                self._warned.add(type(store).__name__)
                log.warning(
                    "retention: the %s store cannot be walked; its entities are kept",
                    type(store).__name__,
                )


def _read_in(table: Any, partition: int, key: Any) -> Any:
    """``table``'s value for ``key`` on ``partition`` now (None: not there), or
    UNREADABLE for a store this module cannot read."""
    store = table.data
    if type(store) is MemoryStore:
        return store.data.get(key)
    if _is_rocksdict(store):
        return _rocksdb_value(store, partition, store._encode_key(key))
    return UNREADABLE


def _is_rocksdict(store: Any) -> bool:
    """Faust's RocksDB store on rocksdict (per-partition databases this module reads)."""
    return hasattr(store, "_dbs") and bool(getattr(store, "use_rocksdict", False))


def _rocksdb_value(store: Any, partition: int, raw_key: bytes) -> Any:
    """The key's value now, from its partition's database (None: not there), or
    UNREADABLE when that database is not open (closed by a rebalance)."""
    db = store._dbs.get(partition)
    if db is None:
        return UNREADABLE
    raw = db.get(raw_key)
    return None if raw is None else store._decode_value(raw)


def _rocksdb_keys(store: Any, partition: int) -> Iterator[bytes]:
    """A RocksDB partition's keys (as stored), read a chunk at a time with a fresh
    iterator that seeks past the last key read: none is held open across batches."""
    last: bytes | None = None
    while True:
        db = store._dbs.get(partition)
        if db is None:  # closed meanwhile (the partition moved)
            return
        chunk: list[bytes] = []
        it = db.iter()
        if last is None:
            it.seek_to_first()
        else:
            it.seek(last)
            if it.valid() and it.key() == last:
                it.next()
        while it.valid() and len(chunk) < _ROCKSDB_CHUNK:
            raw = it.key()
            if raw != store.offset_key:
                chunk.append(raw)
            it.next()
        del it
        if not chunk:
            return
        yield from chunk
        last = chunk[-1]

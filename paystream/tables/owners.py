"""Which records of an entity table belong to an entity: a payment method's, a
payment's, a subscription's or an invoice's customer, a refund's or a dispute's payment.
For ``customer.export``, which otherwise reads six whole tables per export (about 0.5 s
for three at a million records each: every tenant on the worker waits meanwhile, and a
tenant sending exports could hold them all).

Records made before an entity type was listed here need no backfill: the index holds
nothing across restarts or rebalances, and is built from the table itself (below).

An index, not the truth: built from the table on first use (again after each rebalance,
when partitions' tables may have been recovered or moved), then kept by the writes the
command agent makes (``note``). Keys are never taken out of it (a record deleted, or its
owner changed, stays listed until the next rebalance): readers check each record they
are given, so a stale entry costs a lookup, never a wrong answer. What it must never
miss is a record of an active partition written without ``note``: those change
otherwise only while partitions are recovered, during a rebalance (``generation``
changes with each, a rejoin that keeps the consumer generation too), which ends before
commands run again; while one is under way (``settled`` false) it is let go and
readers are told to scan. Standby partitions are written by recovery at any time, but
hold other tenants' records: a tenant's records are on its one partition (a tenant
split over partitions, which is alerted, gets from an index-served export the records
of the partition its command was read on, as a RocksDB store's reads give).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["OWNER_FIELDS", "OwnerIndex"]

# Entity type → the field naming its owner (the entity a record belongs to).
# (An invoice's customer is its subscription's, copied when it is recorded.)
OWNER_FIELDS = {
    "payment_method": "customer_id",
    "payment": "customer_id",
    "refund": "payment_id",
    "dispute": "payment_id",
    "subscription": "customer_id",
    "invoice": "customer_id",
}

_UNBUILT = object()
# Exports a consumer generation serves by scanning before it builds the index: a build
# costs about nine scans (measured at a million records a table: 0.4 s the three scans
# of an export, 3.7 s the three builds), so scanning until the scans have cost about as
# much (as in renting skis until the rent would have bought them) keeps the total within
# twice the best choice made knowing how many exports are coming.
SCANS_BEFORE_BUILD = 8


class OwnerIndex:
    """Per entity type, owner id → the key of the one record it owns, or a set of keys.

    By the owner's id alone, the tenant left in the keys (``"{tenant}:{id}"``, filtered
    when read): the index then holds the table's own key and id strings, and a set only
    for an owner of several records (composite keys and a set each took 19 s to build at
    a million records a table: three million sets and the collections they set off).

    Built only once a consumer generation has had ``SCANS_BEFORE_BUILD`` exports: a
    build reads the table as a scan does but hashes every owner id, about 1.2 s per
    million records (a scan ~0.14 s), so rare exports are better served by scanning."""

    def __init__(
        self,
        generation: Callable[[], object] = lambda: None,
        settled: Callable[[], bool] = lambda: True,
        scans_before_build: int = SCANS_BEFORE_BUILD,
    ) -> None:
        self._generation = generation  # the consumer generation (changes with a rebalance)
        self._settled = settled  # no rebalance under way, tables recovered
        self._scans_before_build = scans_before_build
        self._scans: dict[str, tuple[object, int]] = {}  # entity type → (generation, scans)
        self._built: dict[str, object] = {}  # entity type → the generation built for
        self._keys: dict[str, dict[str, str | set[str]]] = {}

    def note(self, entity_type: str, key: str, record: Mapping[str, Any]) -> None:
        """A record written (by the command agent). Nothing to do until built."""
        owners = self._keys.get(entity_type)
        if owners is not None:
            _add(owners, record.get(OWNER_FIELDS[entity_type]), key)

    def keys_of(
        self, entity_type: str, table: Mapping[str, Any], tenant: str, owners: Iterable[str]
    ) -> list[str] | None:
        """Keys of ``tenant``'s records of ``entity_type`` owned by one of ``owners``,
        maybe more (check each record); None when not known: scan the table."""
        generation = self._generation()
        if self._built.get(entity_type, _UNBUILT) != generation or not self._settled():
            # One of another generation (partitions since moved), or a rebalance under
            # way, which may keep the generation (a rejoin) while recovery writes the
            # tables: let go, built again once settled.
            self._keys.pop(entity_type, None)
            self._built.pop(entity_type, None)
            if not self._settled():
                return None
            seen_in, scans = self._scans.get(entity_type, (generation, 0))
            scans = scans + 1 if seen_in == generation else 1
            self._scans[entity_type] = (generation, scans)
            if scans <= self._scans_before_build:
                return None
            self._build(entity_type, table, generation)
        index = self._keys[entity_type]
        prefix = f"{tenant}:"
        found: set[str] = set()
        for owner in owners:
            keys = index.get(owner)
            if keys is None:
                continue
            for key in (keys,) if isinstance(keys, str) else keys:
                if key.startswith(prefix):  # (owner ids are the tenant's own: they repeat)
                    found.add(key)
        return sorted(found)

    def _build(self, entity_type: str, table: Mapping[str, Any], generation: object) -> None:
        field = OWNER_FIELDS[entity_type]
        owners: dict[str, str | set[str]] = {}
        for key, raw in table.items():  # (no await: nothing writes the table meanwhile)
            if isinstance(raw, dict) and isinstance(key, str):
                _add(owners, raw.get(field), key)
        self._keys[entity_type] = owners
        self._built[entity_type] = generation


def _add(owners: dict[str, str | set[str]], owner: Any, key: str) -> None:
    if not isinstance(owner, str):
        return
    found = owners.get(owner)
    if found is None:
        owners[owner] = key
    elif isinstance(found, str):
        if found != key:
            owners[owner] = {found, key}
    else:
        found.add(key)

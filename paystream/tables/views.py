"""Read views over the tables: what the dashboard and the JSON endpoints serve.

Views read this worker's local table partitions only; with several workers each serves
the tenants whose partitions it owns (the dashboard lists the owner in `partitions`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
from collections import Counter, OrderedDict, defaultdict, deque
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from paystream.tables.next_action import public_row
from paystream.tenancy.models import TENANT_ID_PATTERN, UNREGISTERED

# Distinct tenant ids that are not registered the activity counts keep by name.
MAX_UNREGISTERED_SHOWN = 100
# The latest outcomes kept in all (the dashboard's "Recent outcomes"), and per tenant for
# its filter: the demo's ~18 outcomes a second pushed a command sent by hand out of the
# last 50 within 3 s (review h77c). Per tenant for the tenants most recently served, at
# most TENANTS_RECENT_MAX of them (a worker serving more drops the quietest): at most
# 20,000 entries, a few MB.
RECENT_KEPT = 50
TENANT_RECENT_KEPT = 20
TENANTS_RECENT_MAX = 1000
_TENANT_ID = re.compile(TENANT_ID_PATTERN)

__all__ = ["ActivityLog", "SummaryCache", "entity_view", "tenant_summaries"]

log = logging.getLogger(__name__)


@dataclass
class ActivityLog:
    """Recent outcomes and running counts, kept by the command agent for the dashboard."""

    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT_KEPT))
    by_outcome: Counter[str] = field(default_factory=Counter)
    by_tenant: Counter[str] = field(default_factory=Counter)
    dead_letters: int = 0
    parked: int = 0
    unregistered_shown: int = 0  # distinct unregistered tenant ids counted by name
    # Each tenant's latest outcomes, the most recently served tenant last.
    tenant_recent: OrderedDict[str, deque[dict[str, Any]]] = field(default_factory=OrderedDict)
    # The commands-topic partition each kept tenant's latest outcome came from.
    tenant_partition: dict[str, int] = field(default_factory=dict)

    def record(self, entry: dict[str, Any], partition: int | None = None) -> None:
        """``partition``: the commands-topic partition of the command answered (None:
        not known; its tenant's outcomes then outlast any reassignment)."""
        self.recent.appendleft(entry)
        self.by_outcome[entry["outcome"]] += 1
        tenant = entry["tenant"]
        if not entry.get("registered", True) and tenant not in self.by_tenant:
            # A mistyped tenant id is worth showing by name; a flood of made-up ones
            # must not grow the counts without bound.
            if self.unregistered_shown >= MAX_UNREGISTERED_SHOWN:
                tenant = UNREGISTERED
            else:
                self.unregistered_shown += 1
        self.by_tenant[tenant] += 1
        # Kept only under a name GET /v1/tenants/{tenant}/outcomes answers: the lumped
        # made-up ids, "_unknown" (a control character) and a made-up id cut to 64
        # characters are asked for by nobody (it answers 404), yet took a tenant's place.
        if _TENANT_ID.fullmatch(tenant) is not None:
            self._keep_for(tenant, entry, partition)

    def _keep_for(self, tenant: str, entry: dict[str, Any], partition: int | None) -> None:
        kept = self.tenant_recent.get(tenant)
        if kept is None:
            kept = self.tenant_recent[tenant] = deque(maxlen=TENANT_RECENT_KEPT)
            if len(self.tenant_recent) > TENANTS_RECENT_MAX:
                dropped, _ = self.tenant_recent.popitem(last=False)
                self.tenant_partition.pop(dropped, None)
        else:
            self.tenant_recent.move_to_end(tenant)
        kept.appendleft(entry)
        if partition is not None:
            self.tenant_partition[tenant] = partition

    def keep_only_partitions(self, owned: Collection[int]) -> None:
        """Partitions were reassigned: forget the outcomes of tenants whose partition is
        no longer this worker's. Its new owner answers for the tenant from now on, so
        these could no longer be asked for, and would come back older than a gap (what
        the other worker ran meanwhile) should the tenant return (review h77l F3)."""
        for tenant, partition in list(self.tenant_partition.items()):
            if partition not in owned:
                del self.tenant_partition[tenant]
                self.tenant_recent.pop(tenant, None)

    def recent_of(self, tenant: str) -> list[dict[str, Any]]:
        """The tenant's latest outcomes on this worker, newest first, since this worker
        took the tenant over (none: not served since, or not among the
        TENANTS_RECENT_MAX served last)."""
        return list(self.tenant_recent.get(tenant, ()))

    def as_json(self) -> dict[str, Any]:
        return {
            "recent": list(self.recent),
            "by_outcome": dict(self.by_outcome),
            "by_tenant": dict(self.by_tenant),
            "dead_letters": self.dead_letters,
            "parked": self.parked,
            "total": sum(self.by_outcome.values()),
        }


async def tenant_summaries(
    payments: Mapping[str, Any], owned: Collection[int] | None = None
) -> dict[str, Any]:
    """Per tenant: payments by status and captured/refunded volume per currency, over the
    payments of the partitions in ``owned`` (None: all the table holds).

    Every payment counts (a cap on rows froze the figures once a worker held that many),
    and the scan gives the event loop back every ``SCAN_CHUNK`` rows: it runs on the
    worker's loop, beside the commands.
    """
    for attempt in range(1, SCAN_ATTEMPTS + 1):
        out: dict[str, dict[str, Any]] = defaultdict(
            lambda: {"payments": Counter(), "captured": Counter(), "refunded": Counter()}
        )
        rows = _owned_items(payments, owned)
        try:
            while chunk := list(itertools.islice(rows, SCAN_CHUNK)):
                for key, raw in chunk:
                    row = out[str(key).split(":", 1)[0]]
                    row["payments"][raw["status"]] += 1
                    row["captured"][raw["currency"]] += int(raw.get("amount_captured", 0))
                    row["refunded"][raw["currency"]] += int(raw.get("amount_refunded", 0))
                await asyncio.sleep(0)
        except RuntimeError:
            # A rebalance while the scan gave the loop back: RocksDB's stores are a dict
            # of partition databases, iterated lazily (review finding: a 500). Again.
            if attempt == SCAN_ATTEMPTS:
                raise
            continue
        return {t: {k: dict(v) for k, v in row.items()} for t, row in out.items()}
    raise AssertionError("unreachable: the last attempt returns or raises")


SCAN_ATTEMPTS = 3


def _owned_items(table: Mapping[str, Any], owned: Collection[int] | None) -> Iterator[Any]:
    """The table's rows of the ``owned`` partitions, read lazily.

    The memory store keeps the standby partitions' rows (a peer's, recovered and then
    followed a thousand records at a time) in the same dict as the active ones, with
    each key's partition beside: those are left out (review finding: each worker of a
    fleet showed the other's tenants, with stale figures). Its key-to-partition map is
    copied first (a dict must not change while it is iterated), and read at C speed.
    RocksDB iterates only the active partitions' databases; its iterators read a
    snapshot, so no list of every key is built first (2.7 s of a stalled loop per
    million payments, review finding) and no key is looked up one at a time.
    """
    store = getattr(table, "data", None)
    tracked = getattr(store, "_key_partition", None)
    data = getattr(store, "data", None)
    if isinstance(tracked, dict) and isinstance(data, dict):
        for key, partition in list(tracked.items()):
            if owned is None or partition in owned:
                raw = data.get(key)
                if raw is not None:
                    yield key, raw
        return
    for key, raw in table.items():
        if raw is not None:
            yield key, raw


SCAN_CHUNK = 2_000


class SummaryCache:
    """The last summaries, shared by every request until stale: each open dashboard
    polls every second, and a scan of a large table costs the worker's loop more than
    that (280 ms per 100,000 payments). Stale after ten times the last scan's duration
    (so scans take at most a tenth of the loop; a small table is scanned afresh for every
    request), at least ``min_age`` and at most ``max_age`` seconds (past 6 s scans, about
    two million payments, the figures' age wins over the loop's share). Once a scan takes
    longer than ``wait_at_most`` seconds, a stale value is answered at once while the
    next scan runs: the dashboard gives up on a slow answer and shows the worker as
    unreachable (a million payments: ~3 s, every half minute)."""

    def __init__(
        self,
        min_age: float = 0.0,
        max_age: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        wait_at_most: float = 0.5,
    ) -> None:
        self.min_age = min_age
        self.max_age = max_age
        self.wait_at_most = wait_at_most
        self._took = 0.0  # how long the last scan took
        self._clock = clock
        self._value: dict[str, Any] | None = None
        self._fresh_until = 0.0
        self._scan: asyncio.Future[dict[str, Any]] | None = None
        self._owned: frozenset[int] | None = None  # the partitions the value counts
        self._scan_owned: frozenset[int] | None = None  # the running scan's

    async def get(
        self, payments: Mapping[str, Any], owned: Collection[int] | None = None
    ) -> dict[str, Any]:
        owned = None if owned is None else frozenset(owned)
        while self._scan is not None and self._scan_owned != owned:
            # A scan of other partitions (as they were, or another request's since): let it
            # end, then scan these.
            await asyncio.gather(asyncio.shield(self._scan), return_exceptions=True)
        if owned != self._owned:  # partitions moved: what was counted is not this worker's
            self._value = None
        if self._value is not None and self._clock() < self._fresh_until:
            return self._value
        if self._scan is None:  # one scan at a time, whoever asked
            self._scan_owned = owned
            self._scan = asyncio.ensure_future(self._rescan(payments, owned))
            # Retrieved even when every requester has gone (cancelled): no "never
            # retrieved" noise; the next request scans again.
            self._scan.add_done_callback(lambda done: done.cancelled() or done.exception())
        scan = self._scan
        if (
            self._value is not None
            and self._took > self.wait_at_most
            and self._clock() < self._fresh_until + self.max_age  # (scans failing: not for ever)
        ):
            return self._value  # stale, while the next scan runs
        return await asyncio.shield(scan)

    def expire(self) -> None:
        """The value is no longer fresh (counted while tables recovered): answered at
        most while the next scan runs."""
        self._fresh_until = min(self._fresh_until, self._clock())

    async def _rescan(
        self, payments: Mapping[str, Any], owned: Collection[int] | None
    ) -> dict[str, Any]:
        started = self._clock()
        try:
            self._value = await tenant_summaries(payments, owned)
            self._owned = None if owned is None else frozenset(owned)
        except Exception:
            log.warning("scanning the payments table for the summaries failed", exc_info=True)
            raise
        finally:
            self._scan = None
        took = self._took = self._clock() - started
        self._fresh_until = self._clock() + min(self.max_age, max(self.min_age, 10 * took))
        return self._value


def entity_view(table: Mapping[str, Any], tenant_id: str, entity_id: str) -> dict[str, Any] | None:
    """One entity of one tenant, without bookkeeping; another tenant's id is simply absent."""
    raw = table.get(f"{tenant_id}:{entity_id}")
    if raw is None:
        return None
    return public_row(raw)

"""Table state on /metrics: how much each table holds, and how much recovery has left.

A worker that takes partitions over replays their changelogs before it is ready, and
the changelogs grow with the tenants' entities (payments, customers, ... are kept for
good; idempotency records for their window): what is held is what the next recovery
reads, and what memory or disk the worker needs. Faust reports neither. Read when
scraped, on the worker's loop (its web server runs there), so no lock is needed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["TableStateCollector", "behind", "install", "table_keys"]

log = logging.getLogger(__name__)

_ESTIMATE = "rocksdb.estimate-num-keys"


def table_keys(table: Any) -> int | None:
    """Keys the table holds on this worker, in active and standby partitions (None: its
    store is not open yet, and reading ``table.data`` would open it, bound to whatever
    event loop is current).

    RocksDB (``rocksdb://``): each partition database's own estimate (counting them
    would read every key at every scrape), which also counts writes over a key that no
    compaction has merged yet (at most a few memtables' worth); the memory store: its
    dict's length."""
    store = table._data
    if store is None:
        return None
    dbs = getattr(store, "_dbs", None)
    if isinstance(dbs, dict):
        total = 0
        for db in dbs.values():
            if hasattr(db, "property_int_value"):  # rocksdict
                total += int(db.property_int_value(_ESTIMATE) or 0)
            else:  # python-rocksdb
                total += int(db.get_property(_ESTIMATE.encode()) or 0)
        return total
    return len(getattr(store, "data", {}))


class TableStateCollector(Collector):
    """``paystream_table_keys{table}``, ``paystream_table_recovering`` and
    ``paystream_table_recovery_remaining_records{kind}`` for one Faust app."""

    def __init__(self, app: Any) -> None:
        self._app = app

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The families, empty: what registering asks for. Without it, the registry
        collects at once, at import, and sizing a table opens its store, binding it and
        the app to an event loop before the worker has chosen one (uvloop)."""
        keys, recovering, remaining = _families()
        yield keys
        yield recovering
        yield remaining

    def collect(self) -> Iterator[GaugeMetricFamily]:
        keys, recovering, remaining = _families()
        for name, table in sorted(self._app.tables.items()):
            try:
                held = table_keys(table)
            except Exception:  # a store closing under a rebalance: next scrape
                log.debug("could not size table %s", name, exc_info=True)
                continue
            if held is not None:
                keys.add_metric([name], held)
        yield keys
        recovering.add_metric([], 1.0 if getattr(self._app, "in_recovery", False) else 0.0)
        yield recovering
        # (Its private attribute: the property would create the service if it is not yet.)
        recovery = getattr(self._app.tables, "_recovery", None)
        if recovery is not None:
            remaining.add_metric(["active"], behind(recovery, active=True))
            remaining.add_metric(["standby"], behind(recovery, active=False))
        yield remaining


def behind(recovery: Any, *, active: bool) -> int:
    """Records Faust's recovery has still to replay into the worker's current active (or
    standby) partitions. Faust's own totals sum ``highwater - offset`` over every
    partition it knows: the highwaters are read once per recovery while standby copies
    keep reading past them (the total went negative with traffic, hiding a standby still
    behind), and a partition that moved from active to standby keeps its highwater with
    no offset (counted whole): so each partition counts from 0, and only the current
    ones."""
    if active:
        tps, highwaters, offsets = (
            recovery.active_tps,
            recovery.active_highwaters,
            recovery.active_offsets,
        )
    else:
        tps, highwaters, offsets = (
            recovery.standby_tps,
            recovery.standby_highwaters,
            recovery.standby_offsets,
        )
    total = 0
    for tp in tps:
        highwater, offset = highwaters.get(tp), offsets.get(tp)
        if highwater is not None and highwater >= 0:
            total += max(0, highwater - (offset if offset is not None and offset >= 0 else -1))
    return total


def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
    keys = GaugeMetricFamily(
        "paystream_table_keys",
        "Keys each table holds on this worker (active and standby partitions; on "
        "RocksDB its estimate, which counts recent overwrites too): what recovering "
        "them replays, and what they occupy.",
        labels=["table"],
    )
    recovering = GaugeMetricFamily(
        "paystream_table_recovering",
        "1 while the worker replays changelogs into its tables (not ready meanwhile).",
        labels=[],
    )
    remaining = GaugeMetricFamily(
        "paystream_table_recovery_remaining_records",
        "Changelog records this worker has still to replay: into its active "
        "partitions (before it may run their commands) and its standby copies, up to "
        "the changelogs' ends as read when the recovery began.",
        labels=["kind"],
    )
    return keys, recovering, remaining


_installed: list[TableStateCollector] = []


def install(app: Any) -> None:
    """Register the collector for ``app`` (once per process)."""
    if not _installed:
        collector = TableStateCollector(app)
        REGISTRY.register(collector)
        _installed.append(collector)

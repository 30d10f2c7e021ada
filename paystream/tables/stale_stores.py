"""A RocksDB table partition left unfollowed for too long is rebuilt, not caught up.

Faust catches a partition's store up from the offset it stored last: the changelog's
records since. But the changelogs are compacted, and a compaction drops a deleted key's
tombstone once it is older than the topic's ``delete.retention.ms`` (Kafka's default: a
day). A store older than that may never see a delete made meanwhile, and would keep the
key for good: a tenant's limits state dropped, an analytics window published and
removed. Stores get that old on a persistent volume (a worker down, or scaled away, for
a day) and on a long-lived worker alike (a partition moved to a peer at a rebalance and
back days later: Faust leaves the revoked partition's files in place).

So each open partition store has a marker file beside it, touched at opening and every
``TOUCH_INTERVAL_SECONDS`` while it is open (active or standby). A store whose marker is
missing or older than ``PAYSTREAM_TABLE_STORE_MAX_AGE_SECONDS`` when Faust opens it is
deleted first: Faust then rebuilds it from the whole changelog, as for a new worker.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from faust.stores.rocksdb import Store as RocksDBStore

__all__ = ["TOUCH_INTERVAL_SECONDS", "install", "marker_of", "open_fresh", "touch_followed"]

log = logging.getLogger(__name__)

# How often the markers of open stores are touched: far below any sensible maximum age.
TOUCH_INTERVAL_SECONDS = 60.0

_faust_open = RocksDBStore._open_for_partition
_faust_assign = RocksDBStore.assign_partitions


def marker_of(store_path: Path) -> Path:
    """The marker beside a partition store (not in it: the directory is RocksDB's)."""
    return store_path.with_name(store_path.name + ".followed")


def open_fresh(store_path: Path, max_age_seconds: float, now: float | None = None) -> bool:
    """Delete the store at ``store_path`` if its marker is missing or too old (before it
    is opened); True when it was deleted."""
    if not store_path.exists():
        return False
    marker = marker_of(store_path)
    try:
        age = (time.time() if now is None else now) - marker.stat().st_mtime
    except FileNotFoundError:
        age = None
    if age is not None and age <= max_age_seconds:
        return False
    log.warning(
        "table store %s %s: rebuilt from its changelog (older than "
        "PAYSTREAM_TABLE_STORE_MAX_AGE_SECONDS=%d, it could keep keys deleted since)",
        store_path.name,
        "has no follow marker" if age is None else f"was last followed {age / 3600:.1f} h ago",
        max_age_seconds,
    )
    shutil.rmtree(store_path, ignore_errors=True)
    marker.unlink(missing_ok=True)
    return True


def _touch(marker: Path) -> None:
    marker.touch()  # (an existing file: its time set to now)


def touch_followed(stores: Iterable[Any]) -> int:
    """Touch the marker of every partition store open in ``stores`` (Faust's RocksDB
    stores; others are skipped) whose partition this worker follows (assigned, active or
    standby); how many. An open store of a partition not followed is one a late read
    reopened after its revoke (a batch the hand-over gave up on): touched, it would pass
    for followed when the partition comes back days later (review h68p)."""
    touched = 0
    for store in stores:
        if not isinstance(store, RocksDBStore):
            continue
        followed = _followed(store)
        for partition in list(store._dbs):
            if partition in followed:
                _touch(marker_of(store.partition_path(partition)))
                touched += 1
    return touched


def _followed(store: Any) -> set[int]:
    """The partitions of ``store``'s changelog assigned to this worker."""
    assignor = store.app.assignor
    topics = store.table.changelog_topic.topics
    return {
        tp.partition
        for tp in (*assignor.assigned_actives(), *assignor.assigned_standbys())
        if tp.topic in topics
    }


def _empty(db: Any) -> None:
    """Delete every key of an open partition database (its stored offset included)."""
    it = db.iter()
    it.seek_to_first()
    first = it.key() if it.valid() else None
    it.seek_to_last()
    last = it.key() if it.valid() else None
    del it
    if first is not None and last is not None:
        db.delete_range(first, last + b"\x00")  # (the end is exclusive)


def _stale(store_path: Path, max_age_seconds: float) -> bool:
    try:
        return time.time() - marker_of(store_path).stat().st_mtime > max_age_seconds
    except FileNotFoundError:
        return True


def install(max_age_seconds: Callable[[], float]) -> None:
    """Check every partition store's age as Faust opens it (``max_age_seconds()``: the
    setting, read at each opening)."""

    def open_for_partition(self: Any, partition: int) -> Any:
        path = self.partition_path(partition)
        open_fresh(path, max_age_seconds())
        db = _faust_open(self, partition)
        _touch(marker_of(path))
        return db

    RocksDBStore._open_for_partition = open_for_partition  # type: ignore[method-assign]

    async def assign_partitions(self: Any, table: Any, tps: Any, generation_id: int = 0) -> None:
        # A store still open, its marker stale, is one a late read reopened after its
        # revoke: Faust would use it as it is, never opening it, so its age would never
        # be checked. Dropped first (as Faust's revoke drops one), it is opened through
        # the check above: rebuilt (review h68p).
        dropped = [
            tp.partition
            for tp in tps
            if tp.topic in table.changelog_topic.topics
            and tp.partition in self._dbs
            and _stale(self.partition_path(tp.partition), max_age_seconds())
        ]
        for partition in dropped:
            # Emptied where it is open, not closed and opened again: a reader elsewhere
            # (an iterator) keeps a dropped handle and its lock alive, and the reopen
            # failed "lock hold by current process" until Faust stopped the store
            # (review h68w). Its stored offset goes too: recovered from the start.
            _empty(self._dbs[partition])
            _touch(marker_of(self.partition_path(partition)))
            log.warning(
                "table store %s: open but unfollowed for longer than %d s: emptied, "
                "rebuilt from its changelog",
                self.partition_path(partition).name,
                max_age_seconds(),
            )
        await _faust_assign(self, table, tps, generation_id)

    RocksDBStore.assign_partitions = assign_partitions  # type: ignore[method-assign]

"""A partition store reopened after its revoke was never checked again (review h68p):
the touch timer kept its marker fresh because it was open, and Faust, finding it open
when the partition came back, never opened it through the age check."""

from __future__ import annotations

import time
from typing import Any

from faust.types import TP

from paystream.tables import stale_stores
from paystream.tables.changelog import at_partition
from tests.test_stale_table_stores import MAX_AGE, _age, store  # noqa: F401 (fixture)


async def test_a_store_read_after_its_revoke_is_rebuilt_when_assigned_again_days_later(
    store: Any,  # noqa: F811 (the fixture)
) -> None:
    """Partition 1 moves to a peer. The batch in hand, which the hand-over gave up on
    while it was still processing (commands.py: "once processed, it is not delivered"),
    goes on reading (and writing) its commands' tables: Faust's ``_get`` / ``_set`` open
    the revoked partition's store again (``_db_for_partition``). It stays in ``_dbs``;
    the touch timer keeps its marker fresh, though nothing follows the partition. Days
    later the partition comes back: Faust finds the store open, never reopens it, so
    the age check never runs; the recovery catches it up from its days-old offset,
    past tombstones compacted away meanwhile (the keys the peer deleted come back)."""
    topic = store.table.changelog_topic.get_topic_name()
    db = store._db_for_partition(1)
    db[b"k"] = b"v"  # deleted later by the peer; its tombstone compacted away since
    del db  # (Faust's revoke drops its reference and collects it: closed)
    store.revoke_partitions(store.table, {TP(topic, 1)})
    assert 1 not in store._dbs
    with at_partition("commands", 1):  # a late read by the abandoned batch
        store._get(b"other")
    marker = stale_stores.marker_of(store.partition_path(1))
    _age(marker, MAX_AGE + 3 * 86_400)  # three days unfollowed...
    stale_stores.touch_followed([store])  # ...and the timer's next tick
    assert time.time() - marker.stat().st_mtime > MAX_AGE  # (not followed: not touched)
    # The partition is assigned back to this worker (Faust opens what it will recover).
    await store.assign_partitions(store.table, {TP(topic, 1)})
    reopened = store._db_for_partition(1)
    assert reopened.get(b"k") is None, (
        "a store nothing followed for three days was caught up, not rebuilt: the "
        "timer touched its marker because it was open, and it was open because a late "
        "read after the revoke reopened it"
    )

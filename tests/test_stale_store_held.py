"""assign_partitions dropped a store still open whose marker was stale and relied on
gc.collect() to close it before opening it again: a reference held elsewhere (an iterator
over the partition's database) kept the handle and its RocksDB lock alive, and the reopen
failed until Faust stopped the store (review h68w). The store is now emptied where it is
open, its stored offset too, and recovered from the changelog's start."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from faust.types import TP

from paystream.tables import stale_stores
from tests.test_stale_table_stores import MAX_AGE, store  # noqa: F401 (fixture)


@pytest.fixture
def held(store: Any) -> Any:  # noqa: F811 (the shared fixture)
    """The shared store, its Faust lock retries (a second apart) not waited for."""

    async def no_sleep(seconds: float) -> None:
        return None

    store.sleep = no_sleep
    return store


async def test_a_stale_store_dropped_while_a_reader_holds_it_is_reopened(held: Any) -> None:
    topic = held.table.changelog_topic.get_topic_name()
    db = held._db_for_partition(1)  # reopened by a late read after its revoke
    db[b"k"] = b"v"  # deleted by the peer meanwhile, its tombstone compacted away
    held.set_persisted_offset(TP(topic, 1), 42)
    reader = db.iter()  # a reader elsewhere, suspended over the partition's database
    reader.seek_to_first()
    del db
    then = time.time() - MAX_AGE - 86_400
    marker = stale_stores.marker_of(held.partition_path(1))
    os.utime(marker, (then, then))
    generation = held.app.consumer_generation_id
    try:
        await held.assign_partitions(held.table, {TP(topic, 1)}, generation)
    except Exception as exc:
        pytest.fail(f"the partition could not be opened again: {exc!r}")
    finally:
        del reader
    assert 1 in held._dbs, "the rebuilt held is not open"
    assert held._dbs[1].get(b"k") is None, "caught up, not rebuilt"
    assert held.persisted_offset(TP(topic, 1)) is None, "recovered from its old offset"

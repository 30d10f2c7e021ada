"""assign_partitions dropped a store still open whose marker was stale and relied on
gc.collect() to close it before opening it again: a reference held elsewhere (an iterator
over the partition's database) kept the handle and its RocksDB lock alive, and the reopen
failed until Faust stopped the store (review h68w). The store is now emptied where it is
open, its stored offset too, and recovered from the changelog's start."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faust
import pytest
from faust.stores.rocksdb import Store as RocksDBStore
from faust.types import TP

from paystream.tables import stale_stores

MAX_AGE = 3600.0


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setattr(RocksDBStore, "_open_for_partition", RocksDBStore._open_for_partition)
    monkeypatch.setattr(RocksDBStore, "assign_partitions", RocksDBStore.assign_partitions)
    stale_stores.install(lambda: MAX_AGE)
    app = faust.App("stale-held", datadir=str(tmp_path), store="rocksdb://", autodiscover=False)
    table = app.Table("things", partitions=2)
    s = RocksDBStore("rocksdb://", app, table, options={}, driver="rocksdict")

    async def no_sleep(seconds: float) -> None:
        return None

    s.sleep = no_sleep  # (Faust's 30 lock retries, a second apart)
    yield s


async def test_a_stale_store_dropped_while_a_reader_holds_it_is_reopened(store: Any) -> None:
    topic = store.table.changelog_topic.get_topic_name()
    db = store._db_for_partition(1)  # reopened by a late read after its revoke
    db[b"k"] = b"v"  # deleted by the peer meanwhile, its tombstone compacted away
    store.set_persisted_offset(TP(topic, 1), 42)
    reader = db.iter()  # a reader elsewhere, suspended over the partition's database
    reader.seek_to_first()
    del db
    then = time.time() - MAX_AGE - 86_400
    marker = stale_stores.marker_of(store.partition_path(1))
    os.utime(marker, (then, then))
    generation = store.app.consumer_generation_id
    try:
        await store.assign_partitions(store.table, {TP(topic, 1)}, generation)
    except Exception as exc:
        pytest.fail(f"the partition could not be opened again: {exc!r}")
    finally:
        del reader
    assert 1 in store._dbs, "the rebuilt store is not open"
    assert store._dbs[1].get(b"k") is None, "caught up, not rebuilt"
    assert store.persisted_offset(TP(topic, 1)) is None, "recovered from its old offset"

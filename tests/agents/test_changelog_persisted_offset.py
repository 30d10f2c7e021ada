"""ChangelogBatch.persisted tells a table's store the offset of the *last* changelog
record now durable: recovery (RocksDB) reads on from the one after it, so one too far
would skip a table write (an idempotency record: a command charged again)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from paystream.streams.batch_producer import SentBatch
from paystream.tables.changelog import ChangelogBatch

pytestmark = pytest.mark.asyncio(loop_scope="session")

CHANGELOG = "paystream-idempotency-changelog"


class Store:
    def __init__(self) -> None:
        self.persisted: dict[TP, int] = {}

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        self.persisted[tp] = offset


def table(store: Store) -> Any:
    topic = SimpleNamespace(get_topic_name=lambda: CHANGELOG)
    return SimpleNamespace(name="idempotency", changelog_topic=topic, data=store)


def sent(partition: int, base: int | None, count: int, failed: bool = False) -> SentBatch:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    if failed:
        future.set_exception(RuntimeError("not acknowledged"))
    else:
        future.set_result(SimpleNamespace(offset=base))
    return SentBatch(CHANGELOG, partition, count, future)


async def test_the_persisted_offset_is_that_of_the_batchs_last_record() -> None:
    store = Store()
    batch = ChangelogBatch()
    batch.add(table(store), 2, "k1", {"v": 1}, None)
    batch.add(table(store), 3, "k2", {"v": 2}, None)
    batch.persisted([sent(2, 100, 3), sent(3, 7, 1)])
    assert store.persisted == {TP(CHANGELOG, 2): 102, TP(CHANGELOG, 3): 7}


async def test_a_batch_not_acknowledged_moves_no_persisted_offset() -> None:
    store = Store()
    batch = ChangelogBatch()
    batch.add(table(store), 0, "k", {"v": 1}, None)
    failed = sent(0, None, 2, failed=True)
    batch.persisted([failed])
    failed.future.exception()  # (retrieved: no "never retrieved" warning)
    assert store.persisted == {}

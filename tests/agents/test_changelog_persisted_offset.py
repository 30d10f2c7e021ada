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


def named_table(name: str, store: Store) -> Any:
    topic = SimpleNamespace(get_topic_name=lambda: f"paystream-{name}-changelog")
    return SimpleNamespace(name=name, changelog_topic=topic, data=store)


async def test_each_tables_offsets_go_to_its_own_store_and_the_last_written_one() -> None:
    """Writes of several tables, interleaved: each table's topic is looked up once, and a
    name written by two table objects (as by a table made again) answers with the one
    written last, as a lookup over every write did."""
    payments, first, last = Store(), Store(), Store()
    batch = ChangelogBatch()
    batch.add(named_table("payments", payments), 0, "p1", {"v": 1}, None)
    batch.add(named_table("idempotency", first), 0, "i1", {"v": 1}, None)
    batch.add(named_table("payments", payments), 1, "p2", {"v": 2}, None)
    batch.add(named_table("idempotency", last), 1, "i2", {"v": 2}, None)
    batch.add(named_table("payments", payments), 0, "p1", {"v": 3}, None)  # coalesced
    loop = asyncio.get_running_loop()

    def acked(topic: str, partition: int, base: int, count: int) -> SentBatch:
        future: asyncio.Future[Any] = loop.create_future()
        future.set_result(SimpleNamespace(offset=base))
        return SentBatch(topic, partition, count, future)

    batch.persisted(
        [
            acked("paystream-payments-changelog", 0, 10, 1),
            acked("paystream-idempotency-changelog", 0, 20, 1),
            acked("paystream-payments-changelog", 1, 30, 1),
            acked("paystream-idempotency-changelog", 1, 40, 1),
            acked("paystream.events", 0, 50, 4),  # outcomes: no table's
        ]
    )
    assert payments.persisted == {
        TP("paystream-payments-changelog", 0): 10,
        TP("paystream-payments-changelog", 1): 30,
    }
    assert first.persisted == {}
    assert last.persisted == {
        TP("paystream-idempotency-changelog", 0): 20,
        TP("paystream-idempotency-changelog", 1): 40,
    }

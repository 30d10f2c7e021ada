"""A batch no parser reads, of several records, on the commands topic (review h66a): its
stand-in covered only its own offset. The worker's continuity guard read the batch's
other offsets as a gap, the broker sent the same batch back and the read made a second
stand-in; last on its partition, the batch left the committed offset inside it, so
`paystream doctor` reported commands waiting on an idle, healthy worker, and each
restart dead-lettered it once more."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition

from paystream import doctor
from paystream.streams import record_batches
from tests.e2e import raw_batches as rb
from tests.fixtures.pipeline import Deployment

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

_CE = [(b"ce_specversion", b"1.0"), (b"ce_id", b"poison-1"), (b"ce_source", b"x"),
       (b"ce_type", b"com.paystream.customer.create")]  # fmt: skip


async def _letters(dep: Deployment) -> list[str]:
    dead = await dep.read_topic(dep.settings.dlq_topic, idle_polls=2)
    return [
        dict(r.headers)["paystream-source"].decode()
        for r in dead
        if dict(r.headers).get("paystream-dlq-reason") == b"unreadable_batch"
    ]


async def _committed(dep: Deployment, broker: str, partition: int) -> int | None:
    admin = AIOKafkaAdminClient(bootstrap_servers=broker)
    await admin.start()
    try:
        tp = TopicPartition(dep.settings.commands_topic, partition)
        got = await admin.list_consumer_group_offsets(dep.settings.app_id, partitions=[tp])
        return got[tp].offset if tp in got else None
    finally:
        await admin.close()


async def _until_committed(dep: Deployment, broker: str, partition: int, offset: int) -> None:
    deadline = time.monotonic() + 30
    while (got := await _committed(dep, broker, partition)) != offset:
        assert time.monotonic() < deadline, f"committed {got}, not {offset}"
        await asyncio.sleep(0.5)


async def test_a_batch_no_parser_reads_is_dead_lettered_once_and_committed_past(
    deployment_factory: Any,
) -> None:
    tenant = "poison-once"
    dep: Deployment = await deployment_factory()
    record_batches.install(dep.settings)  # (as `paystream doctor` has: cli/base.py)
    async with rb.worker_for(dep, tenant) as (worker, broker, partition):
        poison = rb.batch(
            [rb.record(i, tenant.encode(), b"{}", _CE) for i in range(5)], bad_crc=True
        )
        assert await rb.produce(broker, dep.settings.commands_topic, partition, poison) == 0
        # Last on its partition: committed past the whole batch, and nothing waits.
        await _until_committed(dep, broker, partition, 5)
        figure = await doctor.check_workers_keep_up(dep.settings)
        assert figure.startswith("caught up"), figure
        # A command after it: no gap read, no second stand-in.
        await rb.next_answered(dep, tenant, 45)
        assert not worker.exited()
    # Restarted on the committed offset, a worker is not handed the batch again.
    with dep.worker("w2") as again:
        again.wait_ready([tenant], partitions=dep.settings.partitions)
        await rb.next_answered(dep, tenant, 45)
    assert len(await _letters(dep)) == 1

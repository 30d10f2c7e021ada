"""Record batches one producer writes to the commands topic that aiokafka's reader may
refuse, on every fetch: the worker's consumer crashed on each, and restarted on the
same offset crashed again; the partition's tenants waited for good (review h64j).

* snappy / lz4 / zstd: valid batches (what a librdkafka or Java producer with
  compression.type writes, or a broker or topic with compression.type writes for every
  producer): aiokafka needs cramjam for them (an install requirement since).
* a batch no parser reads (its CRC wrong, its gzip payload not gzip): real Kafka refuses
  one on produce, the embedded broker stores it. It is dead-lettered `unreadable_batch`
  (streams/record_batches.py), once, and committed past.
* a header name that is not UTF-8 (a broker keeps the bytes a producer sends;
  librdkafka's may send any): aiokafka's record parser raised UnicodeDecodeError. The
  record is dead-lettered, and the worker goes on.

One worker meets them all, one after another, each on its own tenant: each test checks
that the next command behind its batch is answered and that the worker still runs.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition

from paystream import doctor
from paystream.devstack.worker import WorkerProcess
from paystream.streams import record_batches
from paystream.streams.admin import bootstrap_servers
from paystream.tenancy.models import Tenant
from tests.e2e import raw_batches as rb
from tests.fixtures.pipeline import Deployment

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

R = rb.record
_CE = [(b"ce_specversion", b"1.0"), (b"ce_id", b"poison-1"), (b"ce_source", b"x"),
       (b"ce_type", b"com.paystream.customer.create")]  # fmt: skip

CASES = ["snappy", "lz4", "zstd", "gzip_not_gzip", "crc"]
HEADER_TENANT = "rawname-a"
# Alone on its partition (the module's other tenants are on 0, 1 and 2 of 4): its batch
# opens the partition, in a group that has committed nothing there, whatever ran before.
ONCE_TENANT = "poison-once"


def _tenant(case: str) -> str:
    return f"poison-{case.replace('_', '-')}"


@dataclass
class OneWorker:
    """The deployment's one worker, which every test here feeds its batch to."""

    dep: Deployment
    worker: WorkerProcess
    broker: str  # bootstrap servers
    started: int = 1

    def restart(self) -> WorkerProcess:
        """Stopped, then a new worker of the same group started on its committed offsets."""
        self.worker.stop()
        self.started += 1
        self.worker = self.dep.worker(f"w{self.started}").start()
        self.worker.wait_ready(
            [_tenant(c) for c in CASES] + [HEADER_TENANT, ONCE_TENANT],
            partitions=self.dep.settings.partitions,
        )
        return self.worker


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def one(deployment_factory: Any) -> AsyncIterator[OneWorker]:
    dep: Deployment = await deployment_factory()
    tenants = [_tenant(c) for c in CASES] + [HEADER_TENANT, ONCE_TENANT]
    await dep.add_tenants(*(Tenant(tenant_id=t) for t in tenants))
    shared = OneWorker(dep, dep.worker().start(), bootstrap_servers(dep.settings.require_broker()))
    try:
        await asyncio.to_thread(
            shared.worker.wait_ready, tenants, partitions=dep.settings.partitions
        )
        yield shared
    finally:
        shared.worker.stop()


def _poison(case: str, tenant: bytes) -> bytes:
    one = [R(0, tenant, b"{}", _CE)]
    return {
        "snappy": lambda: rb.batch(one, codec=rb.SNAPPY),
        "zstd": lambda: rb.batch(one, codec=rb.ZSTD),
        "lz4": lambda: rb.batch(one, codec=rb.LZ4),
        "gzip_not_gzip": lambda: rb.batch(one, codec=rb.GZIP, payload=b"\x1f\x8b\x08\x00junk"),
        "crc": lambda: rb.batch(one, bad_crc=True),
    }[case]()


_UNREADABLE = {"gzip_not_gzip": "EOFError", "crc": "CRC does not match"}


def _source(record: Any) -> tuple[str, int, int]:
    """(topic, partition, offset) a dead letter's ``paystream-source`` names."""
    topic, partition, offset = dict(record.headers)["paystream-source"].decode().rsplit("/", 2)
    return topic, int(partition), int(offset)


@pytest.mark.parametrize("case", CASES)
async def test_one_batch_a_producer_writes_does_not_stop_the_worker(
    case: str, one: OneWorker
) -> None:
    dep, worker, tenant = one.dep, one.worker, _tenant(case)
    topic = dep.settings.commands_topic
    partition = rb.partition_of(dep.settings, tenant)
    poison = _poison(case, tenant.encode())
    code, offset = await rb.produce_at(one.broker, topic, partition, poison)
    assert code == 0  # (stored)
    await rb.next_answered(dep, tenant, 45)
    assert not worker.exited()
    if case not in _UNREADABLE:
        return

    def stands_in(r: Any) -> bool:
        return r.key is None and _source(r)[:2] == (topic, partition) and _source(r)[2] >= offset

    # (The letter and the outcome behind it are produced together: either may land first;
    # then a second of quiet, so that a second letter just behind it shows too.)
    dead = await dep.read_topic(
        dep.settings.dlq_topic, idle_polls=2, until=lambda rs: any(map(stands_in, rs))
    )
    # The keyless letters standing for this batch: none but one (the module's other
    # batches are elsewhere, or earlier on the partition).
    [letter] = [r for r in dead if stands_in(r)]
    headers = dict(letter.headers)
    assert headers["paystream-dlq-reason"] == b"unreadable_batch", headers
    detail = headers["paystream-dlq-detail"].decode()
    assert f"record batch at {topic}[{partition}] offsets {offset}-" in detail, detail
    assert _UNREADABLE[case] in detail
    assert headers["paystream-source"].startswith(f"{topic}/{partition}/".encode())
    # No card scan vouches for a batch's framing: its bytes are not copied, and the
    # detail says where they are (reviews h65a, h65c).
    assert letter.value == b""
    assert detail.endswith(f"its {len(poison)} bytes are not copied")


# aiokafka's Python record builder (AIOKAFKA_NO_EXTENSIONS) writes a header name as its
# str's encode() gives it: bytes that are not UTF-8.
_PRODUCE = r"""
import asyncio, sys
from aiokafka import AIOKafkaProducer

class Raw(str):
    def encode(self, *args, **kwargs):
        return b"ce_\xff\xfe"

async def main():
    producer = AIOKafkaProducer(bootstrap_servers=sys.argv[1])
    await producer.start()
    try:
        headers = [(Raw("x"), b"v"), ("ce_id", b"raw-1")]
        await producer.send_and_wait(
            sys.argv[2], b"{}", key=sys.argv[3].encode(), headers=headers,
            partition=int(sys.argv[4]),
        )
    finally:
        await producer.stop()

asyncio.run(main())
"""


async def test_a_header_name_that_is_no_utf8_is_dead_lettered_and_the_worker_goes_on(
    one: OneWorker,
) -> None:
    """aiokafka's record parser raised UnicodeDecodeError on every fetch of the record's
    partition: the worker crashed, restarted on the same offset and crashed again."""
    dep, worker, settings = one.dep, one.worker, one.dep.settings
    partition = rb.partition_of(settings, HEADER_TENANT)
    args = [one.broker, settings.commands_topic, HEADER_TENANT, str(partition)]
    env = {**os.environ, "AIOKAFKA_NO_EXTENSIONS": "1"}
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", _PRODUCE, *args],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    await rb.next_answered(dep, HEADER_TENANT, 60)
    assert not worker.exited()
    key = HEADER_TENANT.encode()
    # (The letter and the outcome behind it are produced together: either may land first;
    # then a second of quiet, so that a second letter just behind it shows too.)
    dead = await dep.read_topic(
        settings.dlq_topic, idle_polls=2, until=lambda rs: any(r.key == key for r in rs)
    )
    [letter] = [r for r in dead if r.key == key]
    headers = dict(letter.headers)
    assert headers["paystream-dlq-reason"] == b"not_a_cloudevent", headers
    assert letter.value == b"{}"


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


async def _unreadable_letters(dep: Deployment) -> list[tuple[str, int, int]]:
    """Where each `unreadable_batch` dead letter's stand-in was: (topic, partition, offset)."""
    dead = await dep.read_topic(dep.settings.dlq_topic)
    return [
        _source(r)
        for r in dead
        if dict(r.headers).get("paystream-dlq-reason") == b"unreadable_batch"
    ]


# Last here: it restarts the worker.
async def test_a_batch_no_parser_reads_is_dead_lettered_once_and_committed_past(
    one: OneWorker,
) -> None:
    """A batch no parser reads, of several records (review h66a): its stand-in covered
    only its own offset. The worker's continuity guard read the batch's other offsets as
    a gap, the broker sent the same batch back and the read made a second stand-in; last
    on its partition, the batch left the committed offset inside it, so `paystream
    doctor` reported commands waiting on an idle, healthy worker, and each restart
    dead-lettered it once more."""
    dep, tenant = one.dep, ONCE_TENANT
    topic = dep.settings.commands_topic
    record_batches.install(dep.settings)  # (as `paystream doctor` has: cli/base.py)
    partition = rb.partition_of(dep.settings, tenant)
    poison = rb.batch([rb.record(i, tenant.encode(), b"{}", _CE) for i in range(5)], bad_crc=True)
    code, offset = await rb.produce_at(one.broker, topic, partition, poison)
    assert (code, offset) == (0, 0), "the batch must open its partition: no other tenant's"
    # Last on its partition: committed past the whole batch, and nothing waits.
    await _until_committed(dep, one.broker, partition, 5)
    figure = await doctor.check_workers_keep_up(dep.settings)
    assert figure.startswith("caught up"), figure
    # A command after it: no gap read, no second stand-in.
    await rb.next_answered(dep, tenant, 45)
    assert not one.worker.exited()
    # Restarted on the committed offset, a worker is not handed the batch again.
    await asyncio.to_thread(one.restart)
    await rb.next_answered(dep, tenant, 45)
    letters = await _unreadable_letters(dep)
    assert [s for s in letters if s[:2] == (topic, partition)] == [(topic, partition, 0)], letters
    # (Nor any other batch the module wrote before: each dead-lettered once.)
    assert len(letters) == len(set(letters)), letters

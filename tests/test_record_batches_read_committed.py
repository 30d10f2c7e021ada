"""With streams/record_batches.py installed (every `paystream` CLI command, the worker,
the ingress), a read_committed consumer reads past a transaction marker (review h64j:
it raised TypeError on every fetch that reached one: aiokafka reads a control batch's
marker with ``next(batch)``, and the ``_Batch`` wrapper had no ``__next__``).
`paystream doctor`'s "workers keep up" check reads the commands topic read_committed,
after an upstream transactional producer too (the case review h59e fixed)."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.consumer import fetcher

from paystream import doctor
from paystream.settings import Settings
from paystream.streams.admin import bootstrap_servers, ensure_topics
from paystream.streams.record_batches import LenientMemoryRecords


async def _transaction(bootstrap: str, topic: str, tag: str, n: int = 3) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"tx-{tag}")
    await producer.start()
    try:
        async with producer.transaction():
            for _ in range(n):
                await producer.send_and_wait(topic, b"{}", key=b"acme", partition=0)
    finally:
        await producer.stop()


async def test_a_read_committed_consumer_reads_past_a_transaction_marker(
    kafka_bootstrap: str, new_topic, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fetcher, "MemoryRecords", LenientMemoryRecords)  # (install())
    topic = await new_topic(partitions=1, prefix="h64j")
    await _transaction(kafka_bootstrap, topic, uuid.uuid4().hex[:8])
    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
        enable_auto_commit=False, isolation_level="read_committed",
    )  # fmt: skip
    consumer.assign([tp])
    await consumer.start()
    try:
        got = await consumer.getmany(tp, timeout_ms=5000, max_records=10)
    finally:
        await consumer.stop()
    assert len(got.get(tp, [])) == 3


async def test_doctor_keep_up_after_a_transactional_producer_as_the_cli_runs_it(
    stack_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fetcher, "MemoryRecords", LenientMemoryRecords)  # (cli/base.py)
    monkeypatch.setattr(doctor, "KEEP_UP_WATCH_S", 1.0)
    tag = uuid.uuid4().hex[:8]
    settings = stack_settings.model_copy(
        update={"commands_topic": f"{tag}.commands", "app_id": f"keepup-{tag}"}
    )
    bootstrap = bootstrap_servers(settings.require_broker())
    await ensure_topics(settings)
    await _transaction(bootstrap, settings.commands_topic, tag)
    tp = TopicPartition(settings.commands_topic, 0)
    # The workers' group has committed past the last record (Faust: batch[-1] + 1).
    worker = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=settings.app_id, enable_auto_commit=False
    )
    worker.assign([tp])
    await worker.start()
    try:
        await worker.commit({tp: 3})
    finally:
        await worker.stop()
    figure = await doctor.check_workers_keep_up(settings)
    assert figure.startswith("caught up: nothing waiting"), figure

"""doctor's "workers keep up" on a partition whose last offset is a transaction's commit
marker (an upstream transactional producer): caught up, not a command waiting (review h59e)."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from paystream import doctor
from paystream.settings import Settings
from paystream.streams.admin import bootstrap_servers, ensure_topics


async def test_caught_up_after_a_transactional_producer_passes(
    stack_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(doctor, "KEEP_UP_WATCH_S", 1.0)
    tag = uuid.uuid4().hex[:8]
    settings = stack_settings.model_copy(
        update={"commands_topic": f"{tag}.commands", "app_id": f"keepup-{tag}"}
    )
    bootstrap = bootstrap_servers(settings.require_broker())
    await ensure_topics(settings)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"tx-{tag}")
    await producer.start()
    try:
        async with producer.transaction():
            for _ in range(3):
                await producer.send_and_wait(
                    settings.commands_topic, b"{}", key=b"acme", partition=0
                )
    finally:
        await producer.stop()
    tp = TopicPartition(settings.commands_topic, 0)
    # A worker (Faust) reads all three and commits past the last record it was handed.
    worker = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=settings.app_id, enable_auto_commit=False,
        auto_offset_reset="earliest", isolation_level="read_committed",
    )  # fmt: skip
    worker.assign([tp])
    await worker.start()
    try:
        got = await worker.getmany(tp, timeout_ms=5000, max_records=10)
        records = got.get(tp, [])
        assert len(records) == 3
        end = (await worker.end_offsets([tp]))[tp]
        assert end > records[-1].offset + 1  # the marker's offset (the case under test)
        await worker.commit({tp: records[-1].offset + 1})  # what Faust commits (batch[-1] + 1)
    finally:
        await worker.stop()
    figure = await doctor.check_workers_keep_up(settings)
    assert figure.startswith("caught up: nothing waiting"), figure

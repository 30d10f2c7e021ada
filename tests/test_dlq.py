"""`paystream dlq replay` commits its progress: an interrupted replay is not repeated."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from paystream.dlq import read_parked, replay
from paystream.streams.admin import bootstrap_servers

pytestmark = [pytest.mark.asyncio(loop_scope="session")]


class Interrupted(Exception):
    pass


async def test_an_interrupted_replay_resumes_where_it_stopped(deployment_factory: Any) -> None:
    dep = await deployment_factory()
    settings = dep.settings
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers(settings.require_broker()))
    await producer.start()
    try:
        for i in range(7):
            await producer.send_and_wait(
                settings.dlq_topic, f"junk {i}".encode(), key=b"acme", partition=i % 2
            )
    finally:
        await producer.stop()

    def stop_after_three(done: int, total: int) -> None:
        if done == 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        await replay(settings, [settings.dlq_topic], progress=stop_after_three)
    left, consumer = await read_parked(settings, [settings.dlq_topic], committed_only=True)
    await consumer.stop()
    assert len(left) == 4
    again = await replay(settings, [settings.dlq_topic])
    assert sorted(r.value for r in again) == sorted(r.value for r in left)
    assert await replay(settings, [settings.dlq_topic]) == []

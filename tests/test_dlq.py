"""`paystream dlq replay` commits its progress: an interrupted replay is not repeated."""

from __future__ import annotations

from typing import Any

import pytest

from paystream.dlq import read_parked, replay

pytestmark = [pytest.mark.asyncio(loop_scope="session")]


class Interrupted(Exception):
    pass


async def test_an_interrupted_replay_resumes_where_it_stopped(deployment_factory: Any) -> None:
    dep = await deployment_factory()
    settings = dep.settings
    await dep.produce(
        settings.dlq_topic, *((b"acme", f"junk {i}".encode(), i % 2) for i in range(7))
    )

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

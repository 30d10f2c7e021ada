"""The per-partition stall gauge's clock after a rebalance hands a partition away and back
(review h67m): it counts from when it is first seen behind again, not from this worker's
last commit on it, nor from before it went away; /readyz's per-agent clock is unchanged."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from paystream.agents.offsets import DurableOffsets
from tests.agents.test_partition_stall import P0, P1, TOPIC, StandInConsumer, _event

pytestmark = pytest.mark.asyncio


async def test_gauge_after_a_partition_comes_back() -> None:
    consumer = StandInConsumer()
    app = SimpleNamespace(consumer=consumer, consumer_generation_id=1)
    now = [1000.0]
    offsets = DurableOffsets(app, agent="h67m", topic=TOPIC, clock=lambda: now[0])  # type: ignore[arg-type]
    consumer.high[P1] = 3
    offsets.advance([_event(app, P1, 2)])
    await offsets.commit()  # P1 progress at 1000
    assert offsets.partition_stalls() == {}
    consumer.high[P1] = 10  # behind again, stuck
    now[0] = 1100
    assert offsets.partition_stalls() == {P1: 0.0}
    now[0] = 1200
    assert offsets.partition_stalls() == {P1: 100.0}
    # handed away (a peer drains and commits it), a scrape meanwhile
    app.consumer_generation_id = 2
    consumer.assigned = {P0}
    now[0] = 1300
    assert offsets.partition_stalls() == {}
    consumer._committed_offset[P1] = 10
    # handed back at 5000 with a new backlog
    app.consumer_generation_id = 3
    consumer.assigned = {P0, P1}
    consumer.high[P1] = 15
    now[0] = 5000
    assert offsets.partition_stalls() == {P1: 0.0}
    now[0] = 5030
    assert offsets.partition_stalls() == {P1: 30.0}
    got = offsets.stalled_for()
    assert got is not None and got[0] == 5

"""``paystream_consumer_lag_records`` from an agent's durable offsets, across partitions
moving away and back (the consumer is a stand-in: only its offsets matter here)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP
from prometheus_client import REGISTRY

from paystream.agents.offsets import DurableOffsets, Stall, stalls

pytestmark = pytest.mark.asyncio

TOPIC = "lag-test.commands"
P0 = TP(TOPIC, 0)


class StandInConsumer:
    """What DurableOffsets reads of Faust's consumer: assignment, highwater, commit, and
    the committed offsets Faust reads at an assignment."""

    def __init__(self) -> None:
        self.assigned = {P0}
        self.high = {P0: 0}
        self._committed_offset: dict[TP, int] = {}

    def assignment(self) -> set[TP]:
        return set(self.assigned)

    def highwater(self, tp: TP) -> int:
        return self.high[tp]

    async def _commit(self, offsets: dict[TP, int]) -> bool:
        return True


def _event(app: Any, offset: int) -> Any:
    message = SimpleNamespace(
        tp=P0, offset=offset, key=b"k", generation_id=app.consumer_generation_id
    )
    return SimpleNamespace(message=message)


def _on_clock(app: Any, agent: str, now: list[float]) -> DurableOffsets:
    """Durable offsets whose clock reads ``now[0]``."""
    return DurableOffsets(app, agent=agent, topic=TOPIC, clock=lambda: now[0])


def _lag(agent: str) -> float | None:
    labels = {"agent": agent, "topic": TOPIC, "partition": "0"}
    return REGISTRY.get_sample_value("paystream_consumer_lag_records", labels)


async def test_lag_follows_commits_and_the_group_s_offset_after_a_partition_comes_back() -> None:
    consumer = StandInConsumer()
    app = SimpleNamespace(consumer=consumer, consumer_generation_id=1)
    offsets = DurableOffsets(app, agent="lag-a", topic=TOPIC)  # type: ignore[arg-type]
    consumer.high[P0] = 100
    assert _lag("lag-a") == 100  # never committed by the group: all of it to do
    offsets.advance([_event(app, i) for i in range(60)])
    await offsets.commit()
    assert _lag("lag-a") == 40
    offsets.advance([_event(app, i) for i in range(60, 100)])
    await offsets.commit()
    assert _lag("lag-a") == 0 and offsets.committed_at > 0
    # The partition moves to another worker, which handles 100..4999, and comes back.
    app.consumer_generation_id = 2
    consumer.assigned = set()
    assert _lag("lag-a") is None  # not this worker's: no sample
    app.consumer_generation_id = 3
    consumer.assigned = {P0}
    consumer._committed_offset[P0] = 5000  # read by Faust at the assignment
    consumer.high[P0] = 5000
    assert _lag("lag-a") == 0  # idle, not stalled (this worker's old 100 no longer counts)
    await offsets.commit()  # the periodic commit, nothing ready
    assert _lag("lag-a") == 0


async def test_an_agent_behind_without_progress_is_stalled_from_when_it_was_seen_behind() -> None:
    consumer = StandInConsumer()
    app = SimpleNamespace(consumer=consumer, consumer_generation_id=1)
    now = [1000.0]
    offsets = _on_clock(app, "stall-a", now)
    now[0] += 3600  # an hour's quiet since it started: not a stall
    assert offsets.stalled_for() is None  # nothing to handle
    consumer.high[P0] = 50  # a burst arrives
    now[0] += 1
    assert offsets.stalled_for() == (50, 0.0)  # counted from when seen behind
    now[0] += 30
    assert offsets.stalled_for() == (50, 30.0)
    offsets.advance([_event(app, i) for i in range(20)])
    await offsets.commit()  # progress: counted from the commit
    now[0] += 10
    assert offsets.stalled_for() == (30, 10.0)
    assert stalls([offsets], after=10) == [Stall("stall-a", 30, 10.0)]
    assert stalls([offsets], after=10.5) == []
    # Rebalances are not progress: a peer restarting every minute must not hide a stall.
    for generation in (2, 3, 4):
        app.consumer_generation_id = generation
        await offsets.commit()
        now[0] += 60
    assert offsets.stalled_for() == (50, 190.0)
    offsets.advance([_event(app, i) for i in range(50)])
    await offsets.commit()
    assert offsets.stalled_for() is None  # caught up
    assert Stall("commands", 40, 130.4).describe() == (
        "commands agent stalled: 40 records behind, no progress for 130 s"
    )


async def test_a_partition_whose_records_are_gone_is_not_behind() -> None:
    """The group committed 10; retention has removed everything up to 50 since, and no
    record came: the guard reports 50 passed, and nothing is left to handle."""
    consumer = StandInConsumer()
    consumer._committed_offset[P0] = 10
    consumer.high[P0] = 50
    app = SimpleNamespace(consumer=consumer, consumer_generation_id=1)
    now = [0.0]
    offsets = _on_clock(app, "trim", now)
    assert offsets.lag() == {P0: 40}
    offsets.passed(P0, 50)
    now[0] += 3600
    assert offsets.lag() == {P0: 0} and stalls([offsets], after=120) == []
    app.consumer_generation_id = 2  # reassigned: what was passed is asked again
    await offsets.commit()
    assert offsets.lag() == {P0: 40}

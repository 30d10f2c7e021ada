"""Durable offsets rules the suite did not pin (mutation testing, round 3)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from paystream.agents.offsets import DurableOffsets
from tests.agents.test_offsets_lag import P0, TOPIC, StandInConsumer, _event

pytestmark = pytest.mark.asyncio


class Recording(StandInConsumer):
    def __init__(self, ok: bool = True) -> None:
        super().__init__()
        self.ok = ok
        self.commits: list[dict[TP, int]] = []
        self.during: Any = None  # called while a commit is in flight

    async def _commit(self, offsets: dict[TP, int]) -> bool:
        self.commits.append(dict(offsets))
        if self.during is not None:
            self.during()
        return self.ok


def _offsets(consumer: Recording, agent: str, now: list[float] | None = None) -> tuple[Any, Any]:
    app = SimpleNamespace(consumer=consumer, consumer_generation_id=1)
    clock = (lambda: now[0]) if now is not None else None
    kw = {"clock": clock} if clock else {}
    return app, DurableOffsets(app, agent=agent, topic=TOPIC, **kw)  # type: ignore[arg-type]


async def test_a_batch_finishing_after_a_later_one_never_moves_the_commit_back() -> None:
    consumer = Recording()
    app, offsets = _offsets(consumer, "order-a")
    offsets.advance([_event(app, 10)])
    offsets.advance([_event(app, 5)])  # an earlier batch's late completion
    await offsets.commit()
    assert consumer.commits == [{P0: 11}]


async def test_an_offset_made_ready_while_a_commit_is_in_flight_is_committed_next() -> None:
    consumer = Recording()
    app, offsets = _offsets(consumer, "inflight-a")
    offsets.advance([_event(app, 4)])
    consumer.during = lambda: offsets.advance([_event(app, 9)])
    await offsets.commit()
    consumer.during = None
    await offsets.commit()
    assert consumer.commits == [{P0: 5}, {P0: 10}]


async def test_a_commit_refused_during_a_rebalance_is_not_progress() -> None:
    """Faust's commit answers False while rebalancing: nothing was committed, so the lag
    and the stall clock (the liveness probe) must not count it as progress."""
    consumer = Recording(ok=False)
    consumer.high[P0] = 50
    now = [100.0]
    app, offsets = _offsets(consumer, "refused-a", now)
    assert offsets.stalled_for() == (50, 0.0)
    offsets.advance([_event(app, i) for i in range(50)])
    now[0] += 30
    await offsets.commit()
    assert offsets.committed_at == 0
    assert offsets.lag() == {P0: 50}
    now[0] += 30
    assert offsets.stalled_for() == (50, 60.0)


async def test_a_commit_landing_after_a_rejoin_is_not_published_as_ours() -> None:
    """aiokafka retries a commit under the generation current at each try: one stuck
    through a rejoin landed for partitions that may be another worker's by then, and was
    published as this worker's committed offset, which nothing lowers (review h68ac)."""
    consumer = Recording()
    app = SimpleNamespace(consumer=consumer, consumer_generation_id=1)
    published: dict[int, int] = {}
    offsets = DurableOffsets(app, agent="rejoin-a", topic=TOPIC, published=published)  # type: ignore[arg-type]
    offsets.advance([_event(app, 7)])

    def rejoined() -> None:
        app.consumer_generation_id = 2

    consumer.during = rejoined
    await offsets.commit()
    assert consumer.commits == [{P0: 8}]
    assert published == {}
    consumer.during = None
    offsets.advance([_event(app, 9)])
    await offsets.commit()
    assert published == {P0.partition: 10}

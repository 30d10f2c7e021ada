"""A commit cut off by the uncommitted bound's per-try wait (79ad183) still landed, but what
records it ran after the cut, so it never ran: with every commit slower than the wait,
the agent saw itself over the bound for good and handled no more payments (review
h68af). The commit and its recording now run as one task."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from faust.types import TP

from paystream.agents import commands
from paystream.agents.commands import _within_uncommitted_bound
from paystream.agents.offsets import DurableOffsets
from paystream.agents.overlap import DeliveryChain
from tests.agents.test_offsets_lag import P0, StandInConsumer, _event

pytestmark = pytest.mark.asyncio


class SlowButLanding(StandInConsumer):
    """Every commit lands, after ``latency`` seconds (a busy coordinator, say)."""

    def __init__(self, latency: float) -> None:
        super().__init__()
        self.latency = latency
        self.landed: list[dict[TP, int]] = []

    async def _commit(self, offsets: dict[TP, int]) -> bool:
        await asyncio.sleep(self.latency)
        self.landed.append(dict(offsets))
        return True


async def test_commits_slower_than_the_retry_period_still_let_the_agent_go_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    retry = 0.02
    consumer = SlowButLanding(latency=retry * 1.5)  # production: a 1.5 s commit
    app = SimpleNamespace(consumer=consumer, consumer_generation_id=1, rebalancing=False)
    monkeypatch.setattr(commands, "app", app)
    monkeypatch.setattr(commands, "UNCOMMITTED_RETRY_SECONDS", retry)
    offsets = DurableOffsets(app)  # type: ignore[arg-type]
    offsets.advance([_event(app, o) for o in range(900)])  # handled, delivered
    batch = [_event(app, o) for o in range(900, 1_100)]
    try:
        # 50 retry periods: every one of its commits lands in 1.5 of them.
        await asyncio.wait_for(
            _within_uncommitted_bound(offsets, DeliveryChain(), batch, moved=lambda: False),
            retry * 50,
        )
    except TimeoutError:
        pytest.fail(
            f"the agent is still waiting after {len(consumer.landed)} commits of "
            f"{{P0: 900}} landed; done_up_to={offsets.done_up_to(P0)}"
        )
    assert offsets.done_up_to(P0) == 900


async def test_a_commit_whose_caller_was_cancelled_is_still_recorded_when_it_lands() -> None:
    """The same hole, seen from DurableOffsets alone: what landed is not known as
    committed (lag, stall clock, COMMITTED for the limits) until another round trip."""
    consumer = SlowButLanding(latency=0.05)
    app = SimpleNamespace(consumer=consumer, consumer_generation_id=1)
    published: dict[int, int] = {}
    offsets = DurableOffsets(app, published=published)  # type: ignore[arg-type]
    offsets.advance([_event(app, 7)])
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(offsets.commit(), 0.01)
    deadline = asyncio.get_running_loop().time() + 5
    while offsets.done_up_to(P0) != 8:  # (until it landed and was recorded)
        assert asyncio.get_running_loop().time() < deadline, consumer.landed
        await asyncio.sleep(0.005)
    assert consumer.landed == [{P0: 8}]
    assert offsets.done_up_to(P0) == 8
    assert published == {P0.partition: 8}

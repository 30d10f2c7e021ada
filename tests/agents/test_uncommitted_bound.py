"""The command agent handles at most MAX_UNCOMMITTED records of a partition past its
committed offset: past it, it delivers and commits what it has in hand, and waits while
that commit does not land. A commit stalled (aiokafka retries a coordinator error for
ever) while the agent went on, the tenant limits dropped their oldest decisions, and a
payment refused `rate_limited` or `quota_exceeded` was charged on its redelivery
(review finding, reproduced with the limits' REPLAY_MEMORY of 2,048 decisions)."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from paystream.agents import commands
from paystream.agents.commands import MAX_UNCOMMITTED, _within_uncommitted_bound
from paystream.agents.offsets import DurableOffsets
from paystream.agents.overlap import DeliveryChain
from paystream.tenancy.limits import REPLAY_MEMORY
from tests.agents.test_offsets_lag import P0, StandInConsumer, _event

pytestmark = pytest.mark.asyncio


class Committing(StandInConsumer):
    """Its commits fail until ``lands``: an error (aiokafka's retries given up on), or a
    commit that does not return at all (retried for ever) with ``hangs``."""

    def __init__(self) -> None:
        super().__init__()
        self.lands = False
        self.hangs = False
        self.commits: list[dict[TP, int]] = []

    async def _commit(self, offsets: dict[TP, int]) -> bool:
        self.commits.append(dict(offsets))
        while self.hangs and not self.lands:
            await asyncio.sleep(0.005)
        if not self.lands:
            raise RuntimeError("coordinator not available")
        return True


@pytest.fixture
def agent(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Committing, DurableOffsets]:
    consumer = Committing()
    app = SimpleNamespace(consumer=consumer, consumer_generation_id=1, rebalancing=False)
    monkeypatch.setattr(commands, "app", app)
    monkeypatch.setattr(commands, "UNCOMMITTED_RETRY_SECONDS", 0.01)
    return app, consumer, DurableOffsets(app)  # type: ignore[arg-type]


async def _until(condition: Any, seconds: float = 5.0) -> None:
    """Until ``condition()`` holds (failing past ``seconds``)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.005)


async def _turns(n: int = 50) -> None:
    """Let the loop run ``n`` turns: what could happen without a clock, has."""
    for _ in range(n):
        await asyncio.sleep(0)


def _handled(app: Any, offsets: DurableOffsets, first: int, last: int) -> None:
    offsets.advance([_event(app, o) for o in range(first, last + 1)])


@pytest.mark.parametrize("hangs", [False, True])
async def test_past_the_bound_the_agent_waits_until_its_commit_lands(
    agent: tuple[Any, Committing, DurableOffsets], hangs: bool
) -> None:
    app, consumer, offsets = agent
    consumer.hangs = hangs
    _handled(app, offsets, 0, 899)  # handled, delivered, not committed
    batch = [_event(app, o) for o in range(900, 1_100)]
    waiting = asyncio.ensure_future(
        _within_uncommitted_bound(offsets, DeliveryChain(), batch, moved=lambda: False)
    )
    await _until(lambda: len(consumer.commits) >= (1 if hangs else 3))
    await _turns()
    assert not waiting.done(), "went on past the bound with the commit not landing"
    assert len(consumer.commits) == 1 if hangs else len(consumer.commits) > 2
    assert consumer.commits[-1] == {P0: 900}
    consumer.lands = True
    await asyncio.wait_for(waiting, 1)
    assert offsets.done_up_to(P0) == 900


async def test_it_waits_for_the_batch_in_hand_to_be_delivered_first(
    agent: tuple[Any, Committing, DurableOffsets],
) -> None:
    app, consumer, offsets = agent
    consumer.lands = True
    _handled(app, offsets, 0, 499)
    chain = DeliveryChain()
    delivered = asyncio.Event()

    async def process() -> None:
        return None

    async def deliver(_: None) -> None:
        await delivered.wait()
        _handled(app, offsets, 500, 999)

    await chain.run(process(), deliver)
    batch = [_event(app, o) for o in range(1_000, 1_400)]
    waiting = asyncio.ensure_future(
        _within_uncommitted_bound(offsets, chain, batch, moved=lambda: False)
    )
    await _turns()
    assert not waiting.done() and consumer.commits == []
    delivered.set()
    await asyncio.wait_for(waiting, 1)
    assert consumer.commits == [{P0: 1_000}]


async def test_within_the_bound_nothing_waits_or_commits(
    agent: tuple[Any, Committing, DurableOffsets],
) -> None:
    app, consumer, offsets = agent
    _handled(app, offsets, 0, 499)
    batch = [_event(app, o) for o in range(500, MAX_UNCOMMITTED)]
    await asyncio.wait_for(
        _within_uncommitted_bound(offsets, DeliveryChain(), batch, moved=lambda: False), 1
    )
    assert consumer.commits == []


async def test_partitions_moved_end_the_wait(agent: tuple[Any, Committing, DurableOffsets]) -> None:
    app, consumer, offsets = agent
    _handled(app, offsets, 0, 999)
    moved = [False]
    batch = [_event(app, o) for o in range(1_000, 1_100)]
    waiting = asyncio.ensure_future(
        _within_uncommitted_bound(offsets, DeliveryChain(), batch, moved=lambda: moved[0])
    )
    await _until(lambda: len(consumer.commits) >= 2)  # tried, refused, waiting
    assert not waiting.done()
    moved[0] = True  # the caller then drops the batch
    await asyncio.wait_for(waiting, 1)


async def test_a_batch_past_the_bound_with_nothing_to_commit_goes_on(
    agent: tuple[Any, Committing, DurableOffsets],
) -> None:
    """Records the group never got (skipped on the broker) put the batch past the bound
    with nothing of ours to commit: waiting cannot help."""
    app, consumer, offsets = agent
    consumer.lands = True
    batch = [_event(app, o) for o in range(MAX_UNCOMMITTED + 50, MAX_UNCOMMITTED + 60)]
    await asyncio.wait_for(
        _within_uncommitted_bound(offsets, DeliveryChain(), batch, moved=lambda: False), 1
    )


async def test_the_limits_keep_the_decisions_of_twice_the_bound() -> None:
    """A redelivery's and the run after it's, before the first commit."""
    assert REPLAY_MEMORY >= 2 * MAX_UNCOMMITTED


async def test_a_hung_commit_past_the_bound_is_said(
    agent: tuple[Any, Committing, DurableOffsets],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A commit aiokafka retries for ever (the coordinator answering NOT_COORDINATOR while
    __consumer_offsets is under-replicated or moving) never returned, and the line written
    for this very wait ("... the commit does not land; handling no more until it does")
    was never logged: the agent stopped handling commands without a word (review h68ac)."""
    app, consumer, offsets = agent
    consumer.hangs = True
    monkeypatch.setattr(commands, "UNCOMMITTED_RETRY_SECONDS", 0.01)
    _handled(app, offsets, 0, 899)
    batch = [_event(app, o) for o in range(900, 1_100)]
    caplog.set_level(logging.WARNING, logger="paystream.agents.commands")
    waiting = asyncio.ensure_future(
        _within_uncommitted_bound(offsets, DeliveryChain(), batch, moved=lambda: False)
    )
    try:
        await _until(lambda: any("commit does not land" in r.getMessage() for r in caplog.records))
        assert not waiting.done()  # (it waits, rightly)
    finally:
        consumer.lands = True
        await asyncio.wait_for(waiting, 5)

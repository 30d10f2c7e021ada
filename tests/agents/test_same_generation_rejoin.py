"""A hand-over that gives up on a batch still processing, then a rejoin that returns the
same generation: the batch is not delivered (_deliver), Faust seeks back to the committed
offset, and the continuity guard took the records sought back to for handled ones; the
next batch's offsets were committed past them: commands lost (review finding)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP, Message
from mode.utils.queues import FlowControlEvent

from paystream.agents import commands
from paystream.agents.continuity import ContinuityGuard

pytestmark = pytest.mark.asyncio(loop_scope="session")
TOPIC = "t.commands"
P0 = TP(TOPIC, 0)
GEN = 5


def ev(offset: int) -> Any:
    return SimpleNamespace(
        message=Message(TOPIC, 0, offset, 0.0, 0, None, b"k", b"v", None, tp=P0, generation_id=GEN)
    )


@dataclass
class Consumer:
    committed: dict[TP, int] = field(default_factory=lambda: {P0: 10})
    commits: list[dict[TP, int]] = field(default_factory=list)

    def assignment(self) -> set[TP]:
        return {P0}

    async def highwaters(self, *tps: TP) -> dict[TP, int]:
        return dict.fromkeys(tps, 13)  # (the sweep's: batch A's records end the partition)

    async def _commit(self, offsets: dict[TP, int]) -> bool:
        self.commits.append(dict(offsets))
        self.committed.update(offsets)
        return True


async def test_a_same_generation_rejoin_redoes_the_batch_given_up_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    consumer = Consumer()
    flow = FlowControlEvent(initially_suspended=False)
    app = SimpleNamespace(
        consumer=consumer,
        flow_control=flow,
        consumer_generation_id=GEN,
        rebalancing=False,
        conf=SimpleNamespace(consumer_auto_offset_reset="earliest"),
    )
    monkeypatch.setattr(commands, "app", app)
    monkeypatch.setattr(commands, "_abandoned_at", None)
    monkeypatch.setattr(commands, "_assignments", 0)
    monkeypatch.setattr(commands, "_delivering", 0)
    monkeypatch.setattr(commands, "REBALANCE_DRAIN_SECONDS", 0.05)
    monkeypatch.setattr(commands, "COMMIT_INTERVAL_SECONDS", 3600)

    async def read_committed(tps):
        return {tp: consumer.committed.get(tp) for tp in tps}

    async def read_range(tp, start, end):
        return [ev(o) for o in range(start, end)], end

    def guard(app_: Any, topic: str, **kwargs: Any) -> ContinuityGuard:
        return ContinuityGuard(
            app_, topic, read_range=read_range, read_committed=read_committed, **kwargs
        )

    monkeypatch.setattr(commands, "ContinuityGuard", guard)
    monkeypatch.setattr(commands.commands_topic, "get_topic_name", lambda: TOPIC)

    release_a = asyncio.Event()
    delivered: list[int] = []

    class Runner:
        def rescan_expiry(self):
            pass

        async def process_batch(self, events):
            if events[0].message.offset == 10 and not release_a.is_set():
                await release_a.wait()  # slow provider calls: still processing at the hand-over
            return events

        async def deliver_batch(self, events):
            delivered.extend(e.message.offset for e in events)

        async def aclose(self):
            pass

    monkeypatch.setattr(commands, "runner", Runner())
    feed: asyncio.Queue = asyncio.Queue()

    async def take(*_: Any, **__: Any) -> Any:
        while True:
            yield await feed.get()

    monkeypatch.setattr(commands, "take_batches", take)
    stream = SimpleNamespace(channel=SimpleNamespace(queue=asyncio.Queue()))
    agent = asyncio.ensure_future(commands.process_commands(stream))
    await feed.put([ev(10), ev(11), ev(12)])  # batch A: processing, stuck
    await asyncio.sleep(0.05)
    await commands.finish_batches_before_handing_over(None)  # hook gives up on A
    assert commands._abandoned_at == 0
    await commands._count_assignment(None)  # rejoin: SAME generation (GEN)
    release_a.set()  # A finishes processing: dropped
    await asyncio.sleep(0.05)
    # Faust sought P0 back to the committed offset 10 and redelivers 10..13
    await feed.put([ev(10), ev(11), ev(12), ev(13)])
    await asyncio.sleep(0.1)
    chain, offsets = commands._IN_HAND[0]
    await chain.drain(1)
    await offsets.commit()
    agent.cancel()
    with pytest.raises(asyncio.CancelledError):
        await agent
    # An offset is committed only once every record before it is durable.
    assert delivered == [10, 11, 12, 13], (delivered, consumer.commits)
    assert consumer.commits == [{P0: 14}]

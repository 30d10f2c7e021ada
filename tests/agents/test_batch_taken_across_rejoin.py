"""A batch taken from the delivery queue just before a rebalance suspends flow, where the
rejoin returns the same generation (as test_same_generation_rejoin.py): take_batches
waited the rebalance out and kept the batch (its generation check passed), the agent
counted the assignments only after that, and the batch was delivered, its records of a
partition that had moved to another worker included: their table changes written into
the new owner's changelog partitions while it ran the same records (review finding).
The same across the continuity guard's direct read of a partition's missing tail.
A dropped batch's records of a partition still ours are not lost: the guard, reset by
the assignment, reads them again."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
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
P0, P1 = TP(TOPIC, 0), TP(TOPIC, 1)
GEN = 5
ReadRange = Callable[[TP, int, int], Awaitable[tuple[list[Any], int]]]


def ev(tp: TP, offset: int) -> Any:
    return SimpleNamespace(
        message=Message(
            TOPIC, tp.partition, offset, 0.0, 0, None, b"k", b"v", None, tp=tp, generation_id=GEN
        )
    )


@dataclass
class Consumer:
    owned: set[TP] = field(default_factory=lambda: {P0, P1})
    committed: dict[TP, int] = field(default_factory=lambda: {P0: 10, P1: 20})
    ends: dict[TP, int] = field(default_factory=lambda: {P0: 10, P1: 20})

    def assignment(self) -> set[TP]:
        return set(self.owned)

    async def highwaters(self, *tps: TP) -> dict[TP, int]:
        return {tp: self.ends[tp] for tp in tps}

    async def _commit(self, offsets: dict[TP, int]) -> bool:
        self.committed.update(offsets)
        return True


@dataclass
class Agent:
    consumer: Consumer
    flow: FlowControlEvent
    queue: asyncio.Queue[Any]
    delivered: list[tuple[int, int]]
    task: asyncio.Future[None]

    async def rebalance(self, owned: set[TP]) -> None:
        """Faust suspends flow, the hand-over hook runs, the rejoin returns the same
        generation with ``owned``, flow resumes."""
        self.flow.suspend()
        await commands.finish_batches_before_handing_over(None)
        self.consumer.owned = owned
        await commands._count_assignment(None)
        self.flow.resume()

    async def stop(self) -> None:
        await asyncio.sleep(0.4)
        chain, _offsets = commands._IN_HAND[0]
        await chain.drain(1)
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


def start(monkeypatch: pytest.MonkeyPatch, read_range: ReadRange, sweep: float = 0.5) -> Agent:
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
    monkeypatch.setattr(commands, "COMMIT_INTERVAL_SECONDS", 3600)
    monkeypatch.setattr(commands, "SWEEP_INTERVAL_SECONDS", sweep)
    # Widen take_batches' 2 ms wait for the rest of a fetch so the rebalance lands in it.
    monkeypatch.setattr(commands, "BATCH_WITHIN", 0.2)

    async def read_committed(tps: Any) -> dict[TP, int | None]:
        return {tp: consumer.committed.get(tp) for tp in tps}

    def guard(app_: Any, topic: str, **kwargs: Any) -> ContinuityGuard:
        return ContinuityGuard(
            app_,
            topic,
            read_range=read_range,
            read_committed=read_committed,
            sweep_interval=sweep,
            **kwargs,
        )

    monkeypatch.setattr(commands, "ContinuityGuard", guard)
    monkeypatch.setattr(commands.commands_topic, "get_topic_name", lambda: TOPIC)
    delivered: list[tuple[int, int]] = []

    class Runner:
        def rescan_expiry(self) -> None:
            pass

        async def process_batch(self, events: Any) -> Any:
            return events

        async def deliver_batch(self, events: Any) -> None:
            delivered.extend((e.message.partition, e.message.offset) for e in events)

        async def aclose(self) -> None:
            pass

    monkeypatch.setattr(commands, "runner", Runner())
    queue: asyncio.Queue[Any] = asyncio.Queue()
    stream = SimpleNamespace(channel=SimpleNamespace(queue=queue), app=app)
    task = asyncio.ensure_future(commands.process_commands(stream))
    return Agent(consumer, flow, queue, delivered, task)


async def _nothing(tp: TP, start: int, end: int) -> tuple[list[Any], int]:
    return [], end


async def test_a_batch_taken_before_a_same_generation_rejoin_is_not_delivered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = start(monkeypatch, _nothing)
    await asyncio.sleep(0.01)
    agent.queue.put_nowait(ev(P1, 20))  # fetched for the old assignment
    await asyncio.sleep(0.05)  # taken from the queue, waiting for the rest of the fetch
    await agent.rebalance({P0})  # P1 goes to another worker, which runs offset 20
    await agent.stop()
    assert (1, 20) not in agent.delivered, agent.delivered


async def test_records_read_directly_across_a_same_generation_rejoin_are_not_delivered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reading, release = asyncio.Event(), asyncio.Event()

    async def slow_read(tp: TP, start_: int, end: int) -> tuple[list[Any], int]:
        # The sweep's direct read of P1's missing tail (up to 30 s against a slow broker).
        reading.set()
        await release.wait()
        return [ev(tp, o) for o in range(start_, end)], end

    agent = start(monkeypatch, slow_read, sweep=0.02)
    agent.consumer.ends = {P0: 11, P1: 22}  # P1's 20..21 never reached the agent
    agent.queue.put_nowait(ev(P0, 10))  # one command, then quiet: the sweeps begin
    await asyncio.wait_for(reading.wait(), 5)
    await agent.rebalance({P0})
    release.set()
    await agent.stop()
    assert {(1, 20), (1, 21)}.isdisjoint(agent.delivered), agent.delivered


async def test_a_dropped_batchs_records_of_a_partition_still_ours_are_read_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def read(tp: TP, start_: int, end: int) -> tuple[list[Any], int]:
        return [ev(tp, o) for o in range(start_, end)], end

    agent = start(monkeypatch, read, sweep=0.05)
    agent.consumer.ends = {P0: 11, P1: 20}
    await asyncio.sleep(0.01)
    agent.queue.put_nowait(ev(P0, 10))
    await asyncio.sleep(0.05)
    await agent.rebalance({P0, P1})  # the same partitions; Faust redelivers nothing
    await agent.stop()
    assert agent.delivered == [(0, 10)]

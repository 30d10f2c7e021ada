"""No false stall from a quiet partition (review h67i).

A quiet partition whose only "lag" is an offset with no record to handle (a transactional
upstream producer's commit marker after its last command; a range retention emptied) is
cleared only by the continuity guard's sweep (``on_passed`` -> ``DurableOffsets.passed``),
and the command agent sweeps only while its delivery queue is empty. While a sibling
partition drains a backlog the queue never empties. Judged per partition (a first version
of review h67g's change), the quiet partition read as stalled: /readyz 503 and /healthz
failing, a restart whose successor saw the same. The probes judge the agent as a whole.
The second test is the control: with the queue empty, the sweep passes the marker.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP, Message
from mode.utils.queues import FlowControlEvent

from paystream.agents import commands
from paystream.agents.continuity import ContinuityGuard
from paystream.agents.offsets import DurableOffsets, stalls

pytestmark = pytest.mark.asyncio(loop_scope="session")
TOPIC = "h67i.commands"
P0, P1 = TP(TOPIC, 0), TP(TOPIC, 1)
GEN = 3


def ev(tp: TP, offset: int) -> Any:
    return SimpleNamespace(
        message=Message(
            TOPIC, tp.partition, offset, 0.0, 0, None, b"k", b"v", None, tp=tp, generation_id=GEN
        )
    )


@dataclass
class Consumer:
    # P1: its last command (offset 9) handled and committed (10); offset 10 is the
    # upstream producer's transaction commit marker, so the partition ends at 11.
    high: dict[TP, int] = field(default_factory=lambda: {P0: 0, P1: 11})
    _committed_offset: dict[TP, int] = field(default_factory=lambda: {P0: 0, P1: 10})
    commits: list[dict[TP, int]] = field(default_factory=list)

    def assignment(self) -> set[TP]:
        return {P0, P1}

    def highwater(self, tp: TP) -> int:
        return self.high[tp]

    async def highwaters(self, *tps: TP) -> dict[TP, int]:
        return {tp: self.high[tp] for tp in tps}

    async def _commit(self, offsets: dict[TP, int]) -> bool:
        self.commits.append(dict(offsets))
        return True


async def _until(ready: Callable[[], bool], timeout: float = 5.0) -> None:
    """Loop turns until ``ready()``; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0)


async def _run(monkeypatch: pytest.MonkeyPatch, *, queue_busy: bool) -> list[Any]:
    consumer = Consumer()
    app = SimpleNamespace(
        consumer=consumer,
        flow_control=FlowControlEvent(initially_suspended=False),
        consumer_generation_id=GEN,
        rebalancing=False,
        conf=SimpleNamespace(consumer_auto_offset_reset="earliest"),
    )
    now = [1000.0]
    monkeypatch.setattr(commands, "app", app)
    monkeypatch.setattr(commands, "_abandoned_at", None)
    monkeypatch.setattr(commands, "_assignments", 0)
    monkeypatch.setattr(commands, "_delivering", 0)
    monkeypatch.setattr(commands, "COMMIT_INTERVAL_SECONDS", 3600)
    monkeypatch.setattr(commands, "BUSY_SWEEP_SECONDS", 0.0, raising=False)
    monkeypatch.setattr(
        commands, "DurableOffsets", functools.partial(DurableOffsets, clock=lambda: now[0])
    )

    async def read_committed(tps: Any) -> dict[TP, int | None]:
        return {tp: consumer._committed_offset.get(tp) for tp in tps}

    async def read_range(tp: TP, start: int, end: int) -> tuple[list[Any], int]:
        if tp == P1:
            return [], end  # the reader passes over the control record: nothing there
        return [ev(tp, o) for o in range(start, end)], end

    def guard(app_: Any, topic: str, **kwargs: Any) -> ContinuityGuard:
        return ContinuityGuard(
            app_, topic, read_range=read_range, read_committed=read_committed,
            sweep_interval=0, **kwargs,
        )  # fmt: skip

    monkeypatch.setattr(commands, "ContinuityGuard", guard)
    monkeypatch.setattr(commands.commands_topic, "get_topic_name", lambda: TOPIC)

    class Runner:
        def rescan_expiry(self) -> None:
            pass

        async def process_batch(self, events: Any) -> Any:
            return events

        async def deliver_batch(self, events: Any) -> None:
            pass

        async def aclose(self) -> None:
            pass

    monkeypatch.setattr(commands, "runner", Runner())
    feed: asyncio.Queue[Any] = asyncio.Queue()

    async def take(*_: Any, **__: Any) -> Any:
        while True:
            yield await feed.get()

    monkeypatch.setattr(commands, "take_batches", take)
    queue: asyncio.Queue[Any] = asyncio.Queue()
    if queue_busy:
        queue.put_nowait(object())  # P0's backlog: more events waiting behind every batch
    stream = SimpleNamespace(channel=SimpleNamespace(queue=queue))
    agent = asyncio.ensure_future(commands.process_commands(stream))
    try:
        await _until(lambda: bool(commands._IN_HAND))  # the agent has started
        chain, offsets = commands._IN_HAND[0]
        done = 0
        for _ in range(70):  # 700 s of a backlog on P0, handled and committed every 10 s
            now[0] += 10
            consumer.high[P0] += 20
            before = chain._last
            await feed.put([ev(P0, o) for o in range(done, consumer.high[P0])])
            done = consumer.high[P0]
            await _until(lambda b=before: feed.empty() and chain._last is not b)  # (taken)
            await chain.drain(1)
            await offsets.commit()
            offsets.stalled_for()  # the probes ask every few seconds
        return stalls([offsets], after=120)
    finally:
        agent.cancel()
        with pytest.raises(asyncio.CancelledError):
            await agent


async def test_a_quiet_partition_with_only_a_commit_marker_is_no_stall_while_a_sibling_is_busy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    found = await _run(monkeypatch, queue_busy=True)
    assert not found, (
        "partition 1 has no record to handle (a commit marker), the agent committed "
        f"partition 0 every 10 s, yet /readyz and /healthz read: {found}"
    )


async def test_control_the_sweep_passes_the_marker_once_the_queue_is_empty(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert await _run(monkeypatch, queue_busy=False) == []

"""A batch whose insights the outcome agent gave up (its membership lapsed, a rebalance
began: review h61e) is counted once its partitions come back, never committed past
(review h61f): a rejoin that keeps the generation seeks back to the committed offset, and
the agent's continuity guard took the records read again for handled ones; and a later
batch of the same generation, counted at once, had its offsets committed past it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP, Message
from mode.utils.queues import FlowControlEvent

from paystream.agents import ledger_sink, member_lease
from paystream.agents.continuity import ContinuityGuard
from paystream.agents.membership import MembershipLease

pytestmark = pytest.mark.asyncio
TOPIC = "t.events"
P0 = TP(TOPIC, 0)
GEN = 5


def ev(offset: int) -> Any:
    return SimpleNamespace(
        message=Message(TOPIC, 0, offset, 0.0, 0, None, b"k", b"v", None, tp=P0, generation_id=GEN)
    )


class _Coordinator:
    member_id = "member-1"

    async def _do_heartbeat(self) -> bool:
        return True


@dataclass
class Consumer:
    committed: dict[TP, int] = field(default_factory=lambda: {P0: 10})
    commits: list[dict[TP, int]] = field(default_factory=list)

    def assignment(self) -> set[TP]:
        return {P0}

    async def highwaters(self, *tps: TP) -> dict[TP, int]:
        return dict.fromkeys(tps, 14)

    async def _commit(self, offsets: dict[TP, int]) -> bool:
        self.commits.append(dict(offsets))
        self.committed.update(offsets)
        return True


@dataclass
class OutcomeAgent:
    """The outcome agent's store_outcomes over a fake consumer, ledger and insights: the
    ledger's write of a batch starting at offset 10 is paused past the session timeout,
    and resumes with a rebalance begun."""

    app: Any
    lease: MembershipLease
    consumer: Consumer
    counted: list[int]
    feed: asyncio.Queue[list[Any]]
    task: asyncio.Future[None] | None = None

    async def put(self, offsets: list[int]) -> None:
        await self.feed.put([ev(o) for o in offsets])
        await asyncio.sleep(0.1)

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()  # (a worker stopping: the agent's final commit)
        with pytest.raises(asyncio.CancelledError):
            await self.task


def _outcome_agent(
    monkeypatch: pytest.MonkeyPatch,
    pauses_once: bool,
    pause: Callable[[Any, MembershipLease], None] | None = None,
) -> OutcomeAgent:
    consumer = Consumer()
    app = SimpleNamespace(
        consumer=consumer,
        flow_control=FlowControlEvent(initially_suspended=False),
        consumer_generation_id=GEN,
        rebalancing=False,
        conf=SimpleNamespace(consumer_auto_offset_reset="earliest"),
    )
    monkeypatch.setattr(ledger_sink, "app", app)
    monkeypatch.setattr(member_lease, "app", app)
    lease = MembershipLease(6.0, 1.0)
    lease.follow(_Coordinator())
    lease.accepted()
    monkeypatch.setattr(member_lease, "lease", lease)
    monkeypatch.setattr(ledger_sink, "lease", lease)
    monkeypatch.setattr(ledger_sink, "COMMIT_INTERVAL_SECONDS", 3600)
    monkeypatch.setattr(ledger_sink.events_topic, "get_topic_name", lambda: TOPIC)

    async def read_committed(tps: Any) -> dict[TP, int | None]:
        return {tp: consumer.committed.get(tp) for tp in tps}

    async def read_range(tp: TP, start: int, end: int) -> tuple[list[Any], int]:
        return [ev(o) for o in range(start, end)], end

    def guard(app_: Any, topic: str, **kwargs: Any) -> ContinuityGuard:
        return ContinuityGuard(
            app_, topic, read_range=read_range, read_committed=read_committed, **kwargs
        )

    monkeypatch.setattr(ledger_sink, "ContinuityGuard", guard)
    paused: list[bool] = []
    counted: list[int] = []

    class Ledger:
        async def run_batch(self, events: Any) -> None:
            if events[0].message.offset == 10 and not (pauses_once and paused):
                paused.append(True)
                if pause is not None:
                    pause(app, lease)
                    return
                lease.accepted(at=time.monotonic() - 20)  # paused in the DB write
                app.rebalancing = True  # resumed: a rebalance has begun

    class Insights:
        # (test_insights_wait_for_registry.py sets it: the registry loading)
        tenants_ready: asyncio.Event | None = None

        async def await_tenants(self, events: Any) -> bool:
            if self.tenants_ready is None or self.tenants_ready.is_set():
                return False
            await self.tenants_ready.wait()
            return True

        async def run_batch(self, events: Any) -> None:
            counted.extend(e.message.offset for e in events)

        async def tick(self, owned: Any) -> None:
            pass

    monkeypatch.setattr(ledger_sink, "ENABLED", True)
    monkeypatch.setattr(ledger_sink, "runner", Ledger())
    monkeypatch.setattr(ledger_sink.insights, "runner", Insights())
    feed: asyncio.Queue[list[Any]] = asyncio.Queue()

    async def take(*_: Any, **__: Any) -> Any:
        while True:
            yield await feed.get()

    monkeypatch.setattr(ledger_sink, "take_batches", take)
    agent = OutcomeAgent(app, lease, consumer, counted, feed)
    stream = SimpleNamespace(channel=SimpleNamespace(queue=asyncio.Queue()))
    agent.task = asyncio.ensure_future(ledger_sink.store_outcomes(stream))
    return agent


async def test_insights_given_up_then_same_generation_rejoin_counts_the_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = _outcome_agent(monkeypatch, pauses_once=True)
    await agent.put([10, 11, 12])  # batch A: its insights given up
    assert agent.counted == []
    # The rejoin returns the SAME generation; the assignment renews the lease.
    agent.app.rebalancing = False
    monkeypatch.setattr(member_lease, "assignments", member_lease.assignments + 1)
    agent.lease.accepted()
    await agent.put([10, 11, 12, 13])  # Faust sought P0 back to the committed offset 10
    await agent.stop()
    assert agent.consumer.commits == [{P0: 14}]
    assert agent.counted == [10, 11, 12, 13], (agent.counted, agent.consumer.commits)


async def test_a_later_batch_of_the_same_generation_does_not_commit_past_the_given_up_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Batch A's insights given up (lapsed, a rebalance begun); a heartbeat answered
    "rebalance in progress" renews the lease (membership.py counts it accepted); batch B,
    fetched before the rebalance, same generation, was counted and advanced; the worker
    stopped during the rebalance: its final commit passed A, never counted."""
    agent = _outcome_agent(monkeypatch, pauses_once=False)
    await agent.put([10, 11, 12])  # batch A: its insights given up
    assert agent.counted == []
    agent.lease.accepted()  # a heartbeat answered REBALANCE_IN_PROGRESS (aiokafka: True)
    await agent.put([13])  # batch B, fetched before the rebalance, same generation
    await agent.stop()
    commits = agent.consumer.commits
    assert not any(c.get(P0, 0) > 10 for c in commits), (agent.counted, commits)


async def test_a_batch_given_up_while_tables_recover_does_not_stall_the_agent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In the ledger's write a rebalance came, kept the generation and assigned the
    partitions again (Faust signals the assignment before its tables recover, and stays
    rebalancing until then); paused meanwhile past the lease's limit, not the session's,
    the worker gave the batch's insights up. The give-up was dated by the count that
    already held that assignment, and the agent waited for another (review h61g)."""

    def assigned_then_paused(app: Any, lease: MembershipLease) -> None:
        app.rebalancing = True
        monkeypatch.setattr(member_lease, "assignments", member_lease.assignments + 1)
        lease.accepted(at=time.monotonic() - 5.5)  # (limit 5 s, session 6 s)

    agent = _outcome_agent(monkeypatch, pauses_once=True, pause=assigned_then_paused)
    await agent.put([10, 11, 12])  # given up
    agent.app.rebalancing = False  # the tables recovered
    agent.lease.accepted()
    await agent.put([10, 11, 12, 13])  # sought back to the committed offset
    await agent.put([14, 15])
    await agent.stop()
    assert agent.counted == [10, 11, 12, 13, 14, 15], (agent.counted, agent.consumer.commits)
    assert agent.consumer.commits == [{P0: 16}]

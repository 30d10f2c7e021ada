"""The group membership lease (agents/membership.py): a batch in hand is delivered only
while the coordinator may not have expired this worker; after a lapse, once a heartbeat
sent since is accepted, or never if the group moves on (review h61c)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest

from paystream.agents.membership import MembershipLease

pytestmark = pytest.mark.asyncio


class _Coordinator:
    """aiokafka's GroupCoordinator as the lease sees it: a member id and a heartbeat."""

    def __init__(self) -> None:
        self.member_id = "member-1"
        self.answers: list[bool] = []

    async def _do_heartbeat(self) -> bool:
        await asyncio.sleep(0)
        ok = self.answers.pop(0) if self.answers else True
        if not ok:
            self.member_id = ""  # (as aiokafka's reset_generation on UnknownMemberId)
        return ok


async def test_the_lease_lapses_a_heartbeat_interval_before_the_session_timeout() -> None:
    lease = MembershipLease(session_timeout=6.0, heartbeat_interval=1.0)
    assert not lease.lapsed()  # (no assignment yet: nothing to deliver for a group)
    lease.accepted(at=100.0)
    assert not lease.lapsed(now=200.0)  # (no heartbeats followed: none could renew it)
    lease.follow(_Coordinator())
    assert not lease.lapsed(now=104.9)
    assert lease.lapsed(now=105.1)
    # A heartbeat interval of half the session or more: half the session.
    assert MembershipLease(session_timeout=6.0, heartbeat_interval=4.0).limit == 3.0


async def test_accepted_heartbeats_renew_it_from_when_they_were_sent() -> None:
    lease, coordinator = MembershipLease(6.0, 1.0), _Coordinator()
    lease.follow(coordinator)
    lease.follow(coordinator)  # (once per coordinator: not wrapped twice)
    lease.accepted(at=0.0)
    assert lease.lapsed()
    assert await coordinator._do_heartbeat()
    assert not lease.lapsed()
    age = lease.age()
    assert age is not None and age < 1.0
    lease.accepted(at=0.0)
    coordinator.answers = [False]  # refused: no renewal, and no member
    assert not await coordinator._do_heartbeat()
    assert lease.lapsed() and lease.lost()


async def test_after_a_lapse_a_heartbeat_sent_since_confirms_the_member() -> None:
    lease, coordinator = MembershipLease(6.0, 1.0), _Coordinator()
    lease.follow(coordinator)
    lease.accepted(at=0.0)
    waiting = asyncio.create_task(lease.confirmed(lambda: True, poll=0.001))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # (the last heartbeat accepted was before it asked)
    await coordinator._do_heartbeat()
    assert await asyncio.wait_for(waiting, 1.0) is True


@pytest.mark.parametrize("how", ["member id reset", "rebalance"])
async def test_after_a_lapse_a_lost_membership_or_a_rebalance_gives_the_batch_up(
    how: str,
) -> None:
    lease, coordinator = MembershipLease(6.0, 1.0), _Coordinator()
    lease.follow(coordinator)
    lease.accepted(at=0.0)
    rebalancing = False
    waiting = asyncio.create_task(lease.confirmed(lambda: not rebalancing, poll=0.001))
    await asyncio.sleep(0.01)
    if how == "rebalance":
        rebalancing = True
    else:
        coordinator.answers = [False]
        await coordinator._do_heartbeat()
    assert await asyncio.wait_for(waiting, 1.0) is False


async def test_a_paused_outcome_agent_does_not_count_its_batch_in_the_insights(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Paused past the session timeout inside the ledger's write, the outcome agent
    counted the batch in the insights tables when it resumed, after the partitions' new
    owner had counted it and more (review h61e); the batch is left uncommitted."""
    from paystream.agents import ledger_sink, member_lease

    lease, coordinator = MembershipLease(6.0, 1.0), _Coordinator()
    lease.follow(coordinator)
    lease.accepted()
    monkeypatch.setattr(member_lease, "lease", lease)
    counted: list[int] = []

    class PausedStore:
        async def run_batch(self, events: Any) -> None:
            lease.accepted(at=time.monotonic() - 20)  # paused 20 s in the database write
            coordinator.answers = [False]  # resumed: its first heartbeat refused
            await coordinator._do_heartbeat()

    class Counting:
        async def await_tenants(self, events: Any) -> bool:
            return False

        async def run_batch(self, events: Any) -> None:
            counted.append(len(events))

    monkeypatch.setattr(ledger_sink, "ENABLED", True)
    monkeypatch.setattr(ledger_sink, "runner", PausedStore())
    monkeypatch.setattr(ledger_sink.insights, "runner", Counting())
    message = SimpleNamespace(generation_id=ledger_sink.app.consumer_generation_id)
    stored = await asyncio.wait_for(
        ledger_sink._until_stored([SimpleNamespace(message=message)]),  # type: ignore[list-item]
        5,
    )
    assert stored is False and counted == []

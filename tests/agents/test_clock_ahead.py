"""A worker whose clock runs far ahead of the broker's deletes nothing it would judge
expired by it: a clock a retention ahead had the sweep delete every settled entity on
its partitions for good (changelog tombstones), changed a minute before or not, and the
purge every idempotency record (review finding)."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from paystream.agents.commands import (
    CLOCK_AHEAD_MAX_SECONDS,
    IDEMPOTENCY_CLOCK_AHEAD_SECONDS,
    CommandRunner,
)
from tests.agents.harness import Harness, data, kind, new_tenant_id


def _event(timestamp: float) -> Any:
    return SimpleNamespace(message=SimpleNamespace(timestamp=timestamp))


@pytest.mark.parametrize("ahead", [CLOCK_AHEAD_MAX_SECONDS + 60, 540 * 86_400.0])
def test_no_deletes_while_the_clock_runs_ahead_of_the_broker(ahead: float) -> None:
    runner = CommandRunner()
    now = time.time()
    assert runner.clock_for_deletes([_event(now - ahead)]) is None
    # Its commands catch up with the present (a backlog worked off, the clock put right).
    clock = runner.clock_for_deletes([_event(now - 5), _event(now - ahead)])
    assert clock is not None and abs(clock - time.time()) < 5


def test_a_clock_within_a_day_of_the_broker_s_is_used() -> None:
    runner = CommandRunner()
    now = time.time()
    assert runner.clock_for_deletes([]) is not None  # nothing seen yet: nothing to doubt
    clock = runner.clock_for_deletes([_event(now - 3_600)])
    assert clock is not None and clock >= now


def test_a_record_stamped_far_ahead_does_not_switch_the_guard_off() -> None:
    """A producer's own time on a CreateTime topic (the dev broker) may be year 9999."""
    runner = CommandRunner()
    now = time.time()
    runner.clock_for_deletes([_event(253_402_300_799.0)])
    assert runner.clock_for_deletes([_event(now - 2 * CLOCK_AHEAD_MAX_SECONDS)]) is None


async def test_a_clock_hours_ahead_keeps_the_windows_records(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The day's tolerance above is the whole idempotency window: a worker 23 h ahead of
    the one that wrote a record an hour ago (partitions moved to it) purged it, and read
    it as expired besides: the client's retry under the key ran as a new request, two
    payments for one provider charge (review finding). Records are judged by a clock a
    little past the broker's newest command time."""
    h, t = harness, new_tenant_id()
    h.add_tenant(t)
    body = {"amount": 1500, "currency": "USD", "payment_method_token": "pm_card_visa"}
    first = await h.send("payment.create", t, body, command_id="c1", idempotency_key="order-1")
    assert kind(first) == "payment.succeeded", data(first)

    broker_now = time.time() + 3_600  # an hour on, by the broker's clock
    ahead = broker_now + CLOCK_AHEAD_MAX_SECONDS - 3_600
    runner = CommandRunner()
    monkeypatch.setattr("paystream.agents.commands.time.time", lambda: ahead)
    clock = runner.clock_for_deletes([_event(broker_now)])
    assert clock == ahead  # within the day: deletes go on
    # As the command agent does for each batch:
    h.processor.expiry_clock_cap = runner.expiry_clock_cap()
    assert h.processor.expiry_clock_cap == broker_now + IDEMPOTENCY_CLOCK_AHEAD_SECONDS
    assert h.processor.purge_expired(t, clock) == 0
    monkeypatch.setattr("paystream.agents.pipeline.time.time", lambda: ahead)
    retry = await h.send("payment.create", t, body, command_id="c2", idempotency_key="order-1")
    assert retry.get_id() == first.get_id(), data(retry)  # the first one's answer
    assert len([k for k in h.tables.payments if k.startswith(f"{t}:")]) == 1


async def test_expiry_queues_hold_only_what_the_table_does_after_a_rebalance(
    harness: Harness,
) -> None:
    """Each rebalance's scan queued every record the store held, those of partitions this
    worker only stands by for too; their owner purges them (the tombstones reach this
    replica), and nothing here popped their queue: it grew with every rebalance."""
    h = harness
    busy, standby = h.add_tenant(), h.add_tenant()
    now = time.time()
    for rebalance in range(5):
        keys = [f"{standby}:k{rebalance}-{i}" for i in range(100)]
        for key in keys:
            h.idempotency[key] = {"expires_at": now + 60, "state": "done"}
        h.processor.rescan_expiry()
        h.processor.purge_expired(busy, now)  # this worker's own traffic: the scan runs
        for key in keys:
            del h.idempotency[key]  # the owner's tombstones
    assert len(h.processor._expiring.get(standby, ())) <= 100


async def test_with_no_broker_time_seen_records_expire_by_this_clock(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every record stamped far ahead (a CreateTime producer's year 9999) or unstamped:
    no broker time to judge by, so this worker's clock, as before (review finding: the
    cap read 1970 and no record ever expired)."""
    h, t = harness, new_tenant_id()
    h.add_tenant(t)
    body = {"amount": 1500, "currency": "USD", "payment_method_token": "pm_card_visa"}
    await h.send("payment.create", t, body, command_id="c1", idempotency_key="order-1")
    later = time.time() + 3 * 86_400
    monkeypatch.setattr("paystream.agents.commands.time.time", lambda: later)
    runner = CommandRunner()
    clock = runner.clock_for_deletes([_event(253_402_300_799.0)])
    assert clock == later and runner.broker_time == 0.0
    h.processor.expiry_clock_cap = runner.expiry_clock_cap()
    assert h.processor.purge_expired(t, clock) >= 1
    assert f"{t}:order-1" not in h.idempotency

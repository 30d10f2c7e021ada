"""A client's retry under a key (a new command id, the same request) is answered from the
key's record. Its own record, redelivered after a crash once that record had expired
(the retry came a minute before the key's 24 h were up), found nothing to be answered
from and ran as a new request: a second charge, under a key the provider had forgotten
too (found by time-travel explorations). A key's record that answers another record
is now kept a window from then; after it, it goes as before. Also resent by its client
(the same command id) once committed: answered, not run again."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest
from cloudevents.core.v1.event import CloudEvent

from paystream.agents import pipeline
from paystream.agents.pipeline import Inbound
from paystream.client import build_command
from paystream.gateways.simulator import SimulatorGateway
from paystream.settings import CloudEventsMode
from paystream.streams.codec import encode_event
from paystream.tenancy.models import Tenant
from tests.agents.conftest import running_harness
from tests.agents.harness import Harness, data, kind, outcome_of

pytestmark = pytest.mark.asyncio

DAY = 86_400.0
_BODY = {"amount": 500, "currency": "USD", "payment_method_token": "pm_card_visa"}


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def _charges(h: Harness, tenant: str) -> int:
    gateway = h.pool.get(Tenant.model_validate(h.tenants[tenant]))
    assert isinstance(gateway, SimulatorGateway)
    return sum(1 for e in await gateway.effects() if e.kind == "charge")


def _command(clock: Clock, tenant: str, command_id: str) -> CloudEvent:
    event = build_command(
        "payment.create", tenant, _BODY, command_id=command_id, idempotency_key="k"
    )
    event.get_attributes()["time"] = datetime.fromtimestamp(clock.now, UTC)
    return event


def _sweep(h: Harness, tenant: str, now: float) -> None:
    """The retention sweep's pass over the idempotency records, and the tenant's purge."""
    for key in list(h.idempotency):
        if h.processor.idempotency_expired(key, h.idempotency[key], now):
            del h.idempotency[key]
    h.processor.purge_expired(tenant, now)


async def _forget_provider_keys(h: Harness, tenant: str) -> None:
    async for key in h.redis.scan_iter(match=f"sim:{{{tenant}}}:idem:*"):
        await h.redis.delete(key)


@pytest.mark.parametrize("limited", [False, True])
@pytest.mark.parametrize("sweep", [False, True])
async def test_a_retry_answered_from_its_key_and_redelivered_after_the_key_expired_is_not_run(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, limited: bool, sweep: bool
) -> None:
    clock = Clock()
    monkeypatch.setattr(time, "time", clock)
    committed = [0]
    async with running_harness(redis_url, committed=lambda p: committed[0]) as h:
        limits = {"daily_payment_volume": {"USD": 2500}} if limited else None
        t = h.add_tenant(limits=limits) if limited else h.add_tenant()
        _, first = await h.send_event(_command(clock, t, "c0"), offset=1)
        assert first is not None and kind(first) == "payment.succeeded"
        clock.now += DAY - 60  # a minute before the key's 24 h are up: its retry
        retry = _command(clock, t, "c1")
        taken = int(clock.now * 1000)
        retried, out = await h.send_event(retry, timestamp_ms=taken, offset=2)
        assert out is not None and data(out)["entity_id"] == data(first)["entity_id"]
        clock.now += 120  # a crash before offset 2 was committed; read again
        h.processor.expiry_clock_cap = taken / 1000 + 300  # (as commands.py sets it)
        await _forget_provider_keys(h, t)  # the provider's 24 h for the key are over
        if sweep:
            _sweep(h, t, clock.now)
        again, _ = await h.send_event(retry, timestamp_ms=taken, offset=2)
        assert await _charges(h, t) == 1
        events = h.settings.events_topic
        assert [e.record for e in again if e.topic == events] == [
            e.record for e in retried if e.topic == events
        ]
        # A window after the retry, the key's record goes as any.
        committed[0] = 3
        clock.now += DAY
        h.processor.expiry_clock_cap = None
        _sweep(h, t, clock.now)
        assert f"{t}:k" not in h.idempotency


@pytest.mark.parametrize("sweep", [False, True])
async def test_a_retry_answered_from_its_key_and_resent_after_the_key_expired_is_not_run(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, sweep: bool
) -> None:
    """The retry committed, its client resends it (the same command id: what the client
    is told to do on a timeout) three minutes later, after the key's first 24 h."""
    clock = Clock()
    monkeypatch.setattr(time, "time", clock)
    committed = [0]
    async with running_harness(redis_url, committed=lambda p: committed[0]) as h:
        t = h.add_tenant()
        _, first = await h.send_event(_command(clock, t, "c1"), offset=1)
        assert first is not None
        committed[0] = 2
        clock.now += DAY - 60
        retry = _command(clock, t, "c2")
        _, out = await h.send_event(retry, timestamp_ms=int(clock.now * 1000), offset=2)
        assert out is not None and data(out)["entity_id"] == data(first)["entity_id"]
        committed[0] = 3
        clock.now += 180
        h.processor.expiry_clock_cap = clock.now + 300
        await _forget_provider_keys(h, t)
        if sweep:
            _sweep(h, t, clock.now)
        _, again = await h.send_event(retry, timestamp_ms=int(clock.now * 1000), offset=3)
        assert again is not None and data(again)["entity_id"] == data(first)["entity_id"]
        assert await _charges(h, t) == 1


@pytest.mark.parametrize("swept", [False, True])
async def test_a_retry_whose_batch_is_lost_whole_after_the_key_expired_is_not_run(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, swept: bool
) -> None:
    """The crash loses the retry's batch, the key's longer keep with it. Its key's
    record is judged as of the retry's broker time, a minute before it expired; and the
    retention sweep, which may run before the redelivered batch is read, keeps it."""
    clock = Clock()
    monkeypatch.setattr(time, "time", clock)
    async with running_harness(redis_url, committed=lambda p: 0) as h:
        t = h.add_tenant()
        _, first = await h.send_event(_command(clock, t, "c0"), offset=1)
        assert first is not None
        clock.now += DAY - 60
        retry = _command(clock, t, "c1")
        taken = int(clock.now * 1000)
        before = {k: dict(v) for k, v in h.idempotency.items()}
        await h.send_event(retry, timestamp_ms=taken, offset=2)
        h.idempotency.clear()  # the crash loses the retry's batch: its writes, its offset
        h.idempotency.update(before)
        clock.now += 120
        h.processor.expiry_clock_cap = taken / 1000 + 300
        await _forget_provider_keys(h, t)
        if swept:
            for key in list(h.idempotency):
                if h.processor.idempotency_expired(key, h.idempotency[key], clock.now):
                    del h.idempotency[key]
        again, out = await h.send_event(retry, timestamp_ms=taken, offset=2)
        assert out is not None and data(out)["entity_id"] == data(first)["entity_id"]
        assert await _charges(h, t) == 1
        # Its first answer was lost with the batch: this one is the key's, as it was.
        assert [e.topic for e in again] == [h.settings.events_topic]


async def test_the_purge_keeps_what_a_command_taken_before_its_expiry_is_answered_from(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker purges a tenant's records after its commands ran, as of the last one's
    broker time (``read_at``): a command after it, redelivered, was taken later still."""
    clock = Clock()
    monkeypatch.setattr(time, "time", clock)
    async with running_harness(redis_url, committed=lambda p: 0) as h:
        t = h.add_tenant()
        await h.send_event(_command(clock, t, "c0"), offset=1)
        taken = clock.now + DAY - 60
        clock.now += DAY + 60
        assert h.processor.purge_expired(t, clock.now, read_at=taken) == 0
        assert f"{t}:k" in h.idempotency
        # (The key's record and its command id's pointer.)
        assert h.processor.purge_expired(t, clock.now, read_at=clock.now - 30) == 2
        assert f"{t}:k" not in h.idempotency


async def test_a_bug_on_a_redelivered_retry_is_judged_as_of_its_broker_time_too(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The retry of a finished charge, taken a minute before its key expired and
    redelivered after, meets a bug of ours: process() judged the key live (broker
    time), dead_letter_bug, outside process(), judges it by the clock: a final
    `internal_error` for a request that was charged (its stored answer is due)."""
    clock = Clock()
    monkeypatch.setattr(time, "time", clock)
    async with running_harness(redis_url, committed=lambda p: 0) as h:
        t = h.add_tenant()
        _, first = await h.send_event(_command(clock, t, "c0"), offset=1)
        assert first is not None and kind(first) == "payment.succeeded"
        clock.now += DAY - 60
        retry = _command(clock, t, "c1")
        taken = int(clock.now * 1000)
        clock.now += 120  # read after the key's window (a backlog, a redelivery)
        h.processor.expiry_clock_cap = taken / 1000 + 300
        await _forget_provider_keys(h, t)

        def buggy(self: Any, key: str, now: float) -> None:
            raise RuntimeError("a bug of ours, after the key's record was read")

        monkeypatch.setattr(pipeline.CommandProcessor, "_kept_for_a_retry", buggy)
        rec = encode_event(retry, t.encode(), CloudEventsMode.BINARY)
        inbound = Inbound(rec.key, rec.value, dict(rec.headers), taken, "paystream.commands", 0, 2)
        try:  # as agents/commands.py _run_tenant does
            emits = await h.processor.process(inbound)
        except RuntimeError:
            emits = h.processor.dead_letter_bug(inbound)
        out = outcome_of(h.settings, emits)
        assert out is not None
        assert kind(out) == "payment.succeeded", (kind(out), data(out))
        assert await _charges(h, t) == 1


def _on(event: Any, tenant: str, partition: int, offset: int, taken_ms: int) -> Inbound:
    rec = encode_event(event, tenant.encode(), CloudEventsMode.BINARY)
    return Inbound(
        rec.key, rec.value, dict(rec.headers), taken_ms, "paystream.commands", partition, offset
    )


async def test_a_split_tenants_purge_keeps_what_a_retry_on_its_other_partition_needs(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tenant split across partitions (producers with differing partitioners): the
    purge after its group on partition 1 judges as of that group's last broker time,
    later than the retry still unread on partition 0 (taken a minute before the key
    expired). The retry, read next, finds nothing and charges again."""
    clock = Clock()
    monkeypatch.setattr(time, "time", clock)
    async with running_harness(redis_url, committed=lambda p: 0) as h:
        t = h.add_tenant()
        out = outcome_of(
            h.settings,
            await h.processor.process(
                _on(_command(clock, t, "c0"), t, 0, 1, int(clock.now * 1000))
            ),
        )
        assert out is not None and kind(out) == "payment.succeeded"
        clock.now += DAY - 60
        retry = _command(clock, t, "c1")
        retry_taken = int(clock.now * 1000)  # on partition 0, not read yet (lagging)
        clock.now += 120
        await _forget_provider_keys(h, t)  # the provider's 24 h for the key are over
        h.processor.expiry_clock_cap = clock.now + 300
        # Partition 1's batch: another command of the tenant, taken now; then the purge as
        # _run_tenant calls it (read_at: the group's last record's broker time).
        other = build_command("customer.create", t, {"email": "ada@example.com"})
        other_taken = int(clock.now * 1000)
        await h.processor.process(_on(other, t, 1, 7, other_taken))
        h.processor.purge_expired(t, clock.now, read_at=other_taken / 1000)
        # Partition 0's retry, read now, judged as of its broker time (key live then).
        emits = await h.processor.process(_on(retry, t, 0, 2, retry_taken))
        again = outcome_of(h.settings, emits)
        assert again is not None and data(again)["entity_id"] == data(out)["entity_id"]
        assert await _charges(h, t) == 1

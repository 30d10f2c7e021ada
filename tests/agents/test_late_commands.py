"""A command read more than the providers' key window after the broker took it, of which
the worker knows nothing, is parked `stale` rather than run (PAYSTREAM_PARK_LATE_COMMANDS):
a crash that lost its whole batch after its provider call leaves no trace of it here, and
the provider, its key forgotten after 24 h, would charge it again (found by a time-travel
exploration: a batch lost whole, redelivered after a day-long outage, charged twice).
What a run would not send to the provider (answered from an entity that records it, a
refusal, a read) goes ahead as before; so does a command read in time."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from copy import deepcopy
from typing import Any

import pytest
import pytest_asyncio
from cloudevents.core.v1.event import CloudEvent

from paystream import dlq
from paystream.agents.pipeline import Inbound
from paystream.client import build_command
from paystream.dlq import ParkedRecord
from paystream.gateways.simulator import SimulatorGateway
from paystream.tenancy.models import Tenant
from tests.agents.conftest import running_harness
from tests.agents.harness import Emit, Harness, data, kind, new_tenant_id, outcome_of

pytestmark = pytest.mark.asyncio

HOUR = 3600.0
_BODY = {"payment_id": "pay1", "amount": 500, "currency": "USD",
         "payment_method_token": "pm_card_visa"}  # fmt: skip


class Clock:
    """The worker's clock (``time.time``), moved on by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    @property
    def ms(self) -> int:
        return int(self.now * 1000)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(time, "time", clock)
    return clock


@pytest_asyncio.fixture
async def late(redis_url: str, clock: Clock) -> AsyncIterator[Harness]:
    async with running_harness(redis_url, park_late_commands=True) as h:
        yield h


async def _charges(h: Harness, tenant: str) -> int:
    gateway = h.pool.get(Tenant.model_validate(h.tenants[tenant]))
    assert isinstance(gateway, SimulatorGateway)
    return sum(1 for e in await gateway.effects() if e.kind == "charge")


def _parked_stale(h: Harness, emits: list[Emit]) -> bool:
    parked = [e for e in emits if e.topic == h.settings.retry_topic]
    return bool(parked) and dict(parked[0].record.headers)["paystream-park-reason"] == b"stale"


async def _forget_provider_keys(h: Harness, tenant: str) -> None:
    """The simulator, like Stripe, past its 24 h: it no longer knows the request's key."""
    async for key in h.redis.scan_iter(match=f"sim:{{{tenant}}}:idem:*"):
        await h.redis.delete(key)


async def test_a_batch_lost_whole_and_read_a_day_later_is_parked_not_charged_again(
    late: Harness, clock: Clock
) -> None:
    t = late.add_tenant()
    event = build_command("payment.create", t, _BODY, command_id="c1")
    taken = clock.ms  # when the broker took it, and the first run
    _, out = await late.send_event(event, timestamp_ms=taken, offset=1)
    assert out is not None and kind(out) == "payment.succeeded"
    late.idempotency.clear()  # the batch lost whole: nothing of ours landed
    late.tables.payments.clear()
    clock.now += 25 * HOUR  # the partition read again after a day-long outage
    await _forget_provider_keys(late, t)
    emits, out = await late.send_event(event, timestamp_ms=taken, offset=1)
    assert out is None and _parked_stale(late, emits)
    assert await _charges(late, t) == 1


async def test_a_late_command_an_entity_records_is_answered_from_it(
    late: Harness, clock: Clock
) -> None:
    """Its idempotency record lost (or expired), its payment remembers it: answered as
    first, from the payment, with no provider call."""
    t = late.add_tenant()
    event = build_command("payment.create", t, _BODY, command_id="c1")
    taken = clock.ms
    first, out = await late.send_event(event, timestamp_ms=taken, offset=1)
    assert out is not None and kind(out) == "payment.succeeded"
    late.idempotency.clear()
    clock.now += 25 * HOUR
    await _forget_provider_keys(late, t)
    again, _ = await late.send_event(event, timestamp_ms=taken, offset=1)
    assert not _parked_stale(late, again)
    sent = [e.record.value for e in first if e.topic == late.settings.events_topic]
    assert [e.record.value for e in again if e.topic == late.settings.events_topic] == sent
    assert await _charges(late, t) == 1


async def test_a_late_command_refused_before_any_provider_call_is_refused(
    late: Harness, clock: Clock
) -> None:
    t = late.add_tenant()
    event = build_command("payment.capture", t, {"payment_id": "nope"})
    taken = clock.ms
    clock.now += 25 * HOUR
    emits, out = await late.send_event(event, timestamp_ms=taken, offset=1)
    assert out is not None and data(out)["reason"] == "not_found"
    assert not _parked_stale(late, emits)


async def test_a_late_read_at_the_provider_runs(late: Harness, clock: Clock) -> None:
    t = late.add_tenant()
    body = {**_BODY, "payment_method_token": "pm_card_authenticationRequired"}
    _, out = await late.send_event(build_command("payment.create", t, body), offset=1)
    assert out is not None and kind(out) == "payment.requires_action"
    event = build_command("payment.refresh", t, {"payment_id": "pay1"})
    taken = clock.ms
    clock.now += 25 * HOUR
    emits, out = await late.send_event(event, timestamp_ms=taken, offset=2)
    assert out is not None and kind(out) == "payment.requires_action", data(out)
    assert not _parked_stale(late, emits)


@pytest.mark.parametrize("hours", [1, 22])
async def test_a_command_read_inside_the_window_runs(
    late: Harness, clock: Clock, hours: int
) -> None:
    t = late.add_tenant()
    taken = clock.ms
    clock.now += hours * HOUR
    event = build_command("payment.create", t, _BODY)
    _, out = await late.send_event(event, timestamp_ms=taken, offset=1)
    assert out is not None and kind(out) == "payment.succeeded", data(out)


async def test_switched_off_a_late_command_runs(redis_url: str, clock: Clock) -> None:
    """PAYSTREAM_PARK_LATE_COMMANDS=false: run (a backlog read late is charged then)."""
    async with running_harness(redis_url, park_late_commands=False) as h:
        t = h.add_tenant()
        taken = clock.ms
        clock.now += 25 * HOUR
        event = build_command("payment.create", t, _BODY)
        _, out = await h.send_event(event, timestamp_ms=taken, offset=1)
        assert out is not None and kind(out) == "payment.succeeded"


async def _lost_whole_then_read_late(h: Harness, clock: Clock) -> tuple[str, CloudEvent, int]:
    """A charge whose batch was lost whole, read again after a day-long outage: parked."""
    t = h.add_tenant()
    event = build_command("payment.create", t, _BODY, command_id="c1")
    taken = clock.ms
    await h.send_event(event, timestamp_ms=taken, offset=1)
    h.idempotency.clear()
    h.tables.payments.clear()
    clock.now += 25 * HOUR
    await _forget_provider_keys(h, t)
    emits, out = await h.send_event(event, timestamp_ms=taken, offset=1)
    assert out is None and _parked_stale(h, emits)
    return t, event, taken


async def test_a_resend_in_the_same_backlog_is_held_back_with_it(
    late: Harness, clock: Clock
) -> None:
    """The client, with no answer, resent the command 3 h after it first sent it: read
    behind it, younger than the window, it finds the parked record (review finding:
    parked with no record, it ran, and charged again)."""
    t, event, taken = await _lost_whole_then_read_late(late, clock)
    emits, out = await late.send_event(event, timestamp_ms=taken + int(3 * HOUR * 1000), offset=2)
    assert out is None and _parked_stale(late, emits)
    assert await _charges(late, t) == 1


@pytest.mark.parametrize("how", ["same command", "retry under its chosen id"])
async def test_a_resend_after_the_late_park_is_held_back(
    late: Harness, clock: Clock, how: str
) -> None:
    t, event, _ = await _lost_whole_then_read_late(late, clock)
    again = event if how == "same command" else build_command("payment.create", t, _BODY)
    emits, out = await late.send_event(again, timestamp_ms=clock.ms, offset=2)
    assert out is None and _parked_stale(late, emits)
    assert await _charges(late, t) == 1


@pytest.mark.parametrize(
    ("command_type", "body"),
    [
        ("customer.update", {"customer_id": "cus1", "name": "B"}),
        ("customer.erase", {"customer_id": "cus1"}),
        ("payment.cancel", {"payment_id": "auth1"}),
        ("payment.capture", {"payment_id": "auth1"}),
    ],
)
async def test_only_what_moves_money_is_parked_when_read_late(
    late: Harness, clock: Clock, command_type: str, body: dict[str, object]
) -> None:
    """A customer's update or erasure, or a cancel, run twice moves no money: a day late
    they run (an erasure must not wait on a person); a capture is held back."""
    t = late.add_tenant()
    await late.send_event(
        build_command("customer.create", t, {"customer_id": "cus1", "email": "a@x.io"})
    )
    auth = {**_BODY, "payment_id": "auth1", "capture": "manual"}
    _, out = await late.send_event(build_command("payment.create", t, auth))
    assert out is not None and kind(out) == "payment.authorized"
    taken = clock.ms
    clock.now += 25 * HOUR
    emits, out = await late.send_event(build_command(command_type, t, body), timestamp_ms=taken)
    if command_type == "payment.capture":
        assert out is None and _parked_stale(late, emits)
    else:
        assert out is not None and kind(out) != "command.rejected", data(out)


_NO_ID = {"amount": 500, "currency": "USD", "payment_method_token": "pm_card_visa"}


class _CapturingProducer:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send_and_wait(self, topic: str, value: Any, **kw: Any) -> None:
        self.sent.append({"topic": topic, "value": value, **kw})


async def _reconciled_replay(
    h: Harness, parked: Emit, clock: Clock, offset: int, *, reconciled: bool = True
) -> Any:
    """What `dlq replay --include-stale-as-of` sends of ``parked`` (``reconciled``; else
    a plain `dlq replay`), run."""
    rec = ParkedRecord(h.settings.retry_topic, 0, 0, parked.record.key, parked.record.value,
                       tuple(parked.record.headers), clock.ms)  # fmt: skip
    producer = _CapturingProducer()
    await dlq._resend(producer, h.settings, rec, {0}, reconciled=reconciled)
    (resent,) = producer.sent
    inbound = Inbound(resent["key"], resent["value"], dict(resent["headers"]), clock.ms,
                      h.settings.commands_topic, 0, offset)  # fmt: skip
    return outcome_of(h.settings, await h.processor.process(inbound))


async def test_a_late_parked_command_resent_under_another_key_is_held_back(
    late: Harness, clock: Clock
) -> None:
    """No chosen id: the same command id under a new key is the same command, known by
    its id's pointer, which the late park writes too (review finding: it ran as new)."""
    t = late.add_tenant()
    first = build_command("payment.create", t, _NO_ID, command_id="c1", idempotency_key="k1")
    taken = clock.ms
    await late.send_event(first, timestamp_ms=taken, offset=1)
    late.idempotency.clear()
    late.tables.payments.clear()
    clock.now += 25 * HOUR
    await _forget_provider_keys(late, t)
    emits, out = await late.send_event(first, timestamp_ms=taken, offset=1)
    assert out is None and _parked_stale(late, emits)
    again = build_command("payment.create", t, _NO_ID, command_id="c1", idempotency_key="k2")
    emits, out = await late.send_event(again, timestamp_ms=clock.ms, offset=2)
    assert out is None and _parked_stale(late, emits)
    assert await _charges(late, t) == 1


async def test_a_late_parked_backlog_keeps_its_place_in_the_days_volume(
    late: Harness, clock: Clock
) -> None:
    """A real backlog (never run) parked late is admitted by the limits then, its hold
    kept, as a command its provider failed is: a charge sent since that the volume cannot
    also take is refused, and the backlog, reconciled and re-driven, runs and is counted
    once (review finding: parked unadmitted, its re-drive passed the volume unchecked)."""
    t, parked = await _late_park(late, clock, {**_NO_ID, "payment_id": "late1"})
    fresh = build_command("payment.create", t, {**_NO_ID, "payment_id": "today1"})
    _, out = await late.send_event(fresh, timestamp_ms=clock.ms, offset=2)
    assert out is not None and data(out)["reason"] == "quota_exceeded", data(out)
    out = await _reconciled_replay(late, parked, clock, offset=3)
    assert out is not None and kind(out) == "payment.succeeded", data(out)
    assert await _charges(late, t) == 1
    again = await _reconciled_replay(late, parked, clock, offset=4)  # a second copy
    assert again is not None and kind(again) == "payment.succeeded"
    assert await _charges(late, t) == 1


def _set_limits(h: Harness, tenant: str, limits: dict[str, Any]) -> None:
    record = {**h.tenants[tenant], "limits": limits}
    h.tenants[tenant] = Tenant.model_validate(record).model_dump(mode="json")


async def _two_charges_lost_whole(h: Harness, clock: Clock) -> tuple[str, list[CloudEvent], int]:
    t = h.add_tenant()
    taken = clock.ms
    sent = [
        build_command("payment.create", t, {**_NO_ID, "payment_id": f"p{i}"}, command_id=f"c{i}")
        for i in range(2)
    ]
    for offset, event in enumerate(sent, start=1):
        _, out = await h.send_event(event, timestamp_ms=taken, offset=offset)
        assert out is not None and kind(out) == "payment.succeeded"
    h.idempotency.clear()  # the batch lost whole, its limits record too
    h.tables.payments.clear()
    h.processor.limits.table.clear()
    return t, sent, taken


async def test_a_lost_charge_read_late_is_parked_not_rate_limited(
    late: Harness, clock: Clock
) -> None:
    """A rate limit set during the outage: refused "later", the client sent it again
    later, and the provider, its key forgotten, charged it again (review finding)."""
    t, sent, taken = await _two_charges_lost_whole(late, clock)
    _set_limits(late, t, {"commands_per_second": 1, "burst": 1})
    clock.now += 25 * HOUR
    await _forget_provider_keys(late, t)
    for offset, event in enumerate(sent, start=1):
        emits, out = await late.send_event(event, timestamp_ms=taken, offset=offset)
        assert out is None and _parked_stale(late, emits), data(out) if out else None
    assert await _charges(late, t) == 2


async def test_a_lost_charge_read_late_is_parked_not_refused_by_a_lowered_quota(
    late: Harness, clock: Clock
) -> None:
    """A quota lowered during the outage: refused `quota_exceeded`, a final answer,
    though the provider had charged it (review finding)."""
    t, sent, taken = await _two_charges_lost_whole(late, clock)
    _set_limits(late, t, {"max_payment_amount": {"USD": 400}})
    clock.now += 25 * HOUR
    await _forget_provider_keys(late, t)
    emits, out = await late.send_event(sent[0], timestamp_ms=taken, offset=1)
    assert out is None and _parked_stale(late, emits), data(out) if out else None


async def test_a_late_parked_backlog_reconciled_the_next_day_keeps_its_place(
    late: Harness, clock: Clock
) -> None:
    """Its hold is on the day it is read (as a park's is on the day its provider failed),
    so it counts that day and the next: a charge sent the next day that the volume cannot
    also take is refused, and the re-drive runs (review finding: held on its record's
    day, long past, it held nothing, and 1,000 were charged against a 600 day)."""
    t, parked = await _late_park(late, clock, {**_NO_ID, "payment_id": "late1"})
    clock.now += 24 * HOUR  # reconciled the next day
    fresh = build_command("payment.create", t, {**_NO_ID, "payment_id": "today1"})
    _, today = await late.send_event(fresh, timestamp_ms=clock.ms, offset=2)
    assert today is not None and data(today)["reason"] == "quota_exceeded", data(today)
    out = await _reconciled_replay(late, parked, clock, offset=3)
    assert out is not None and kind(out) == "payment.succeeded", data(out)
    assert await _charges(late, t) == 1


async def test_late_parked_backlog_re_driven_passes_the_rate_limit_as_admitted_before(
    late: Harness, clock: Clock
) -> None:
    """A replay shares the tenant's rate with its live traffic: admitted when parked, a
    re-drive is let through it, not refused "later" and parked again on its resend."""
    t = late.add_tenant(limits={"commands_per_second": 1, "burst": 1})
    taken = clock.ms
    clock.now += 25 * HOUR
    parked = []
    for i in range(2):
        body = {**_NO_ID, "payment_id": f"p{i}"}
        event = build_command("payment.create", t, body, command_id=f"c{i}")
        emits, out = await late.send_event(event, timestamp_ms=taken, offset=1 + i)
        assert out is None and _parked_stale(late, emits)
        parked += [e for e in emits if e.topic == late.settings.retry_topic]
    for offset, copy in enumerate(parked, start=3):
        out = await _reconciled_replay(late, copy, clock, offset=offset)
        assert out is not None and kind(out) == "payment.succeeded", data(out)
    assert await _charges(late, t) == 2


# ---- a late park's read time is its hold's day, not the limits' clock (review h65f) ----
# That read time also became the tenant's limits clock: every later record of the same
# backlog (read in time, on its own broker time) refilled nothing and was refused
# `rate_limited`, and yesterday's payments after it counted against today's volume. The
# controls are the same traffic without the late payment.


async def _limited_backlog(h: Harness, clock: Clock, *, with_late_payment: bool) -> list[str]:
    """A backlog read 23.5 h after the broker took it: (maybe) one payment, then 20
    customer.create commands sent at 5/s under a 10/s limit."""
    t = h.add_tenant(limits={"commands_per_second": 10, "burst": 10})
    taken = clock.ms
    clock.now += 23.5 * HOUR  # the workers were down that long
    offset = 1
    if with_late_payment:
        pay = build_command("payment.create", t, {**_NO_ID, "payment_id": "p1"}, command_id="c0")
        emits, out = await h.send_event(pay, timestamp_ms=taken, offset=offset)
        assert out is None and _parked_stale(h, emits)
        offset += 1
    got = []
    for i in range(20):
        # Sent 200 ms apart (5/s), 1 h after the payment: read 22.5 h late, in time.
        event = build_command(
            "customer.create", t, {"email": f"a{i}@example.com"}, command_id=f"cu{i}"
        )
        _, out = await h.send_event(
            event, timestamp_ms=taken + int(HOUR * 1000) + 200 * i, offset=offset + i
        )
        assert out is not None
        got.append(kind(out) if kind(out) != "command.rejected" else data(out)["reason"])
    return got


async def test_control_a_backlog_sent_at_half_the_rate_passes(late: Harness, clock: Clock) -> None:
    got = await _limited_backlog(late, clock, with_late_payment=False)
    assert got == ["customer.created"] * 20, got


async def test_one_late_payment_does_not_rate_limit_the_rest_of_the_backlog(
    late: Harness, clock: Clock
) -> None:
    got = await _limited_backlog(late, clock, with_late_payment=True)
    assert got == ["customer.created"] * 20, got


async def test_a_backlog_payment_after_a_late_one_counts_on_its_own_day(
    late: Harness, clock: Clock
) -> None:
    """Yesterday's backlog payment (read 22.5 h late, in time) counts on yesterday, its
    record's day; after a late-parked payment it was counted on today, taking the quota
    of today's own payments."""
    day0 = 1_790_035_200.0  # 2026-09-22T00:00:00Z
    clock.now = day0 + 24 * HOUR + 10 * HOUR  # read on the 23rd, 10:00 UTC
    t = late.add_tenant(limits={"daily_payment_volume": {"USD": 1000}})
    small = {**_NO_ID, "amount": 100, "payment_id": "late1"}
    taken = int((day0 + 10.5 * HOUR) * 1000)  # the 22nd, 10:30: read 23.5 h late
    emits, out = await late.send_event(
        build_command("payment.create", t, small, command_id="c0"), timestamp_ms=taken, offset=1
    )
    assert out is None and _parked_stale(late, emits)  # holds 100 on the 23rd (by design)
    yesterday = {**_NO_ID, "amount": 800, "payment_id": "y1"}
    _, out = await late.send_event(
        build_command("payment.create", t, yesterday, command_id="c1"),
        timestamp_ms=int((day0 + 11.5 * HOUR) * 1000),  # the 22nd, 11:30: in time
        offset=2,
    )
    assert out is not None and kind(out) == "payment.succeeded", data(out)
    today = {**_NO_ID, "amount": 800, "payment_id": "t1"}
    _, out = await late.send_event(
        build_command("payment.create", t, today, command_id="c2"),
        timestamp_ms=clock.ms,
        offset=3,
    )
    # The 23rd: 100 held + 800 = 900 of 1000.
    assert out is not None and kind(out) == "payment.succeeded", data(out)


async def test_control_without_the_late_payment_yesterdays_counts_on_yesterday(
    late: Harness, clock: Clock
) -> None:
    day0 = 1_790_035_200.0  # 2026-09-22T00:00:00Z
    clock.now = day0 + 24 * HOUR + 10 * HOUR
    t = late.add_tenant(limits={"daily_payment_volume": {"USD": 1000}})
    yesterday = {**_NO_ID, "amount": 800, "payment_id": "y1"}
    _, out = await late.send_event(
        build_command("payment.create", t, yesterday, command_id="c1"),
        timestamp_ms=int((day0 + 11.5 * HOUR) * 1000),
        offset=2,
    )
    assert out is not None and kind(out) == "payment.succeeded", data(out)
    today = {**_NO_ID, "amount": 800, "payment_id": "t1"}
    _, out = await late.send_event(
        build_command("payment.create", t, today, command_id="c2"), timestamp_ms=clock.ms, offset=3
    )
    assert out is not None and kind(out) == "payment.succeeded", data(out)


# ---- Daily volume quotas for payments parked and re-driven late (review h66b) ---------
# A parked payment holds its amount against the day it was held and the next, then the
# hold stops counting (limits._holds_of_day). `dlq replay --include-stale-as-of` re-sends
# an older park marked reconciled, and the worker ran it: its PARKED idempotency record
# (kept until answered) made it "let through before", passed unchecked, while its hold no
# longer covered the day it was charged on, and the day went over the tenant's quota. The
# same gap opened on the day itself for a late park the quota had refused (parked with no
# hold). Known gap (strict xfails): holding a reconciled re-drive to the day's quota
# refused, as final, a copy of one its provider had charged (review h66d).


_RECONCILED_QUOTA_GAP = pytest.mark.xfail(
    strict=True,
    reason="known gap: a reconciled re-drive whose hold no longer counts passes the day's "
    "quota unchecked; holding it to the quota (tried: review h66d) refused as final a "
    "copy of one the provider had charged, when a crash lost its idempotency record",
)


async def _replay(h: Harness, parked: Emit, clock: Clock, offset: int) -> Any:
    """What a plain `dlq replay` (not stale: no reconciled mark) sends of ``parked``, run."""
    return await _reconciled_replay(h, parked, clock, offset, reconciled=False)


def _volume(h: Harness, tenant: str) -> tuple[str, dict[str, int]]:
    state = h.processor.limits.table[f"{tenant}:limits"]
    return state["day"], dict(state["volume"])


@_RECONCILED_QUOTA_GAP
@pytest.mark.parametrize("currency", ["USD", "EUR"])
async def test_a_provider_outage_park_reconciled_two_days_later_keeps_the_days_quota(
    late: Harness, clock: Clock, currency: str
) -> None:
    """Parked by a provider outage on day D (holding 900 of 1000), held back by `dlq
    replay` as stale, reconciled and re-driven on D+2. Its hold stopped counting after
    D+1, so the tenant's own 1000 on D+2 went through; the re-drive then passed the
    quota unchecked ("admitted before") and D+2 took 1900 of 1000."""
    t = new_tenant_id()
    late.add_tenant(
        t,
        gateway_options={"fail_first": {f"pse:{t}:payment:p1": 3}},  # its first delivery parks
        limits={"daily_payment_volume": {currency: 1000}},
    )
    body = {**_NO_ID, "currency": currency, "amount": 900, "payment_id": "p1"}
    emits, out = await late.send_event(
        build_command("payment.create", t, body, command_id="c1"), timestamp_ms=clock.ms, offset=1
    )
    assert out is None
    [parked] = [e for e in emits if e.topic == late.settings.retry_topic]
    clock.now += 48 * HOUR  # the outage's parks checked with the provider two days on
    today = {**_NO_ID, "currency": currency, "amount": 1000, "payment_id": "t1"}
    _, fresh = await late.send_event(
        build_command("payment.create", t, today, command_id="c2"), timestamp_ms=clock.ms, offset=2
    )
    assert fresh is not None
    out = await _reconciled_replay(late, parked, clock, offset=3)
    assert out is not None
    moved = [kind(fresh), kind(out)].count("payment.succeeded")
    day, volume = _volume(late, t)
    # At most one of the two fits the day's 1000 (either the hold still counts and the
    # fresh one is refused, or the re-drive is judged against the day and refused).
    assert moved == 1, (kind(fresh), kind(out), data(out), day, volume)
    assert volume.get(currency, 0) <= 1000, (day, volume)


@_RECONCILED_QUOTA_GAP
async def test_a_late_park_reconciled_two_days_later_keeps_the_days_quota(
    late: Harness, clock: Clock
) -> None:
    """(Left open by session 65.) A backlog read a day late was parked `stale`, holding
    500 of 600 on the day it was read (R). Reconciled on R+2, its hold gone, it passed
    the day's volume unchecked after a payment of that day took 500."""
    t, parked = await _late_park(late, clock, {**_NO_ID, "payment_id": "late1"})
    clock.now += 48 * HOUR  # reconciled two days after it was read
    fresh = build_command("payment.create", t, {**_NO_ID, "payment_id": "today1"})
    _, today = await late.send_event(fresh, timestamp_ms=clock.ms, offset=2)
    assert today is not None
    out = await _reconciled_replay(late, parked, clock, offset=3)
    assert out is not None
    day, volume = _volume(late, t)
    assert [kind(today), kind(out)].count("payment.succeeded") == 1, (
        kind(today), data(out), day, volume,
    )  # fmt: skip
    assert volume.get("USD", 0) <= 600, (day, volume)
    assert await _charges(late, t) == 1


@_RECONCILED_QUOTA_GAP
async def test_a_late_park_the_quota_refused_reconciled_the_same_day_keeps_the_quota(
    late: Harness, clock: Clock
) -> None:
    """The same gap, on the day itself: a backlog read late that the day's volume could
    not take was parked with no hold (its refusal forgotten, pipeline: `late and
    LimitRejection`). Reconciled that same day (the provider never took it), it ran
    unchecked as admitted before: 1000 of 600 on the day."""
    t = late.add_tenant(limits={"daily_payment_volume": {"USD": 600}})
    backlog = build_command("payment.create", t, {**_NO_ID, "payment_id": "late1"})
    taken = clock.ms
    clock.now += 25 * HOUR
    fresh = build_command("payment.create", t, {**_NO_ID, "payment_id": "today1"})
    _, today = await late.send_event(fresh, timestamp_ms=clock.ms - 60_000, offset=1)
    assert today is not None and kind(today) == "payment.succeeded", data(today)
    emits, out = await late.send_event(backlog, timestamp_ms=taken, offset=2)
    assert out is None and _parked_stale(late, emits)
    [parked] = [e for e in emits if e.topic == late.settings.retry_topic]
    clock.now += 2 * HOUR  # an operator checks it with the provider: never charged
    out = await _reconciled_replay(late, parked, clock, offset=3)
    assert out is not None
    day, volume = _volume(late, t)
    assert kind(out) != "payment.succeeded", (data(out), day, volume)
    assert volume.get("USD", 0) <= 600, (day, volume)


# ---- what held before, and still holds ------------------------------------------------


async def test_control_a_provider_outage_park_re_driven_the_next_day_keeps_its_place(
    late: Harness, clock: Clock
) -> None:
    """Parked on D at 10:00, re-driven (not stale) on D+1 before the window: its hold
    counts on D+1, a fresh payment it leaves no room for is refused, it runs, and the
    day counts it once, whatever a redelivery of the re-drive does."""
    t = late.add_tenant(
        gateway_options={"fail_first": {"*": 3}},
        limits={"daily_payment_volume": {"USD": 1000}},
    )
    day0 = 1_790_035_200.0  # 2026-09-22T00:00:00Z
    clock.now = day0 + 10 * HOUR
    body = {**_NO_ID, "amount": 900, "payment_id": "p1"}
    emits, out = await late.send_event(
        build_command("payment.create", t, body, command_id="c1"), timestamp_ms=clock.ms, offset=1
    )
    assert out is None
    [parked] = [e for e in emits if e.topic == late.settings.retry_topic]
    clock.now = day0 + 24 * HOUR + 8 * HOUR  # D+1 08:00, 22 h on: not stale
    over = {**_NO_ID, "amount": 200, "payment_id": "t1"}
    _, fresh = await late.send_event(
        build_command("payment.create", t, over, command_id="c2"), timestamp_ms=clock.ms, offset=2
    )
    assert fresh is not None and data(fresh)["reason"] == "quota_exceeded", data(fresh)
    assert data(fresh)["held"] == 900
    out = await _replay(late, parked, clock, offset=3)
    assert out is not None and kind(out) == "payment.succeeded", data(out)
    again = await _replay(late, parked, clock, offset=3)  # redelivered: same offset
    assert again is not None and kind(again) == "payment.succeeded"
    assert _volume(late, t) == ("2026-09-23", {"USD": 900})
    assert await _charges(late, t) == 1


async def test_control_a_reconciled_re_drive_redelivered_after_a_crash_counts_once(
    late: Harness, clock: Clock
) -> None:
    """A late park reconciled the next day (its hold live) runs; a crash loses the
    limits write of that batch but keeps its idempotency record; the re-drive's record,
    redelivered, is answered from it and accounted once (not twice, not zero)."""
    t, parked = await _late_park(late, clock, {**_NO_ID, "payment_id": "late1"})
    clock.now += 20 * HOUR
    before = deepcopy(late.processor.limits.table[f"{t}:limits"])
    out = await _reconciled_replay(late, parked, clock, offset=2)
    assert out is not None and kind(out) == "payment.succeeded", data(out)
    late.processor.limits.table[f"{t}:limits"] = before  # the crash lost this write
    again = await _reconciled_replay(late, parked, clock, offset=2)
    assert again is not None and kind(again) == "payment.succeeded"
    assert _volume(late, t)[1] == {"USD": 500}
    state = late.processor.limits.table[f"{t}:limits"]
    assert not state.get("held"), state.get("held")
    assert await _charges(late, t) == 1


async def _late_park(h: Harness, clock: Clock, body: dict[str, Any]) -> tuple[str, Emit]:
    """A backlog payment read 25 h late: parked `stale`, holding its 500 of 600."""
    t = h.add_tenant(limits={"daily_payment_volume": {"USD": 600}})
    backlog = build_command("payment.create", t, body, command_id="c1")
    taken = clock.ms
    clock.now += 25 * HOUR
    emits, out = await h.send_event(backlog, timestamp_ms=taken, offset=1)
    assert out is None and _parked_stale(h, emits)
    [parked] = [e for e in emits if e.topic == h.settings.retry_topic]
    return t, parked


@pytest.mark.parametrize(
    ("body", "entity_survives"),
    [
        (_NO_ID, True),  # no chosen id: its payment records the charge, and is not asked
        ({**_NO_ID, "payment_id": "late1"}, False),  # chosen id, entity write lost too
    ],
    ids=["no-chosen-id-entity-kept", "chosen-id-entity-lost"],
)
async def test_a_second_copy_of_a_charged_reconciled_re_drive_is_not_refused(
    late: Harness, clock: Clock, body: dict, entity_survives: bool
) -> None:
    """(Review h66d, of a fix tried for the gap above and reverted.) Reconciled and
    re-driven two days after it was read (its hold lapsed), the day has room: it is
    charged, counted (500) and its hold released. A crash loses its batch's idempotency
    write (the key's record still PARKED) but keeps the limits write; the replay, stopped
    before its commit, sends the reconciled copy again (a new offset). Judged against the
    day (500 counted + 500 > 600), that copy was refused `quota_exceeded`, final, though
    the provider had charged it."""
    t, parked = await _late_park(late, clock, body)
    clock.now += 48 * HOUR
    key = next(k for k in late.idempotency if k.startswith(f"{t}:") and "\x1f" not in k)
    before = deepcopy(late.idempotency[key])
    assert before["state"] == "parked"
    first = await _reconciled_replay(late, parked, clock, offset=2)
    assert first is not None and kind(first) == "payment.succeeded", data(first)
    assert await _charges(late, t) == 1
    late.idempotency[key] = before  # the crash lost the DONE write
    if not entity_survives:
        late.tables.payments.clear()
    again = await _reconciled_replay(late, parked, clock, offset=3)  # the replay's re-send
    assert again is not None
    assert kind(again) == "payment.succeeded", (data(again), _volume(late, t))
    assert await _charges(late, t) == 1


async def test_a_charged_reconciled_re_drive_redelivered_after_a_quota_cut_is_not_refused(
    late: Harness, clock: Clock
) -> None:
    """(Review h66d.) The same offset this time: the crash lost the re-drive's
    idempotency and limits writes (its payment's survived), and the operator lowered the
    tenant's daily volume before the worker came back. Admitted before, the redelivery
    passes (its entity answers it); judged against the lowered quota, it was refused."""
    t, parked = await _late_park(late, clock, _NO_ID)
    clock.now += 48 * HOUR
    key = next(k for k in late.idempotency if k.startswith(f"{t}:") and "\x1f" not in k)
    idem_before = deepcopy(late.idempotency[key])
    limits_before = deepcopy(late.processor.limits.table[f"{t}:limits"])
    first = await _reconciled_replay(late, parked, clock, offset=2)
    assert first is not None and kind(first) == "payment.succeeded", data(first)
    late.idempotency[key] = idem_before
    late.processor.limits.table[f"{t}:limits"] = limits_before
    _set_limits(late, t, {"daily_payment_volume": {"USD": 400}})
    again = await _reconciled_replay(late, parked, clock, offset=2)  # redelivered
    assert again is not None
    assert kind(again) == "payment.succeeded", data(again)
    assert await _charges(late, t) == 1


@pytest_asyncio.fixture
async def patient(redis_url: str, clock: Clock) -> AsyncIterator[Harness]:
    """``late``, with a circuit that stays closed through six failures."""
    async with running_harness(
        redis_url, park_late_commands=True, breaker_failure_threshold=50
    ) as h:
        yield h


@_RECONCILED_QUOTA_GAP
async def test_a_reconciled_re_drive_under_a_key_a_resend_parked_keeps_the_days_quota(
    patient: Harness, clock: Clock
) -> None:
    """The same gap, through `resent` (review h66d): c1 parked by a provider outage on D
    (900 of 1000), its client resent it under the same key as c2, parked too, so the
    key's record names c2. Two days on the holds have lapsed; the tenant's own 1000 goes
    through; the reconciled re-drive of c1 is "another command under the key", held to
    the rate limit only: charged, the day takes 1900."""
    late = patient
    t = new_tenant_id()
    late.add_tenant(
        t,
        gateway_options={"fail_first": {f"ps:{t}:k1": 6}},  # both deliveries park
        limits={"daily_payment_volume": {"USD": 1000}},
    )
    body = {**_NO_ID, "amount": 900}
    c1 = build_command("payment.create", t, body, command_id="c1", idempotency_key="k1")
    emits, out = await late.send_event(c1, timestamp_ms=clock.ms, offset=1)
    assert out is None
    [parked] = [e for e in emits if e.topic == late.settings.retry_topic]
    clock.now += 60
    c2 = build_command("payment.create", t, body, command_id="c2", idempotency_key="k1")
    emits, out = await late.send_event(c2, timestamp_ms=clock.ms, offset=2)
    assert out is None and [e for e in emits if e.topic == late.settings.retry_topic]
    assert late.idempotency[f"{t}:k1"]["command_id"] == "c2", late.idempotency[f"{t}:k1"]
    clock.now += 48 * HOUR
    today = {**_NO_ID, "amount": 1000, "payment_id": "t1"}
    _, fresh = await late.send_event(
        build_command("payment.create", t, today, command_id="c3"), timestamp_ms=clock.ms, offset=3
    )
    assert fresh is not None and kind(fresh) == "payment.succeeded", data(fresh)
    out = await _reconciled_replay(late, parked, clock, offset=4)
    assert out is not None
    day, volume = _volume(late, t)
    assert kind(out) != "payment.succeeded", (data(out), day, volume)
    assert volume.get("USD", 0) <= 1000, (day, volume)


@pytest.mark.parametrize("with_late_payment", [False, True], ids=["control", "after-a-late-park"])
async def test_a_late_parks_hold_on_the_read_day_counts_against_the_day_before(
    late: Harness, clock: Clock, with_late_payment: bool
) -> None:
    """A late park's hold is placed on the day it is read (the 23rd); the backlog behind
    it, read in time, is judged on its own day (the 22nd) with that hold counted too:
    950 of 1000 is refused after a late 100, though the 22nd has room. Review h66d took
    that for a defect; review h66k showed why it is not: the 950, parked by its provider,
    would move its money on the 23rd beside the late 100 (both re-driven unchecked), and
    the 23rd went over its quota when the 22nd's check left the later hold out."""
    day0 = 1_790_035_200.0  # 2026-09-22T00:00:00Z
    clock.now = day0 + 24 * HOUR + 10 * HOUR  # read on the 23rd, 10:00 UTC
    t = late.add_tenant(limits={"daily_payment_volume": {"USD": 1000}})
    if with_late_payment:
        small = {**_NO_ID, "amount": 100, "payment_id": "late1"}
        emits, out = await late.send_event(
            build_command("payment.create", t, small, command_id="c0"),
            timestamp_ms=int((day0 + 10.5 * HOUR) * 1000),  # the 22nd, 10:30: 23.5 h late
            offset=1,
        )
        assert out is None and _parked_stale(late, emits)
    yesterday = {**_NO_ID, "amount": 950, "payment_id": "y1"}
    _, out = await late.send_event(
        build_command("payment.create", t, yesterday, command_id="c1"),
        timestamp_ms=int((day0 + 11.5 * HOUR) * 1000),  # the 22nd, 11:30: in time
        offset=2,
    )
    assert out is not None
    if with_late_payment:
        assert data(out)["reason"] == "quota_exceeded", data(out)
    else:
        assert kind(out) == "payment.succeeded", data(out)

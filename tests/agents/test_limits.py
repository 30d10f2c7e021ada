"""Tenant limits in the command pipeline (dict tables, the real simulator and Redis)."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest

from paystream.agents.pipeline import Emit, Inbound
from paystream.client import build_command
from paystream.gateways.simulator import SimulatorGateway
from paystream.settings import CloudEventsMode
from paystream.streams.codec import encode_event
from paystream.tenancy.limits import _tag as limits_tag
from paystream.tenancy.models import Tenant
from tests.agents.harness import Harness, data, kind, new_tenant_id, outcome_of

pytestmark = pytest.mark.asyncio

T0 = 1_790_000_000_000
_offsets = itertools.count(1)


def _record(
    command_type: str, tenant: str, body: dict[str, Any], command_id: str, at_ms: int, offset: int
) -> Inbound:
    event = build_command(command_type, tenant, body, command_id=command_id)
    rec = encode_event(event, tenant.encode(), CloudEventsMode.BINARY)
    return Inbound(
        key=rec.key,
        value=rec.value,
        headers=dict(rec.headers),
        timestamp_ms=at_ms,
        topic="paystream.commands",
        partition=0,
        offset=offset,
    )


async def _run(h: Harness, rec: Inbound) -> tuple[list[Emit], Any]:
    emits = await h.processor.process(rec)
    outcome = outcome_of(h.settings, emits)
    assert outcome is not None
    return emits, outcome


def _quota_tenant(harness: Harness) -> str:
    """A tenant with USD 1000 a day whose provider fails the first three attempts of
    payment p1 (the harness tries three times: its first delivery parks)."""
    t = new_tenant_id()
    harness.add_tenant(
        t,
        gateway_options={"fail_first": {f"pse:{t}:payment:p1": 3}},
        limits={"daily_payment_volume": {"USD": 1000}},
    )
    return t


def _pay(amount: int, token: str = "pm_card_visa") -> dict[str, Any]:
    return {"amount": amount, "currency": "USD", "payment_method_token": token}


async def _charges(h: Harness, tenant: str) -> int:
    gateway = h.pool.get(Tenant.model_validate(h.tenants[tenant]))
    assert isinstance(gateway, SimulatorGateway)
    return sum(1 for e in await gateway.effects() if e.kind == "charge")


async def _limited_after_one(
    h: Harness, command_type: str, body: dict[str, Any], offset: int
) -> tuple[str, Inbound, list[Emit]]:
    """A tenant at 1 command/s (burst 1) whose first command emptied the bucket, and the
    next record, which the limit rejected: (tenant, that record, what it emitted)."""
    t = h.add_tenant(limits={"commands_per_second": 1, "burst": 1})
    await _run(h, _record("customer.create", t, {}, f"first{offset}", T0, offset))
    limited = _record(command_type, t, body, f"limited{offset}", T0, offset + 1)
    emits, out = await _run(h, limited)
    assert data(out)["reason"] == "rate_limited"
    return t, limited, emits


async def test_over_the_rate_limit_is_rejected_without_a_gateway_call(harness: Harness) -> None:
    t = harness.add_tenant(limits={"commands_per_second": 2, "burst": 2})
    outs = [
        (await _run(harness, _record("payment.create", t, _pay(100), f"c{i}", T0, i)))[1]
        for i in range(3)
    ]
    assert [kind(o) for o in outs] == ["payment.succeeded"] * 2 + ["command.rejected"]
    body = data(outs[2])
    assert body["reason"] == "rate_limited"
    assert body["limit"] == "commands_per_second"
    assert body["retry_after_ms"] == 500
    assert await _charges(harness, t) == 2
    # Nothing was remembered under its idempotency key: sent again later, it goes through.
    assert f"{t}:c2" not in harness.idempotency
    _, later = await _run(harness, _record("payment.create", t, _pay(100), "c2", T0 + 600, 3))
    assert kind(later) == "payment.succeeded"
    assert await _charges(harness, t) == 3


async def test_a_redelivered_command_yields_the_identical_outcome(harness: Harness) -> None:
    t = harness.add_tenant(limits={"commands_per_second": 1, "burst": 2})
    ok = [_record("payment.create", t, _pay(100), f"ok{i}", T0, 10 + i) for i in range(2)]
    limited = _record("payment.create", t, _pay(100), "limited", T0, 12)
    first_ok = [(await _run(harness, rec))[0] for rec in ok]
    first_limited, out = await _run(harness, limited)
    assert data(out)["retry_after_ms"] == 1000
    _, later = await _run(harness, _record("customer.create", t, {}, "later", T0 + 1500, 13))
    assert kind(later) == "customer.created"
    state = dict(harness.processor.limits.table[f"{t}:limits"])
    # After a crash the records come again with the same offsets. Decided afresh, the
    # rejection would now say "retry after 500 ms"; it must be the same event as before.
    again_ok = [(await _run(harness, rec))[0] for rec in ok]
    again_limited, _ = await _run(harness, limited)
    assert [e.record for e in again_limited] == [e.record for e in first_limited]
    assert [[e.record for e in emits] for emits in again_ok] == [
        [e.record for e in emits] for emits in first_ok
    ]
    assert harness.processor.limits.table[f"{t}:limits"] == state
    assert await _charges(harness, t) == 2


async def test_payment_quotas(harness: Harness) -> None:
    t = harness.add_tenant(
        limits={"max_payment_amount": {"USD": 2000}, "daily_payment_volume": {"USD": 3000}}
    )
    at = T0

    async def pay(amount: int, token: str = "pm_card_visa") -> Any:
        offset = next(_offsets)
        rec = _record("payment.create", t, _pay(amount, token), f"p{offset}", at, offset)
        return (await _run(harness, rec))[1]

    big = await pay(2001)
    assert data(big)["reason"] == "quota_exceeded"
    assert data(big)["limit"] == "max_payment_amount"
    assert kind(await pay(2000)) == "payment.succeeded"
    assert kind(await pay(900, "pm_card_chargeDeclined")) == "payment.failed"  # not counted
    assert kind(await pay(1000)) == "payment.succeeded"
    over = await pay(1)
    assert data(over)["reason"] == "quota_exceeded"
    assert data(over)["used"] == 3000 and data(over)["limit"] == "daily_payment_volume"
    at = T0 + 86_400_000  # the next UTC day
    assert kind(await pay(2000)) == "payment.succeeded"


async def test_limits_leave_other_tenants_and_unlimited_tenants_alone(harness: Harness) -> None:
    limited = harness.add_tenant(limits={"commands_per_second": 1})
    free = harness.add_tenant()
    for i in range(5):
        _, out = await _run(harness, _record("customer.create", free, {}, f"f{i}", T0, 100 + i))
        assert kind(out) == "customer.created"
    _, out = await _run(harness, _record("customer.create", limited, {}, "l0", T0, 200))
    assert kind(out) == "customer.created"
    assert f"{free}:limits" not in harness.processor.limits.table


async def test_a_finished_command_replayed_by_key_is_not_counted(harness: Harness) -> None:
    t = harness.add_tenant(limits={"commands_per_second": 1, "burst": 2})
    _, first = await _run(harness, _record("payment.create", t, _pay(100), "k1", T0, 300))
    # The same command id again as a new record (a client retry): answered from the
    # idempotency record before the limit is consulted, so no token is spent...
    _, retry = await _run(harness, _record("payment.create", t, _pay(100), "k1", T0, 301))
    assert retry.get_id() == first.get_id()
    # ...and the bucket's second token is still there in the same millisecond.
    _, other = await _run(harness, _record("customer.create", t, {}, "k2", T0, 302))
    assert kind(other) == "customer.created"
    _, third = await _run(harness, _record("customer.create", t, {}, "k3", T0, 303))
    assert data(third)["reason"] == "rate_limited"


async def test_limits_lost_in_a_crash_are_caught_up_by_answered_redeliveries(
    harness: Harness,
) -> None:
    """The idempotency record of A survived a crash, the limits record did not: A's
    redelivery is answered from its record, and B must still be rejected as before."""
    t = harness.add_tenant(limits={"commands_per_second": 1, "burst": 1})
    a = _record("payment.create", t, _pay(100), "a", T0, 40)
    b = _record("payment.create", t, _pay(100), "b", T0, 41)
    await _run(harness, a)
    first_b, out = await _run(harness, b)
    assert data(out)["reason"] == "rate_limited"
    del harness.processor.limits.table[f"{t}:limits"]  # lost; A's idempotency record kept
    await _run(harness, a)
    again_b, _ = await _run(harness, b)
    assert [e.record for e in again_b] == [e.record for e in first_b]
    assert await _charges(harness, t) == 1


async def test_a_suspended_tenants_answered_redelivery_still_counts_toward_its_day(
    harness: Harness,
) -> None:
    """A crash kept A's idempotency record but lost the limits write; A is redelivered
    while its tenant is suspended (answered as before). Resumed the same day, the tenant
    must find A counted: B would otherwise take the day over its quota."""
    t = harness.add_tenant(limits={"daily_payment_volume": {"USD": 1000}})
    a = _record("payment.create", t, _pay(900), "a", T0, 45)
    _, first = await _run(harness, a)
    assert kind(first) == "payment.succeeded"
    del harness.processor.limits.table[f"{t}:limits"]  # lost; A's idempotency record kept
    harness.tenants[t] = {**harness.tenants[t], "status": "suspended"}
    _, again = await _run(harness, a)
    assert again.get_id() == first.get_id() and kind(again) == "payment.succeeded"
    harness.tenants[t] = {**harness.tenants[t], "status": "active"}
    _, over = await _run(harness, _record("payment.create", t, _pay(200), "b", T0, 46))
    assert data(over)["reason"] == "quota_exceeded" and data(over)["used"] == 900
    assert await _charges(harness, t) == 1


async def test_a_parked_payment_counts_toward_the_volume_once_it_succeeds(
    harness: Harness,
) -> None:
    # The provider fails the first three attempts of every key: the harness tries three
    # times, so the first delivery parks the payment and its redelivery succeeds.
    t = harness.add_tenant(
        gateway_options={"fail_first": {"*": 3}},
        limits={"daily_payment_volume": {"USD": 1000}},
    )
    parked = _record("payment.create", t, _pay(900), "parked", T0, 50)
    emits = await harness.processor.process(parked)
    assert [e.topic for e in emits] == [harness.settings.retry_topic]
    _, out = await _run(harness, parked)  # redelivered after a crash, same offset
    assert kind(out) == "payment.succeeded"
    _, over = await _run(harness, _record("payment.create", t, _pay(200), "next", T0, 51))
    assert data(over)["reason"] == "quota_exceeded" and data(over)["used"] == 900


async def test_a_parked_command_redriven_is_not_stopped_by_the_rate_limit(
    harness: Harness,
) -> None:
    t = harness.add_tenant(
        gateway_options={"fail_first": {"*": 3}},
        limits={"commands_per_second": 1, "burst": 1},
    )
    emits = await harness.processor.process(_record("payment.create", t, _pay(100), "p", T0, 60))
    assert [e.topic for e in emits] == [harness.settings.retry_topic]
    # `paystream dlq replay` sends it again as a new record in the same second: the
    # bucket is empty, but it was admitted once and the provider may have acted on it.
    _, out = await _run(harness, _record("payment.create", t, _pay(100), "p", T0 + 10, 61))
    assert kind(out) == "payment.succeeded"


async def test_removing_limits_does_not_undo_decisions_for_redeliveries(
    harness: Harness,
) -> None:
    t, limited, first = await _limited_after_one(harness, "customer.create", {}, 70)
    harness.tenants[t] = {**harness.tenants[t], "limits": {}}  # `tenants limits --clear`
    again, _ = await _run(harness, limited)
    assert [e.record for e in again] == [e.record for e in first]
    _, fresh = await _run(harness, _record("customer.create", t, {}, "z", T0, 72))
    assert kind(fresh) == "customer.created"


async def test_a_rejection_stands_for_its_record_after_the_command_finished(
    harness: Harness,
) -> None:
    t, rejected, first = await _limited_after_one(harness, "payment.create", _pay(100), 80)
    # The client retries the same command after retry_after_ms, and it succeeds...
    retry = _record(
        "payment.create", t, _pay(100), rejected.headers["ce_id"].decode(), T0 + 1000, 82
    )
    _, retried = await _run(harness, retry)
    assert kind(retried) == "payment.succeeded"
    # ...then a crash redelivers the rejected record: its own answer stands.
    again, _ = await _run(harness, rejected)
    assert [e.record for e in again] == [e.record for e in first]


async def test_a_parked_record_redelivered_spends_as_it_did(harness: Harness) -> None:
    """A parked, B rejected; the crash loses the limits but keeps A's parked record. A
    redelivered must spend its token again, or B would now be let through."""
    t = harness.add_tenant(
        gateway_options={"fail_first": {"*": 3}},
        limits={"commands_per_second": 1, "burst": 1},
    )
    a = _record("payment.create", t, _pay(100), "a", T0, 90)
    b = _record("customer.create", t, {}, "b", T0, 91)
    assert [e.topic for e in await harness.processor.process(a)] == [harness.settings.retry_topic]
    first_b, out = await _run(harness, b)
    assert data(out)["reason"] == "rate_limited"
    del harness.processor.limits.table[f"{t}:limits"]
    _, out_a = await _run(harness, a)
    assert kind(out_a) == "payment.succeeded"
    again_b, _ = await _run(harness, b)
    assert [e.record for e in again_b] == [e.record for e in first_b]


async def test_a_parked_payment_holds_its_amount_until_it_is_answered(harness: Harness) -> None:
    """Payments parked during a provider outage and re-driven later must not take the
    day over its quota: what they may still charge is held meanwhile."""
    t = harness.add_tenant(
        gateway_options={"fail_first": {"*": 3}},
        limits={"daily_payment_volume": {"USD": 1000}},
    )
    parked = _record("payment.create", t, _pay(900), "a", T0, 100)
    assert [e.topic for e in await harness.processor.process(parked)] == [
        harness.settings.retry_topic
    ]
    _, over = await _run(harness, _record("payment.create", t, _pay(200), "b", T0, 101))
    assert data(over)["reason"] == "quota_exceeded"
    assert (data(over)["used"], data(over)["held"]) == (0, 900)
    # `paystream dlq replay` re-drives it as a new record: it succeeds and is counted.
    _, out = await _run(harness, _record("payment.create", t, _pay(900), "a", T0 + 5, 102))
    assert kind(out) == "payment.succeeded"
    _, over = await _run(harness, _record("payment.create", t, _pay(200), "c", T0 + 6, 103))
    assert (data(over)["used"], data(over)["held"]) == (900, 0)
    assert await _charges(harness, t) == 1


async def test_a_declined_payment_releases_what_it_held(harness: Harness) -> None:
    t = harness.add_tenant(limits={"daily_payment_volume": {"USD": 1000}})
    declined = _pay(900, "pm_card_chargeDeclined")
    _, out = await _run(harness, _record("payment.create", t, declined, "d", T0, 110))
    assert kind(out) == "payment.failed"
    _, out = await _run(harness, _record("payment.create", t, _pay(1000), "e", T0, 111))
    assert kind(out) == "payment.succeeded"


async def test_a_parked_create_resent_under_a_new_command_is_held_once(
    harness: Harness,
) -> None:
    """Sent again under a new command id, a parked create with a chosen payment id is the
    same payment (one provider key): it is not held twice against the day's quota."""
    t = new_tenant_id()
    harness.add_tenant(
        t,
        gateway_options={"lose_response_first": {f"pse:{t}:payment:p1": 3}},
        limits={"daily_payment_volume": {"USD": 1000}},
    )
    body = {**_pay(900), "payment_id": "p1"}
    parked = await harness.processor.process(_record("payment.create", t, body, "a", T0, 120))
    assert [e.topic for e in parked] == [harness.settings.retry_topic]
    _, out = await _run(harness, _record("payment.create", t, body, "b", T0 + 1, 121))
    assert kind(out) == "payment.succeeded"
    _, over = await _run(harness, _record("payment.create", t, _pay(200), "c", T0 + 2, 122))
    assert (data(over)["used"], data(over)["held"]) == (900, 0)
    assert await _charges(harness, t) == 1


async def test_a_client_idempotency_key_cannot_name_a_chosen_payments_hold(
    harness: Harness,
) -> None:
    """Hold keys of chosen payment ids once equalled the idempotency table key of a
    client key "payment:p1": the second payment passed the first's hold, then released
    it, and the day moved 1900 against a quota of 1000."""
    t = _quota_tenant(harness)
    parked = await harness.processor.process(
        _record("payment.create", t, {**_pay(900), "payment_id": "p1"}, "a", T0, 140)
    )
    assert [e.topic for e in parked] == [harness.settings.retry_topic]
    event = build_command("payment.create", t, _pay(1000), idempotency_key="payment:p1")
    rec = encode_event(event, t.encode(), CloudEventsMode.BINARY)
    inbound = Inbound(rec.key, rec.value, dict(rec.headers), T0 + 1, "paystream.commands", 0, 141)
    _, out = await _run(harness, inbound)
    assert (data(out)["reason"], data(out)["held"]) == ("quota_exceeded", 900)


async def test_a_redelivered_answer_releases_the_hold_it_was_admitted_under(
    harness: Harness,
) -> None:
    """A re-driven parked payment (chosen id) succeeded; a crash kept its idempotency
    record but not the limits write. Its redelivery counted the amount but released a
    hold it never had, so the day was charged twice for it."""
    t = _quota_tenant(harness)
    body = {**_pay(600), "payment_id": "p1"}
    first = await harness.processor.process(_record("payment.create", t, body, "a", T0, 150))
    assert [e.topic for e in first] == [harness.settings.retry_topic]
    redrive = _record("payment.create", t, body, "a", T0 + 1, 151)  # `dlq replay`
    after_park = copy.deepcopy(harness.processor.limits.table[f"{t}:limits"])
    _, out = await _run(harness, redrive)
    assert kind(out) == "payment.succeeded"
    harness.processor.limits.table[f"{t}:limits"] = after_park  # the crash lost this
    await _run(harness, redrive)  # redelivered: answered from the idempotency record
    _, fits = await _run(harness, _record("payment.create", t, _pay(400), "b", T0 + 2, 152))
    assert kind(fits) == "payment.succeeded"


async def test_a_hold_an_older_version_took_is_released_when_the_payment_is_answered(
    harness: Harness,
) -> None:
    """Parked by the version that held chosen payment ids under "{tenant}:payment:{id}":
    re-driven after the upgrade, its hold was never released (the day's quota stayed
    short by its amount)."""
    t = _quota_tenant(harness)
    body = {**_pay(600), "payment_id": "p1"}
    parked = await harness.processor.process(_record("payment.create", t, body, "a", T0, 160))
    assert [e.topic for e in parked] == [harness.settings.retry_topic]
    state = harness.processor.limits.table[f"{t}:limits"]
    (held,) = state["held"].values()
    state["held"] = {limits_tag(f"{t}:payment:p1"): held}  # as the older version kept it
    _, out = await _run(harness, _record("payment.create", t, body, "a", T0 + 1, 161))
    assert kind(out) == "payment.succeeded"
    _, fits = await _run(harness, _record("payment.create", t, _pay(400), "b", T0 + 2, 162))
    assert kind(fits) == "payment.succeeded"


async def test_an_older_versions_hold_is_carried_over_on_a_redelivery_too(
    harness: Harness,
) -> None:
    """The same record redelivered (its decision kept for replays): the carried-over hold
    was not saved on that path, and the older tag held its amount for the rest of the day."""
    t = _quota_tenant(harness)
    record = _record("payment.create", t, {**_pay(600), "payment_id": "p1"}, "a", T0, 170)
    parked = await harness.processor.process(record)
    assert [e.topic for e in parked] == [harness.settings.retry_topic]
    state = harness.processor.limits.table[f"{t}:limits"]
    (held,) = state["held"].values()
    state["held"] = {limits_tag(f"{t}:payment:p1"): held}  # as the older version kept it
    _, out = await _run(harness, record)  # redelivered: same offset, decision kept
    assert kind(out) == "payment.succeeded"
    _, fits = await _run(harness, _record("payment.create", t, _pay(400), "b", T0 + 2, 171))
    assert kind(fits) == "payment.succeeded"


async def test_a_conflicting_create_for_the_same_payment_id_leaves_the_parked_ones_hold(
    harness: Harness,
) -> None:
    """A second create naming a parked payment's id, with another amount: the provider
    refuses it (one key, other parameters). It took the first one's hold over, then
    released it, and the day moved 1800 against a quota of 1000."""
    t = new_tenant_id()
    harness.add_tenant(
        t,
        gateway_options={"lose_response_first": {f"pse:{t}:payment:p1": 3}},
        limits={"daily_payment_volume": {"USD": 1000}},
    )
    first = _record("payment.create", t, {**_pay(900), "payment_id": "p1"}, "a", T0, 180)
    assert [e.topic for e in await harness.processor.process(first)] == [
        harness.settings.retry_topic
    ]
    other = _record("payment.create", t, {**_pay(50), "payment_id": "p1"}, "b", T0 + 1, 181)
    _, refused = await _run(harness, other)
    assert kind(refused) == "command.rejected"
    await _run(harness, other)  # its redelivery releases nothing either
    _, over = await _run(harness, _record("payment.create", t, _pay(900), "c", T0 + 2, 182))
    assert (data(over)["reason"], data(over)["held"]) == ("quota_exceeded", 900)
    _, out = await _run(
        harness, _record("payment.create", t, {**_pay(900), "payment_id": "p1"}, "a", T0 + 3, 183)
    )
    assert kind(out) == "payment.succeeded"
    assert await _charges(harness, t) == 1


async def test_a_payment_parked_before_midnight_holds_against_the_next_day(
    harness: Harness,
) -> None:
    """Holds counted only on the day they were placed: after midnight new payments filled
    the day, then the re-driven parked one was counted on top (1700 of 1000)."""
    t = _quota_tenant(harness)
    midnight = (T0 // 86_400_000 + 1) * 86_400_000
    body = {**_pay(800), "payment_id": "p1"}
    parked = await harness.processor.process(
        _record("payment.create", t, body, "a", midnight - 1_800_000, 190)
    )
    assert [e.topic for e in parked] == [harness.settings.retry_topic]
    _, over = await _run(
        harness, _record("payment.create", t, _pay(900), "b", midnight + 1_800_000, 191)
    )
    assert (data(over)["reason"], data(over)["held"]) == ("quota_exceeded", 800)
    _, out = await _run(harness, _record("payment.create", t, body, "a", midnight + 1_860_000, 192))
    assert kind(out) == "payment.succeeded"
    _, fits = await _run(
        harness, _record("payment.create", t, _pay(200), "c", midnight + 1_900_000, 193)
    )
    assert kind(fits) == "payment.succeeded"


async def test_a_hold_never_answered_stops_counting_after_the_next_day(harness: Harness) -> None:
    t = _quota_tenant(harness)
    parked = _record("payment.create", t, {**_pay(900), "payment_id": "p1"}, "a", T0, 196)
    assert [e.topic for e in await harness.processor.process(parked)] == [
        harness.settings.retry_topic
    ]
    _, next_day = await _run(
        harness, _record("payment.create", t, _pay(200), "b", T0 + 86_400_000, 197)
    )
    assert (data(next_day)["reason"], data(next_day)["held"]) == ("quota_exceeded", 900)
    # (`dlq replay` holds back what is older than the provider's 24 h window.)
    later = T0 + 2 * 86_400_000
    _, fits = await _run(harness, _record("payment.create", t, _pay(1000), "c", later, 198))
    assert kind(fits) == "payment.succeeded"


async def test_payments_awaiting_the_provider_are_capped(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each parked payment held its amount in the tenant's one limits record: a long
    outage grew it past the broker's message size, and every admission summed it."""
    monkeypatch.setattr("paystream.tenancy.limits.MAX_HOLDS", 3)
    t = new_tenant_id()
    harness.add_tenant(
        t,
        gateway_options={"fail_first": {"*": 3}},
        limits={"daily_payment_volume": {"USD": 100_000}},
    )
    for n in range(3):
        rec = _record("payment.create", t, _pay(100), f"p{n}", T0 + n, 200 + n)
        assert [e.topic for e in await harness.processor.process(rec)] == [
            harness.settings.retry_topic
        ]
    _, waits = await _run(harness, _record("payment.create", t, _pay(100), "p3", T0 + 5, 205))
    assert (data(waits)["reason"], data(waits)["limit"]) == ("quota_exceeded", "pending_payments")
    assert f"{t}:p3" not in harness.idempotency  # not remembered: sent again later, it runs
    assert len(harness.processor.limits.table[f"{t}:limits"]["held"]) == 3
    # A parked one re-driven is let through (the provider still down: parked again).
    redriven = _record("payment.create", t, _pay(100), "p0", T0 + 6, 206)
    assert [e.topic for e in await harness.processor.process(redriven)] == [
        harness.settings.retry_topic
    ]


async def test_only_listed_currencies_refuses_a_payment_in_another(harness: Harness) -> None:
    """Money limits name currencies, with no conversion: a tenant capped in USD paid any
    amount in JPY. With only_listed_currencies, a currency no limit names is refused
    (before the provider); without it, it moves unlimited as before."""
    strict = harness.add_tenant(
        limits={"max_payment_amount": {"USD": 500}, "only_listed_currencies": True}
    )
    loose = harness.add_tenant(limits={"max_payment_amount": {"USD": 500}})
    jpy = {"amount": 10**7, "currency": "jpy", "payment_method_token": "pm_card_visa"}
    _, refused = await _run(harness, _record("payment.create", strict, jpy, "c1", T0, 0))
    assert kind(refused) == "command.rejected"
    assert (data(refused)["reason"], data(refused)["limit"], data(refused)["allowed"]) == (
        "quota_exceeded",
        "currencies",
        ["USD"],
    )
    assert data(refused)["message"] == (
        "payments in JPY are not allowed for this tenant (only USD)"
    )
    assert await _charges(harness, strict) == 0
    _, usd = await _run(harness, _record("payment.create", strict, _pay(400), "c2", T0, 1))
    assert kind(usd) == "payment.succeeded"
    _, moved = await _run(harness, _record("payment.create", loose, jpy, "c3", T0, 2))
    assert kind(moved) == "payment.succeeded"


_T0 = 1_790_000_000_000


def _keyed_rec(
    ctype: str,
    t: str,
    body: dict[str, Any],
    cid: str,
    at_ms: int,
    offset: int,
    key: str | None = None,
) -> Inbound:
    event = build_command(ctype, t, body, command_id=cid, idempotency_key=key)
    r = encode_event(event, t.encode(), CloudEventsMode.BINARY)
    return Inbound(r.key, r.value, dict(r.headers), at_ms, "paystream.commands", 0, offset)


def _pay_usd(amount: int) -> dict[str, Any]:
    return {"amount": amount, "currency": "USD", "payment_method_token": "pm_card_visa"}


async def test_resends_under_a_parked_key_are_held_to_the_rate_limit(harness: Harness) -> None:
    """1 command/s, burst 1. One payment parks (provider down). The tenant then sends
    the same request under the same idempotency key with 20 new command ids within the
    same millisecond: none is refused `rate_limited`; every one runs its provider call
    with the provider failing (until the tenant's breaker opens: 5 attempts here) and
    each was parked again: 20 more records on the retry topic, none answered (review
    finding). The parked command itself, re-driven, still passes."""
    t = harness.add_tenant(
        gateway_options={"fail_first": {"*": 10_000}},
        limits={"commands_per_second": 1, "burst": 1},
    )
    first = await harness.processor.process(
        _keyed_rec("payment.create", t, _pay_usd(100), "p0", _T0, 1, "k")
    )
    assert [e.topic for e in first] == [harness.settings.retry_topic]
    topics = []
    for i in range(1, 21):
        emits = await harness.processor.process(
            _keyed_rec("payment.create", t, _pay_usd(100), f"p{i}", _T0, 1 + i, "k")
        )
        out = outcome_of(harness.settings, emits)
        topics.append(
            "rate_limited"
            if out is not None and data(out).get("reason") == "rate_limited"
            else emits[0].topic
        )
    # New commands: the rate limit answers the excess (a rate refusal is no final answer).
    assert topics.count("rate_limited") >= 19, topics
    redrive = await harness.processor.process(
        _keyed_rec("payment.create", t, _pay_usd(100), "p0", _T0, 40, "k")
    )  # `dlq replay` of p0, within the same millisecond: let through, parked again
    assert [e.topic for e in redrive] == [harness.settings.retry_topic]


@pytest.mark.parametrize(
    "limits",
    [{"daily_payment_volume": {"USD": 1000}}, {"max_payment_amount": {"USD": 900}}],
    ids=["volume", "lowered-max"],
)
async def test_a_create_over_an_existing_payment_is_answered_as_without_limits(
    harness: Harness, limits: dict[str, Any]
) -> None:
    """p1 succeeded; its sender, the answer lost, sends the same create (same payment_id)
    under a new command id: invalid_state "already exists", as without limits, not a
    quota refusal saying the payment made was not (review h59f: its client could charge
    again under a new id); nothing more counted, no second charge."""
    t = harness.add_tenant(limits=limits)
    body = {**_pay(900), "payment_id": "p1"}
    _, first = await _run(harness, _record("payment.create", t, body, "a", T0, next(_offsets)))
    assert kind(first) == "payment.succeeded", data(first)
    if "max_payment_amount" in limits:  # lowered since
        harness.add_tenant(t, limits={"max_payment_amount": {"USD": 500}})
    again = _record("payment.create", t, body, "b", T0 + 5, next(_offsets))
    _, out = await _run(harness, again)
    assert kind(out) == "command.rejected" and data(out)["reason"] == "invalid_state", data(out)
    assert await _charges(harness, t) == 1
    if "daily_payment_volume" in limits:  # the day's 900 counted once: 100 more fit
        nxt = _record("payment.create", t, _pay(100), "c", T0 + 6, next(_offsets))
        _, paid = await _run(harness, nxt)
        assert kind(paid) == "payment.succeeded", data(paid)

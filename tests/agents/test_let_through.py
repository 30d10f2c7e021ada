"""A command let through once (parked, or in flight at a crash) is never answered with a
final rejection by a later change of its tenant: the provider may have acted on it."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from cloudevents.core.v1.event import CloudEvent

from paystream.agents.pipeline import Emit, Inbound
from paystream.client import build_command
from paystream.first_attempt import FIRST_ATTEMPT_HEADER
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.simulator import SimulatorGateway
from paystream.settings import CloudEventsMode
from paystream.streams.codec import encode_event
from paystream.tenancy.models import Tenant
from tests.agents.conftest import running_harness
from tests.agents.harness import Harness, data, kind, new_tenant_id, outcome_of

pytestmark = pytest.mark.asyncio

_offsets = itertools.count(1)
# Records as written now: a retry under a key let through more than a day ago is held
# for a person (the provider's key window), whatever else a test is about.
_NOW_MS = int(time.time() * 1000)

_BODY = {
    "amount": 5000,
    "currency": "USD",
    "payment_method_token": "pm_card_visa",
    "payment_id": "p1",
}


def _record(tenant: str, command_id: str = "c1", body: dict[str, Any] = _BODY) -> Inbound:
    """payment.create (of p1 unless ``body`` says otherwise), as read from the commands
    topic (a new offset each time: the first delivery, then `dlq replay`'s copies)."""
    event = build_command("payment.create", tenant, body, command_id=command_id)
    rec = encode_event(event, tenant.encode(), CloudEventsMode.BINARY)
    return Inbound(
        rec.key, rec.value, dict(rec.headers), _NOW_MS, "paystream.commands", 0,
        next(_offsets),
    )  # fmt: skip


async def _charges(h: Harness, tenant: str, record: dict[str, Any]) -> int:
    gateway = h.pool.get(Tenant.model_validate(record))
    assert isinstance(gateway, SimulatorGateway)
    return sum(1 for e in await gateway.effects() if e.kind == "charge")


async def _parked_after_a_charge(h: Harness) -> tuple[str, dict[str, Any]]:
    """A tenant whose provider charged p1 but whose answers were lost: the command parked."""
    t = new_tenant_id()
    h.add_tenant(t, gateway_options={"lose_response_first": {f"pse:{t}:payment:p1": 3}})
    emits = await h.processor.process(_record(t))
    assert [e.topic for e in emits] == [h.settings.retry_topic]
    assert h.idempotency[f"{t}:c1"]["state"] == "parked"
    return t, dict(h.tenants[t])


def _reparked(h: Harness, emits: list[Emit], reason: str) -> None:
    assert outcome_of(h.settings, emits) is None
    assert [e.topic for e in emits] == [h.settings.retry_topic]
    assert dict(emits[0].record.headers)["paystream-park-reason"] == reason.encode()


async def test_a_parked_payment_of_a_tenant_suspended_since_finishes(harness: Harness) -> None:
    t, record = await _parked_after_a_charge(harness)
    harness.tenants[t] = {**record, "status": "suspended"}
    out = outcome_of(harness.settings, await harness.processor.process(_record(t)))
    assert out is not None and kind(out) == "payment.succeeded"
    assert f"{t}:p1" in harness.tables.payments
    assert await _charges(harness, t, record) == 1
    # New business stays refused.
    refused = outcome_of(harness.settings, await harness.processor.process(_record(t, "c2")))
    assert refused is not None and data(refused)["reason"] == "tenant_suspended"


async def test_a_parked_payment_of_a_tenant_removed_since_is_parked_again(
    harness: Harness,
) -> None:
    t, record = await _parked_after_a_charge(harness)
    del harness.tenants[t]
    emits = await harness.processor.process(_record(t))
    _reparked(harness, emits, "unknown_tenant")
    assert harness.idempotency[f"{t}:c1"]["state"] == "parked"
    harness.tenants[t] = record  # restored: the next replay finishes it, charging once
    out = outcome_of(harness.settings, await harness.processor.process(_record(t)))
    assert out is not None and kind(out) == "payment.succeeded"
    assert await _charges(harness, t, record) == 1


async def test_a_parked_payment_whose_gateway_cannot_be_opened_is_parked_again(
    harness: Harness,
) -> None:
    """E.g. `keys rotate` resealed the tenant's secrets before this worker had the new key."""
    t, record = await _parked_after_a_charge(harness)
    harness.tenants[t] = {**record, "secrets": {"api_key": "v1.mk-0000.AAAA.AAAA"}}
    emits = await harness.processor.process(_record(t))
    _reparked(harness, emits, "gateway_not_configured")
    harness.tenants[t] = record
    out = outcome_of(harness.settings, await harness.processor.process(_record(t)))
    assert out is not None and kind(out) == "payment.succeeded"
    assert await _charges(harness, t, record) == 1


async def test_a_new_command_of_a_removed_tenant_is_still_rejected(harness: Harness) -> None:
    t, _ = await _parked_after_a_charge(harness)
    del harness.tenants[t]
    out = outcome_of(harness.settings, await harness.processor.process(_record(t, "other")))
    assert out is not None and data(out)["reason"] == "unknown_tenant"


async def test_another_command_reusing_a_parked_ones_id_is_rejected_and_changes_nothing(
    harness: Harness,
) -> None:
    """Parked again for a removed tenant, any record carrying the parked command's id
    was put on the retry topic and rewrote its record: the real one, replayed, was then
    refused as a conflict, with the customer charged."""
    t, record = await _parked_after_a_charge(harness)
    del harness.tenants[t]
    event = build_command("payment.cancel", t, {"payment_id": "p1"}, command_id="c1")
    _, out = await harness.send_event(event, offset=next(_offsets))
    assert out is not None and data(out)["reason"] == "unknown_tenant"
    assert harness.idempotency[f"{t}:c1"]["command_type"] == "payment.create"
    harness.tenants[t] = record
    out = outcome_of(harness.settings, await harness.processor.process(_record(t)))
    assert out is not None and kind(out) == "payment.succeeded"
    assert await _charges(harness, t, record) == 1


@pytest_asyncio.fixture
async def patient_harness(redis_url: str) -> AsyncIterator[Harness]:
    """A harness whose circuit breaker never opens (a provider losing six answers in a
    row would open it, and the breaker would park what the test re-drives)."""
    async with running_harness(redis_url, breaker_failure_threshold=1000) as h:
        yield h


async def test_a_retry_under_the_same_key_does_not_strand_the_first_command(
    patient_harness: Harness,
) -> None:
    """c1 parked after a charge; the client retried as c2 under the same key (parked
    too, so the record names c2). With the tenant suspended, c1's replay was refused
    tenant_suspended for a charged payment."""
    harness = patient_harness
    t = new_tenant_id()
    harness.add_tenant(t, gateway_options={"lose_response_first": {f"pse:{t}:payment:p1": 6}})
    record = dict(harness.tenants[t])

    def keyed(command_id: str) -> CloudEvent:
        return build_command("payment.create", t, _BODY, command_id=command_id, idempotency_key="K")

    for command_id in ("c1", "c2"):
        emits, _ = await harness.send_event(keyed(command_id), offset=next(_offsets))
        assert [e.topic for e in emits] == [harness.settings.retry_topic]
    harness.tenants[t] = {**record, "status": "suspended"}
    _, first = await harness.send_event(keyed("c1"), offset=next(_offsets))
    assert first is not None and kind(first) == "payment.succeeded"
    # The other one, replayed too, is answered with that outcome (a retry of it).
    _, second = await harness.send_event(keyed("c2"), offset=next(_offsets))
    assert second is not None and second.get_id() == first.get_id()
    assert await _charges(harness, t, record) == 1


@pytest.mark.parametrize("change", ["suspended", "removed"])
async def test_a_limits_rejection_redelivered_after_a_tenant_change_is_the_same_event(
    harness: Harness, change: str
) -> None:
    """Kept by the limits, not the idempotency table: redelivered after a crash and a
    suspension it was answered tenant_suspended (or, once a retry under its key had
    succeeded, with that payment's outcome) under the same event id."""
    t = new_tenant_id()
    harness.add_tenant(t, limits={"commands_per_second": 1, "burst": 1})
    record = dict(harness.tenants[t])
    await harness.processor.process(_record(t, "c0"))  # takes the only token
    body = {**_BODY, "payment_id": "p2"}
    event = build_command("payment.create", t, body, command_id="c1", idempotency_key="K")
    rec = encode_event(event, t.encode(), CloudEventsMode.BINARY)
    limited = Inbound(
        rec.key, rec.value, dict(rec.headers), _NOW_MS, "paystream.commands", 0,
        next(_offsets),
    )  # fmt: skip
    first = await harness.processor.process(limited)
    out = outcome_of(harness.settings, first)
    assert out is not None and data(out)["reason"] == "rate_limited"
    retry = build_command("payment.create", t, body, command_id="c2", idempotency_key="K")
    _, ok = await harness.send_event(retry, offset=next(_offsets), timestamp_ms=_NOW_MS + 60_000)
    assert ok is not None and kind(ok) == "payment.succeeded"
    if change == "suspended":
        harness.tenants[t] = {**record, "status": "suspended"}
    else:
        del harness.tenants[t]
    again = await harness.processor.process(limited)  # redelivered after a crash
    assert [e.record for e in again] == [e.record for e in first]


async def test_a_parked_create_whose_resend_made_the_payment_gets_that_answer(
    harness: Harness,
) -> None:
    """Parked after the provider charged p1; the producer, seeing no answer, sent the same
    request under a new command id, which made p1 (the provider replayed its charge).
    Re-driven, the parked command was answered `invalid_state` ("already exists"), though
    its request is the one that charged the customer."""
    t, record = await _parked_after_a_charge(harness)
    resend = outcome_of(harness.settings, await harness.processor.process(_record(t, "c2")))
    assert resend is not None and kind(resend) == "payment.succeeded"
    out = outcome_of(harness.settings, await harness.processor.process(_record(t)))
    assert out is not None and kind(out) == "payment.succeeded"
    assert out.get_extension("causationid") == "c1" and out.get_id() != resend.get_id()
    body, made = data(out), data(resend)
    assert body["command_id"] == "c1" and body["answered_by"] == "c2"
    assert body["object"] == made["object"] and body["entity_id"] == "p1"
    assert await _charges(harness, t, record) == 1
    # Its redelivery is the same answer; the payment is as the resend left it.
    again = outcome_of(harness.settings, await harness.processor.process(_record(t)))
    assert again is not None and again.get_id() == out.get_id()
    assert harness.tables.payments[f"{t}:p1"]["version"] == made["version"]


async def test_a_fresh_create_of_an_existing_payment_is_still_invalid_state(
    harness: Harness,
) -> None:
    """Only a command let through before is answered by the one that made its entity: a
    new command naming an existing payment id is refused as before."""
    t, record = await _parked_after_a_charge(harness)
    await harness.processor.process(_record(t, "c2"))
    out = outcome_of(harness.settings, await harness.processor.process(_record(t, "c3")))
    assert out is not None and data(out)["reason"] == "invalid_state"
    assert "already exists" in data(out)["message"]
    assert await _charges(harness, t, record) == 1


def _command(
    tenant: str, command_type: str, body: dict[str, Any], command_id: str, key: str | None = None
) -> Inbound:
    event = build_command(command_type, tenant, body, command_id=command_id, idempotency_key=key)
    rec = encode_event(event, tenant.encode(), CloudEventsMode.BINARY)
    return Inbound(
        rec.key, rec.value, dict(rec.headers), _NOW_MS, "paystream.commands", 0,
        next(_offsets),
    )  # fmt: skip


async def _answer(h: Harness, rec: Inbound) -> CloudEvent:
    out = outcome_of(h.settings, await h.processor.process(rec))
    assert out is not None
    return out


# What takes a saved card's payment away: the card detached, or its customer deleted.
_CARD_OR_CUSTOMER_GONE = [
    ("payment_method.detach", {"payment_method_id": "pm1"}),
    ("customer.delete", {"customer_id": "c1"}),
]


async def _saved_card_charge_parked(h: Harness) -> tuple[str, dict[str, Any]]:
    """A tenant's customer c1 pays p1 with saved card pm1 (command k3); the provider
    charges, its answers are lost: parked. The tenant and the payment's data."""
    t = new_tenant_id()
    h.add_tenant(t, gateway_options={"lose_response_first": {f"pse:{t}:payment:p1": 3}})
    await _answer(h, _command(t, "customer.create", {"customer_id": "c1"}, "k1"))
    attach = {"customer_id": "c1", "payment_method_id": "pm1", "token": "pm_card_visa"}
    await _answer(h, _command(t, "payment_method.attach", attach, "k2"))
    pay = {"payment_id": "p1", "amount": 5000, "currency": "USD", "customer_id": "c1",
           "payment_method_id": "pm1"}  # fmt: skip
    emits = await h.processor.process(_command(t, "payment.create", pay, "k3"))
    assert [e.topic for e in emits] == [h.settings.retry_topic]
    return t, pay


async def _refund_parked_then_dispute_lost(
    h: Harness, key: str, amount: int | None = 2000
) -> tuple[str, dict[str, Any]]:
    """p1 paid; its refund r1 (command ``key``; ``amount``, or None: the rest) made at the
    provider, the answers lost: parked; then a dispute on p1 lost. The tenant and the
    refund's data."""
    t = new_tenant_id()
    h.add_tenant(t, gateway_options={"lose_response_first": {f"pse:{t}:refund:r1": 3}})
    pay = {"payment_id": "p1", "amount": 5000, "currency": "USD",
           "payment_method_token": "pm_card_visa"}  # fmt: skip
    assert kind(await _answer(h, _command(t, "payment.create", pay, "k1"))) == "payment.succeeded"
    refund: dict[str, Any] = {"refund_id": "r1", "payment_id": "p1"}
    if amount is not None:
        refund["amount"] = amount
    emits = await h.processor.process(_command(t, "refund.create", refund, key))
    assert [e.topic for e in emits] == [h.settings.retry_topic]
    # The dispute as paystream records it once lost (dispute.accept).
    h.tables.disputes[f"{t}:dp1"] = {"status": "lost"}
    h.tables.payments[f"{t}:p1"] = {**h.tables.payments[f"{t}:p1"], "dispute_id": "dp1"}
    return t, refund


@pytest.mark.parametrize(("since", "body"), _CARD_OR_CUSTOMER_GONE)
async def test_a_parked_charge_stands_after_its_card_or_customer_is_gone(
    harness: Harness, since: str, body: dict[str, Any]
) -> None:
    """Pay with a saved card, the answer lost (parked), then "don't keep my card" (or the
    customer deleted): re-driven, the create was refused by paystream's own checks
    (`invalid_state` detached, `not_found` customer) with the customer charged."""
    h = harness
    t, pay = await _saved_card_charge_parked(h)
    gone = await _answer(h, _command(t, since, body, "k4"))
    assert kind(gone) in ("payment_method.detached", "customer.deleted")
    out = await _answer(h, _command(t, "payment.create", pay, "k3"))  # `dlq replay`
    assert kind(out) == "payment.succeeded", data(out)
    assert h.tables.payments[f"{t}:p1"]["status"] == "succeeded"
    assert await _charges(h, t, h.tenants[t]) == 1
    # A new payment with that card (or for that customer) is refused as before.
    fresh = await _answer(h, _command(t, "payment.create", {**pay, "payment_id": "p2"}, "k5"))
    assert data(fresh)["reason"] in ("invalid_state", "not_found")
    assert await _charges(h, t, h.tenants[t]) == 1


async def test_a_parked_refund_stands_after_a_dispute_was_lost(harness: Harness) -> None:
    """Refunded at the provider, the answer lost (parked); a dispute on the payment was
    lost since: re-driven, the refund was refused ("charged back: nothing to refund")
    though the provider had refunded."""
    h = harness
    t, refund = await _refund_parked_then_dispute_lost(h, "k2")
    out = await _answer(h, _command(t, "refund.create", refund, "k2"))  # `dlq replay`
    assert kind(out) == "refund.succeeded", data(out)
    assert h.tables.payments[f"{t}:p1"]["amount_refunded"] == 2000
    # A new refund is refused by the rule as before.
    again = await _answer(h, _command(t, "refund.create", {"payment_id": "p1", "amount": 1}, "k3"))
    assert "charged back" in data(again)["message"]


async def test_a_parked_full_refund_stands_after_a_dispute_was_lost(harness: Harness) -> None:
    """As above, a refund of the rest (no amount): its re-drive was refused by the
    dispute rule, and the refusal kept under its key, the money refunded (review
    finding)."""
    h = harness
    t, refund = await _refund_parked_then_dispute_lost(h, "k2", amount=None)
    out = await _answer(h, _command(t, "refund.create", refund, "k2"))  # `dlq replay`
    assert kind(out) == "refund.succeeded", data(out)
    assert h.tables.payments[f"{t}:p1"]["amount_refunded"] == 5000
    gateway = h.pool.get(Tenant.model_validate(h.tenants[t]))
    assert isinstance(gateway, SimulatorGateway)
    assert [e.kind for e in await gateway.effects()].count("refund") == 1


@pytest.mark.parametrize("stored", [True, False], ids=["stored-then-lost", "never-reached"])
async def test_a_parked_update_re_driven_after_a_newer_one_keeps_the_newer(
    harness: Harness, stored: bool
) -> None:
    """Update u1 applied at the provider, its answer lost (parked); update u2 since.
    Re-driven, u1 (answered by the provider from its key, not applied again) wrote its
    old fields over u2's: the table and the ledger disagreed with the provider (review
    finding). Now the customer is read back from the provider: u1's name in it if the
    provider had applied u1, not if u1 never reached it (nor is it applied late). Its
    email (u2's since) or all of it not in effect, u1 is refused `invalid_state` naming
    the fields, not their values (review h77i: answered `customer.updated`)."""
    h = harness
    t = new_tenant_id()
    failing = "lose_response_first" if stored else "fail_first"
    h.add_tenant(t, gateway_options={failing: {f"ps:{t}:u1": 3}})
    await _answer(h, _command(t, "customer.create", {"customer_id": "c1", "email": "a@x.io"}, "k1"))
    old = {"customer_id": "c1", "email": "old@x.io", "name": "Old"}
    emits = await h.processor.process(_command(t, "customer.update", old, "u1"))
    assert [e.topic for e in emits] == [h.settings.retry_topic]
    new = {"customer_id": "c1", "email": "new@x.io"}
    assert kind(await _answer(h, _command(t, "customer.update", new, "u2"))) == "customer.updated"
    out = await _answer(h, _command(t, "customer.update", old, "u1"))  # `dlq replay`
    assert kind(out) == "command.rejected", data(out)
    assert data(out)["reason"] == "invalid_state", data(out)
    fields = "email" if stored else "email, name"
    message = data(out)["message"]
    assert f"not in effect ({fields} not as asked)" in message, message
    assert "old@x.io" not in message and "with a new command id" in message, message
    customer = h.tables.customers[f"{t}:c1"]
    name = "Old" if stored else None
    assert (customer["email"], customer["name"]) == ("new@x.io", name), customer
    gateway = h.pool.get(Tenant.model_validate(h.tenants[t]))
    assert isinstance(gateway, SimulatorGateway)
    at_provider = await gateway._store.read(customer["provider_customer_id"])
    assert at_provider is not None
    assert (at_provider["email"], at_provider["name"]) == ("new@x.io", name)


async def test_a_parked_update_re_driven_in_effect_is_answered_updated(harness: Harness) -> None:
    """u1 applied at the provider, its answer lost; u2 since changed another field.
    Re-driven, u1 is read back, all it asked in effect: `customer.updated`."""
    h = harness
    t = new_tenant_id()
    h.add_tenant(t, gateway_options={"lose_response_first": {f"ps:{t}:u1": 3}})
    await _answer(h, _command(t, "customer.create", {"customer_id": "c1", "email": "a@x.io"}, "k1"))
    u1 = {"customer_id": "c1", "name": "Old", "metadata": {"plan": "gold"}}
    emits = await h.processor.process(_command(t, "customer.update", u1, "u1"))
    assert [e.topic for e in emits] == [h.settings.retry_topic]
    new = {"customer_id": "c1", "email": "new@x.io"}
    assert kind(await _answer(h, _command(t, "customer.update", new, "u2"))) == "customer.updated"
    out = await _answer(h, _command(t, "customer.update", u1, "u1"))  # `dlq replay`
    assert kind(out) == "customer.updated", data(out)
    obj = data(out)["object"]
    assert (obj["email"], obj["name"], obj["metadata"]) == ("new@x.io", "Old", {"plan": "gold"})


async def test_a_parked_update_with_nothing_since_is_applied(harness: Harness) -> None:
    h = harness
    t = new_tenant_id()
    h.add_tenant(t, gateway_options={"lose_response_first": {f"ps:{t}:u1": 3}})
    await _answer(h, _command(t, "customer.create", {"customer_id": "c1", "email": "a@x.io"}, "k1"))
    update = {"customer_id": "c1", "email": "b@x.io"}
    emits = await h.processor.process(_command(t, "customer.update", update, "u1"))
    assert [e.topic for e in emits] == [h.settings.retry_topic]
    out = await _answer(h, _command(t, "customer.update", update, "u1"))  # `dlq replay`
    assert kind(out) == "customer.updated"
    assert h.tables.customers[f"{t}:c1"]["email"] == "b@x.io"


@pytest.mark.parametrize("stored", [True, False], ids=["stored-then-lost", "never-reached"])
async def test_parked_evidence_re_driven_after_the_dispute_was_accepted(
    harness: Harness, stored: bool
) -> None:
    """Evidence stored at the provider, its answer lost (parked); the dispute accepted
    since. Re-driven, it was refused invalid_state by paystream's own check though the
    provider held it (review finding); the provider decides now: it answers from its
    key, or refuses evidence it never had for a closed dispute. The dispute stays lost."""
    h = harness
    t = new_tenant_id()
    failing = "lose_response_first" if stored else "fail_first"
    h.add_tenant(t, gateway_options={failing: {f"ps:{t}:ev1": 3}})
    pay = {"payment_id": "p1", "amount": 5000, "currency": "USD",
           "payment_method_token": "pm_card_createDispute"}  # fmt: skip
    await _answer(h, _command(t, "payment.create", pay, "k1"))
    dispute = h.tables.payments[f"{t}:p1"]["dispute_id"]
    evidence = {"dispute_id": dispute, "evidence": {"customer_name": "A"}, "submit": False}
    emits = await h.processor.process(_command(t, "dispute.submit_evidence", evidence, "ev1"))
    assert [e.topic for e in emits] == [h.settings.retry_topic]
    closed = await _answer(h, _command(t, "dispute.accept", {"dispute_id": dispute}, "acc"))
    assert kind(closed) == "dispute.closed"
    out = await _answer(h, _command(t, "dispute.submit_evidence", evidence, "ev1"))
    if stored:
        assert kind(out) == "dispute.evidence_submitted", data(out)
    else:
        assert data(out)["reason"] == "invalid_state", data(out)
    assert h.tables.disputes[f"{t}:{dispute}"]["status"] == "lost"


async def test_an_answer_by_another_redelivered_does_not_count_the_money_twice(
    harness: Harness,
) -> None:
    """The resend counted the 5000; the parked command answered by it moved none. Its
    record redelivered after a crash that lost the limits write was counted as a 5000
    payment of its own: the day showed 10000 and refused a 4000 payment."""
    h = harness
    t = new_tenant_id()
    h.add_tenant(t, gateway_options={"lose_response_first": {f"pse:{t}:payment:p1": 3}},
                 limits={"daily_payment_volume": {"USD": 10000}})  # fmt: skip
    emits = await h.processor.process(_record(t))
    assert [e.topic for e in emits] == [h.settings.retry_topic]
    await _answer(h, _record(t, "c2"))
    before = copy.deepcopy(h.processor.limits.table[f"{t}:limits"])
    redrive = _record(t)
    first = await _answer(h, redrive)
    assert data(first)["answered_by"] == "c2"
    h.processor.limits.table[f"{t}:limits"] = before  # the crash lost the limits write
    again = await _answer(h, redrive)  # the same record, redelivered
    assert again.get_id() == first.get_id()
    other = {**_BODY, "payment_id": "p9", "amount": 4000}
    out = await _answer(h, _command(t, "payment.create", other, "c9"))
    assert kind(out) == "payment.succeeded", data(out)


async def test_an_answer_by_another_outlives_the_entitys_memory(harness: Harness) -> None:
    """The entity remembers its last 16 commands: 17 refunds since pushed the creating
    command out, and the re-driven parked create was `invalid_state` again. The command
    that made an entity is never forgotten."""
    h = harness
    t, record = await _parked_after_a_charge(h)
    made = await _answer(h, _record(t, "c2"))
    for i in range(17):
        refund = await _answer(h, _command(t, "refund.create", {"payment_id": "p1", "amount": 100},
                                           f"r{i}"))  # fmt: skip
        assert kind(refund) == "refund.succeeded", data(refund)
    assert "c2" in h.tables.payments[f"{t}:p1"]["applied"]
    out = await _answer(h, _record(t))
    assert kind(out) == "payment.succeeded" and data(out)["answered_by"] == "c2"
    assert data(out)["object"] == data(made)["object"]
    assert await _charges(h, t, record) == 1


async def test_a_payment_sent_again_past_the_window_is_answered_without_counting_again(
    harness: Harness,
) -> None:
    """Past the idempotency window the entity still knows the command that made it: it
    answers the resend (no second charge) and that answer counted the 5000 again, so the
    day showed 10000 and refused a 4000 payment. Only a crash redelivery of the record
    that moved the money counts it."""
    h = harness
    t = new_tenant_id()
    h.add_tenant(t, limits={"daily_payment_volume": {"USD": 10000}})
    first = await _answer(h, _record(t))
    assert kind(first) == "payment.succeeded"
    del h.idempotency[f"{t}:c1"]  # the idempotency window passed
    again = await _answer(h, _record(t))  # the client sends c1 again (a new record)
    assert kind(again) == "payment.succeeded" and again.get_id() == first.get_id()
    other = {**_BODY, "payment_id": "p9", "amount": 4000}
    out = await _answer(h, _command(t, "payment.create", other, "c9"))
    assert kind(out) == "payment.succeeded", data(out)


async def test_a_resend_past_the_window_redelivered_after_a_crash_counts_nothing(
    harness: Harness,
) -> None:
    """The resend past the window settles as moving no money, but its DONE idempotency
    record (source = the resend's record, outcome payment.succeeded) is what a crash
    redelivery of that same record is answered from: it counted the 5000 again."""
    h = harness
    t = new_tenant_id()
    h.add_tenant(t, limits={"daily_payment_volume": {"USD": 10000}})
    first = await _answer(h, _record(t))
    assert kind(first) == "payment.succeeded"
    del h.idempotency[f"{t}:c1"]  # the idempotency window passed
    before = copy.deepcopy(h.processor.limits.table[f"{t}:limits"])
    resend = _record(t)
    again = await _answer(h, resend)
    assert again.get_id() == first.get_id()
    h.processor.limits.table[f"{t}:limits"] = before  # crash lost the limits write
    redelivered = await _answer(h, resend)  # same record, DONE idempotency kept
    assert redelivered.get_id() == first.get_id()
    other = {**_BODY, "payment_id": "p9", "amount": 4000}
    out = await _answer(h, _command(t, "payment.create", other, "c9"))
    assert kind(out) == "payment.succeeded", data(out)


async def test_a_charge_whose_redelivery_was_parked_counts_once_replayed(
    harness: Harness,
) -> None:
    """c1 at O1 charged and wrote its entity; the crash lost the limits write and the
    DONE write (IN_FLIGHT kept). O1 redelivered while the gateway cannot be opened:
    reparked. `dlq replay` (new offset O2) hits AlreadyApplied with salt of O1 != O2: it
    was settled as rejected, and the 5000 that moved was never counted."""
    h = harness
    t = new_tenant_id()
    h.add_tenant(t, limits={"daily_payment_volume": {"USD": 10000}})
    record = dict(h.tenants[t])
    limits_before = copy.deepcopy(h.processor.limits.table.get(f"{t}:limits"))
    o1 = _record(t)
    first = await _answer(h, o1)
    assert kind(first) == "payment.succeeded"
    done = h.idempotency[f"{t}:c1"]
    # crash: limits write lost, DONE lost (IN_FLIGHT write kept), entity write kept
    if limits_before is None:
        h.processor.limits.table.pop(f"{t}:limits", None)
    else:
        h.processor.limits.table[f"{t}:limits"] = limits_before
    written = {k: v for k, v in done.items() if k != "counted"}  # the IN_FLIGHT as written
    h.idempotency[f"{t}:c1"] = {
        **written,
        "state": "in_flight",
        "outcome": None,
        "time": None,
        "traceparent": None,
        "id_salt": None,
    }
    # restart while the tenant's gateway cannot be opened (e.g. keys rotate)
    h.tenants[t] = {**record, "secrets": {"api_key": "v1.mk-0000.AAAA.AAAA"}}
    emits = await h.processor.process(o1)
    assert [e.topic for e in emits] == [h.settings.retry_topic], emits
    h.tenants[t] = record
    replayed = await _answer(h, _record(t))  # dlq replay: a new offset
    assert kind(replayed) == "payment.succeeded"
    other = {**_BODY, "payment_id": "p9", "amount": 6000}
    out = await _answer(h, _command(t, "payment.create", other, "c9"))
    # 5000 moved + 6000 > 10000: must be refused
    assert data(out).get("reason") == "quota_exceeded", (kind(out), data(out))


async def _refuse_the_key(self: SimulatorGateway, req: Any, *, idempotency_key: str) -> Any:
    """A provider refusing the tenant's credentials (a Stripe key rolled or revoked)."""
    raise GatewayError(
        ErrorCode.AUTHENTICATION_FAILED, "invalid api key", provider="simulator", retryable=False
    )


def _resent(tenant: str, command_id: str) -> Inbound:
    """payment.create of p1 under c1's idempotency key (its own record, or a resend's)."""
    event = build_command("payment.create", tenant, _BODY, command_id=command_id,
                          idempotency_key="c1")  # fmt: skip
    rec = encode_event(event, tenant.encode(), CloudEventsMode.BINARY)
    return Inbound(
        rec.key, rec.value, dict(rec.headers), _NOW_MS, "paystream.commands", 0,
        next(_offsets),
    )  # fmt: skip


@pytest.mark.parametrize("command_id", ["c1", "c2"])
async def test_parked_charge_redriven_into_refused_credentials_is_parked_again(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, command_id: str
) -> None:
    """The provider charged p1 and its answer was lost (parked). Re-driven while the
    provider refuses the tenant's key, it must not be answered (a later run, the key
    fixed, answers payment.succeeded for the same charge): parked again, record kept."""
    t, record = await _parked_after_a_charge(harness)
    assert await _charges(harness, t, record) == 1
    with monkeypatch.context() as m:
        m.setattr(SimulatorGateway, "create_payment", _refuse_the_key)
        emits = await harness.processor.process(_resent(t, command_id))
    out = outcome_of(harness.settings, emits)
    assert out is None, f"answered a charged payment: {kind(out)} {data(out).get('reason')}"
    assert [e.topic for e in emits] == [harness.settings.retry_topic]
    assert dict(emits[0].record.headers)["paystream-park-reason"] == b"gateway_not_configured"
    assert harness.idempotency[f"{t}:c1"]["state"] == "parked"
    assert harness.idempotency[f"{t}:c1"]["command_id"] == "c1"
    # The key fixed: one answer, for the one charge.
    answer = outcome_of(harness.settings, await harness.processor.process(_resent(t, command_id)))
    assert answer is not None and kind(answer) == "payment.succeeded"
    assert await _charges(harness, t, record) == 1


async def test_a_command_naming_its_id_twice_is_refused_before_the_provider(
    harness: Harness,
) -> None:
    """``ce_id`` and ``CE_ID``: the decoder kept the last, a park wrote its headers sorted,
    and the re-drive ran under the other id: a new request, charged again (review
    finding). Such a record is now undecodable: dead-lettered, answered, never charged."""
    t = new_tenant_id()
    harness.add_tenant(t, gateway_options={"lose_response_first": {"*": 3}})
    rec = _record(t, "first-id")
    emits = await harness.processor.process(
        dataclasses.replace(rec, headers={**rec.headers, "CE_ID": b"second-id"})
    )
    assert harness.settings.retry_topic not in [e.topic for e in emits]
    assert harness.settings.dlq_topic in [e.topic for e in emits]
    out = outcome_of(harness.settings, emits)
    assert out is not None and data(out)["reason"] == "validation_error"
    assert await _charges(harness, t, dict(harness.tenants[t])) == 0


async def test_a_parked_update_of_a_customer_deleted_since_is_answered_not_found(
    harness: Harness,
) -> None:
    """An entity missing is not remembered (its create may be parked); a customer deleted
    is kept, marked deleted, so a parked update re-driven after the delete is answered
    `not_found`, not parked again at every replay."""
    t = new_tenant_id()
    harness.add_tenant(t)
    await harness.send("customer.create", t, {"customer_id": "c1"})
    harness.add_tenant(t, gateway_options={"fail_first": {"*": 3}})
    update = build_command("customer.update", t, {"customer_id": "c1", "name": "B"})
    rec = encode_event(update, t.encode(), CloudEventsMode.BINARY)
    inbound = Inbound(rec.key, rec.value, dict(rec.headers), _NOW_MS,
                      "paystream.commands", 0, next(_offsets))  # fmt: skip
    assert [e.topic for e in await harness.processor.process(inbound)] == [
        harness.settings.retry_topic
    ]
    harness.add_tenant(t)  # the provider is well again
    deleted = await harness.send("customer.delete", t, {"customer_id": "c1"})
    assert kind(deleted) == "customer.deleted"
    again = dataclasses.replace(inbound, offset=next(_offsets))  # `dlq replay`'s copy
    out = outcome_of(harness.settings, await harness.processor.process(again))
    assert out is not None and data(out)["reason"] == "not_found", out and data(out)


@pytest.mark.parametrize(("since", "body"), _CARD_OR_CUSTOMER_GONE)
async def test_a_retry_under_a_parked_charges_key_is_answered_as_it(
    harness: Harness, since: str, body: dict[str, Any]
) -> None:
    """The client retries the parked payment under its key with a new command id, after
    the card was detached (or the customer deleted): the retry was refused by the new
    state and that refusal kept under the key, so the parked command, re-driven, was
    refused too, with the customer charged and no payment to refund (review finding)."""
    h = harness
    t, pay = await _saved_card_charge_parked(h)
    await _answer(h, _command(t, since, body, "k4"))
    retried = await _answer(h, _command(t, "payment.create", pay, "k3-retry", key="k3"))
    assert kind(retried) == "payment.succeeded", data(retried)
    redriven = await _answer(h, _command(t, "payment.create", pay, "k3"))  # `dlq replay`
    assert kind(redriven) == "payment.succeeded", data(redriven)
    assert h.tables.payments[f"{t}:p1"]["status"] == "succeeded"
    assert await _charges(h, t, h.tenants[t]) == 1


async def test_a_retry_under_a_parked_refunds_key_is_answered_as_it(harness: Harness) -> None:
    """The same for a refund the provider made, retried after a dispute was lost."""
    h = harness
    t, refund = await _refund_parked_then_dispute_lost(h, "k3")
    retried = await _answer(h, _command(t, "refund.create", refund, "k3-retry", key="k3"))
    assert kind(retried) == "refund.succeeded", data(retried)
    redriven = await _answer(h, _command(t, "refund.create", refund, "k3"))  # `dlq replay`
    assert kind(redriven) == "refund.succeeded", data(redriven)
    assert h.tables.payments[f"{t}:p1"]["amount_refunded"] == 2000


async def test_a_re_driven_command_answers_its_own_sender(harness: Harness) -> None:
    """Parks kept only the CloudEvents headers: the re-driven outcome carried no
    `paystream-request`, so a second sender of the same command id waiting meanwhile
    took it as its own answer (client.py; review finding). The park keeps the sender's
    request, and the re-driven outcome echoes it."""
    h = harness
    t = new_tenant_id()
    h.add_tenant(t, gateway_options={"lose_response_first": {f"pse:{t}:payment:p1": 3}})
    first = _record(t)
    now = int(time.time() * 1000)  # (re-driven within the provider's key window)
    first = dataclasses.replace(
        first, headers={**first.headers, "paystream-request": b"abcdefghijklmnop"},
        timestamp_ms=now,
    )  # fmt: skip
    [park] = [
        e.record for e in await h.processor.process(first) if e.topic == h.settings.retry_topic
    ]
    kept = dict(park.headers)
    assert kept["paystream-request"] == b"abcdefghijklmnop"
    resent = {
        k: v for k, v in kept.items() if not k.startswith(("paystream-park", "paystream-source"))
    }
    again = _record(t)
    emits = await h.processor.process(dataclasses.replace(again, headers=resent, timestamp_ms=now))
    [out] = [e.record for e in emits if e.topic == h.settings.events_topic]
    assert dict(out.headers)["paystream-request"] == b"abcdefghijklmnop"


@pytest.mark.parametrize(("hours_ago", "held"), [(25, True), (20, False)])
async def test_a_retry_under_the_key_of_a_charge_parked_a_day_ago_is_held(
    harness: Harness, hours_ago: int, held: bool
) -> None:
    """The client retries a parked payment under its key, a day later, with a new
    command id: it ran under the provider key the provider may have forgotten by then,
    and could charge again (its re-drives are held as stale; review finding). Held too,
    for a person to reconcile, and parked with the request's first attempt, so that
    `dlq replay` holds it back as well. Within the window it goes ahead as before."""
    h = harness
    t, pay = await _saved_card_charge_parked(h)
    record = h.idempotency[f"{t}:k3"]
    assert record["first_attempt_ms"] <= int(time.time() * 1000)
    record["first_attempt_ms"] -= hours_ago * 3600 * 1000
    retry = _command(t, "payment.create", pay, "k3-retry", key="k3")
    emits = await h.processor.process(retry)
    if not held:
        out = outcome_of(h.settings, emits)
        assert out is not None and kind(out) == "payment.succeeded", out and data(out)
        return
    [parked] = [e.record for e in emits]
    assert [e.topic for e in emits] == [h.settings.retry_topic]
    headers = dict(parked.headers)
    assert headers["paystream-park-reason"] == b"stale"
    assert int(headers[FIRST_ATTEMPT_HEADER]) == record["first_attempt_ms"]
    assert await _charges(h, t, h.tenants[t]) == 1
    assert h.idempotency[f"{t}:k3"]["command_id"] == "k3"  # the key's record, as it was


async def _payment_parked_twice_over(h: Harness) -> tuple[str, dict[str, Any], int]:
    """p1's create k3 parked (its answers lost), its first attempt made 20 hours old; then
    the client's retry k3-retry under key k3, parked too. The tenant, the payment's data
    and the key's first attempt."""
    t, pay = await _p1_create_parked(h, "lose_response_first", "pm_card_visa", times=6)
    h.idempotency[f"{t}:k3"]["first_attempt_ms"] -= 20 * 3600 * 1000
    first = h.idempotency[f"{t}:k3"]["first_attempt_ms"]
    emits = await h.processor.process(_command(t, "payment.create", pay, "k3-retry", key="k3"))
    [park] = [e.record for e in emits if e.topic == h.settings.retry_topic]
    # Parked with the request's first attempt: `dlq replay` judges it by that.
    assert int(dict(park.headers)[FIRST_ATTEMPT_HEADER]) == first
    assert h.idempotency[f"{t}:k3"]["first_attempt_ms"] == first
    return t, pay, first


async def test_a_parked_retry_re_driven_past_the_keys_window_is_held(harness: Harness) -> None:
    """The retry, parked within the window, re-driven when the request's first attempt
    is a day old: its own park said it was hours old, and its own id escaped the key's
    check, so it ran under a key the provider may have forgotten (review finding)."""
    h = harness
    t, pay, _ = await _payment_parked_twice_over(h)
    h.idempotency[f"{t}:k3"]["first_attempt_ms"] -= 6 * 3600 * 1000  # now 26 hours
    redriven = _command(t, "payment.create", pay, "k3-retry", key="k3")  # no header
    emits = await h.processor.process(redriven)
    assert [dict(e.record.headers)["paystream-park-reason"] for e in emits] == [b"stale"]
    assert await _charges(h, t, h.tenants[t]) == 1


async def test_a_backlog_read_late_is_not_held_when_first_retried(harness: Harness) -> None:
    """Read a day after it was produced (workers down), a command's first attempt is
    when it is first let through, not its record's time: its retry a minute later is no
    stale request (review finding)."""
    h = harness
    t = new_tenant_id()
    h.add_tenant(t, gateway_options={"fail_first": {f"pse:{t}:payment:p1": 3}})
    pay = {"payment_id": "p1", "amount": 5000, "currency": "USD",
           "payment_method_token": "pm_card_visa"}  # fmt: skip
    late = dataclasses.replace(
        _command(t, "payment.create", pay, "k3"), timestamp_ms=_NOW_MS - 25 * 3600 * 1000
    )
    emits = await h.processor.process(late)
    assert [e.topic for e in emits] == [h.settings.retry_topic]
    assert h.idempotency[f"{t}:k3"]["first_attempt_ms"] >= _NOW_MS
    retried = await _answer(h, _command(t, "payment.create", pay, "k3-retry", key="k3"))
    assert kind(retried) == "payment.succeeded", data(retried)


async def _p1_create_parked(
    h: Harness, knob: str, token: str, times: int = 3
) -> tuple[str, dict[str, Any]]:
    """p1's create k3 (a chosen id) parked, the simulator's ``knob`` failing its first
    ``times`` calls (three per command); it leaves its id's pointer to its record. The
    tenant and the data."""
    t = new_tenant_id()
    h.add_tenant(t, gateway_options={knob: {f"pse:{t}:payment:p1": times}})
    pay = {"payment_id": "p1", "amount": 5000, "currency": "USD",
           "payment_method_token": token}  # fmt: skip
    emits = await h.processor.process(_command(t, "payment.create", pay, "k3"))
    assert [e.topic for e in emits] == [h.settings.retry_topic]
    assert h.idempotency[f"{t}:\x1fcreate:payment:p1"]["key"] == f"{t}:k3"
    return t, pay


@pytest.mark.parametrize(("hours_ago", "held"), [(25, True), (20, False)])
async def test_a_create_of_a_chosen_id_retried_under_a_new_key_a_day_later_is_held(
    harness: Harness, hours_ago: int, held: bool
) -> None:
    """A create of a chosen id uses the id's provider key (pse:...:payment:p1). Parked,
    then retried a day later under a new command id and no idempotency key, it shares
    no record with the first but that key, which the provider may have forgotten: it
    charged again (review finding). Held for a person; within the window it runs, and
    the provider answers it from the key."""
    h = harness
    t, pay = await _p1_create_parked(h, "lose_response_first", "pm_card_visa")
    scope = h.idempotency[f"{t}:k3"]  # the parked create's record, which it names
    scope["first_attempt_ms"] -= hours_ago * 3600 * 1000
    emits = await h.processor.process(_command(t, "payment.create", pay, "k4"))
    if held:
        assert [dict(e.record.headers)["paystream-park-reason"] for e in emits] == [b"stale"]
        first = int(dict(emits[0].record.headers)[FIRST_ATTEMPT_HEADER])
        assert first == scope["first_attempt_ms"]
    else:
        out = outcome_of(h.settings, emits)
        assert out is not None and kind(out) == "payment.succeeded", out and data(out)
    assert await _charges(h, t, h.tenants[t]) == 1


async def test_a_parked_create_holds_back_no_other_records_expiry(harness: Harness) -> None:
    """A parked record is kept until answered (expiring a day after it parked, a retry
    under its key past the provider's window ran as new); the purge, which only ever
    looks at the front of the tenant's queue, held back every record written after it
    (review finding)."""
    h = harness
    t = new_tenant_id()
    h.add_tenant(t, gateway_options={"fail_first": {f"pse:{t}:customer:c1": 99}})
    emits = await h.processor.process(
        _command(t, "customer.create", {"customer_id": "c1", "email": "a@b.c"}, "c1")
    )
    assert [dict(e.record.headers)["paystream-park-reason"] for e in emits] == [
        b"provider_unavailable"
    ]
    h.processor.purge_expired(t, time.time())
    for i in range(20):
        await _answer(h, _command(t, "customer.create", {"email": f"x{i}@b.c"}, f"n{i}"))
    assert h.processor.purge_expired(t, time.time() + 2 * 86400) == 20
    kept = {k for k in h.idempotency if k.startswith(t)}
    assert kept == {f"{t}:c1", f"{t}:\x1fcreate:customer:c1"}  # parked: kept


async def test_a_create_of_a_chosen_id_answered_since_is_not_held(harness: Harness) -> None:
    """The id's parked create was answered since (declined: no entity): a create of the
    id a day later is a new request, not one the provider may have forgotten."""
    h = harness
    t, pay = await _p1_create_parked(h, "fail_first", "pm_card_chargeDeclined")
    declined = await _answer(h, _command(t, "payment.create", pay, "k3"))  # re-driven
    assert kind(declined) == "payment.failed", data(declined)
    assert h.idempotency[f"{t}:k3"]["state"] == "done"  # answered: the pointer is inert
    again = {**pay, "payment_method_token": "pm_card_visa"}
    emits = await h.processor.process(_command(t, "payment.create", again, "k4"))
    assert all(e.topic != h.settings.retry_topic for e in emits), emits


async def test_a_create_in_flight_at_a_crash_then_parked_again_is_held_a_day_later(
    harness: Harness,
) -> None:
    """p1's create k3 was in flight when the worker died (its record in flight, nothing
    parked it, so no pointer under its id); redelivered, it is parked again (its tenant's
    gateway cannot be opened). A create of p1 under a new key a day later ran under the
    id's provider key, maybe forgotten by then (review finding): held for a person."""
    h = harness
    t, pay = await _p1_create_parked(h, "lose_response_first", "pm_card_visa")
    scope = f"{t}:\x1fcreate:payment:p1"
    del h.idempotency[scope]  # as the crash left it: the call in flight, no park
    h.idempotency[f"{t}:k3"] = {**h.idempotency[f"{t}:k3"], "state": "in_flight"}
    record = dict(h.tenants[t])
    h.tenants[t] = {**record, "secrets": {"api_key": "v1.mk-0000.AAAA.AAAA"}}
    _reparked(h, await h.processor.process(_command(t, "payment.create", pay, "k3")),
              "gateway_not_configured")  # fmt: skip
    assert h.idempotency[scope]["key"] == f"{t}:k3"
    h.tenants[t] = record
    h.idempotency[f"{t}:k3"]["first_attempt_ms"] -= 25 * 3600 * 1000
    emits = await h.processor.process(_command(t, "payment.create", pay, "k4"))
    assert [dict(e.record.headers)["paystream-park-reason"] for e in emits] == [b"stale"]
    assert await _charges(h, t, record) == 1


async def test_a_later_parked_create_of_the_id_leaves_the_earlier_ones_pointer(
    harness: Harness,
) -> None:
    """Two creates of p1 parked under different keys: the id's pointer keeps naming the
    one first attempted earlier, whose provider key the provider forgets first."""
    h = harness
    t, pay = await _p1_create_parked(h, "lose_response_first", "pm_card_visa", times=6)
    h.idempotency[f"{t}:k3"]["first_attempt_ms"] -= 3600 * 1000
    emits = await h.processor.process(_command(t, "payment.create", pay, "k4"))
    assert [e.topic for e in emits] == [h.settings.retry_topic]  # its answers lost too
    assert h.idempotency[f"{t}:k4"]["state"] == "parked"
    assert h.idempotency[f"{t}:\x1fcreate:payment:p1"]["key"] == f"{t}:k3"


# A let-through dispute command whose first attempt never reached the provider, re-driven
# after another command moved the dispute on: the provider's fresh answer is taken.
async def _disputed_parking(h: Harness, failing_key: str) -> tuple[str, str]:
    t = new_tenant_id()
    h.add_tenant(t, gateway_options={"fail_first": {f"ps:{t}:{failing_key}": 3}})
    pay = {"payment_id": "p1", "amount": 5000, "currency": "USD",
           "payment_method_token": "pm_card_createDispute"}  # fmt: skip
    await _answer(h, _command(t, "payment.create", pay, "k1"))
    return t, h.tables.payments[f"{t}:p1"]["dispute_id"]


async def test_a_parked_accept_re_driven_after_evidence_records_the_dispute_lost(
    harness: Harness,
) -> None:
    """accept `acc` never reached the provider (parked); evidence (not submitted) stored
    since; re-driven, the provider accepts it now (lost), but the record keeps
    needs_response: `dispute.closed` says an open dispute, and paystream's own
    lost-dispute refund rule no longer applies."""
    h = harness
    t, dispute = await _disputed_parking(h, "acc")
    emits = await h.processor.process(_command(t, "dispute.accept", {"dispute_id": dispute}, "acc"))
    assert [e.topic for e in emits] == [h.settings.retry_topic]
    evidence = {"dispute_id": dispute, "evidence": {"customer_name": "A"}, "submit": False}
    ev = await _answer(h, _command(t, "dispute.submit_evidence", evidence, "ev1"))
    assert kind(ev) == "dispute.evidence_submitted", data(ev)
    out = await _answer(h, _command(t, "dispute.accept", {"dispute_id": dispute}, "acc"))
    assert kind(out) == "dispute.closed", data(out)
    gateway = h.pool.get(Tenant.model_validate(h.tenants[t]))
    assert isinstance(gateway, SimulatorGateway)
    held = h.tables.disputes[f"{t}:{dispute}"]
    at_provider = await gateway._store.read(held["provider_dispute_id"])
    assert at_provider is not None and at_provider["status"] == "lost"  # the provider did
    assert data(out)["object"]["status"] == "lost", data(out)["object"]
    assert h.tables.disputes[f"{t}:{dispute}"]["status"] == "lost"


async def test_parked_submitted_evidence_re_driven_after_other_evidence_records_it(
    harness: Harness,
) -> None:
    h = harness
    t, dispute = await _disputed_parking(h, "ev2")
    final = {"dispute_id": dispute, "evidence": {"customer_name": "B"}, "submit": True}
    emits = await h.processor.process(_command(t, "dispute.submit_evidence", final, "ev2"))
    assert [e.topic for e in emits] == [h.settings.retry_topic]
    draft = {"dispute_id": dispute, "evidence": {"customer_name": "A"}, "submit": False}
    assert kind(await _answer(h, _command(t, "dispute.submit_evidence", draft, "ev1"))) == (
        "dispute.evidence_submitted"
    )
    out = await _answer(h, _command(t, "dispute.submit_evidence", final, "ev2"))
    assert kind(out) == "dispute.evidence_submitted", data(out)
    held = h.tables.disputes[f"{t}:{dispute}"]
    assert (held["status"], held["evidence_submitted"]) == ("under_review", True), held

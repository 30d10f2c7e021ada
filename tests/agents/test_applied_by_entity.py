"""A command whose entity write survived a crash that lost its idempotency (and limits)
writes is known by its entity as having taken effect: its redelivery is answered as
before (the same event), or parked again, but never refused for what changed since (the
tenant suspended or removed, its provider key broken, its limit lowered), and the
provider is not asked again.

Every command type that changes an entity is run once, its idempotency record dropped
(what the crash lost), the tenant changed, and the very record redelivered."""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from paystream.gateways.simulator import SimulatorGateway
from paystream.streams.commands import COMMANDS
from paystream.tenancy.models import Tenant
from tests.agents.harness import Harness, data, kind, outcome_of
from tests.agents.test_let_through import _answer, _charges, _command, _record
from tests.agents.test_limits_exactly_once import limited_tenant, used

pytestmark = pytest.mark.asyncio

Setup = Callable[[Harness, str], Awaitable[tuple[str, dict[str, Any]]]]
_CHARGE = {"amount": 800, "currency": "USD", "payment_method_token": "pm_card_visa"}


async def _made(h: Harness, t: str, command_type: str, body: dict[str, Any]) -> str:
    out = await h.send(command_type, t, body)
    assert not kind(out).endswith("rejected"), data(out)
    return str(data(out)["object"]["id"])


async def _customer(h: Harness, t: str) -> str:
    return await _made(h, t, "customer.create", {"customer_id": "cus1", "email": "a@example.com"})


async def _authorized(h: Harness, t: str) -> str:
    return await _made(h, t, "payment.create", {**_CHARGE, "capture": "manual"})


async def _dispute(h: Harness, t: str) -> str:
    out = await h.send(
        "payment.create", t, {**_CHARGE, "payment_method_token": "pm_card_createDispute"}
    )
    return str(data(out)["object"]["dispute_id"])


async def _detach(h: Harness, t: str) -> tuple[str, dict[str, Any]]:
    cus = await _customer(h, t)
    pm = await _made(h, t, "payment_method.attach", {"customer_id": cus, "token": "pm_card_visa"})
    return "payment_method.detach", {"payment_method_id": pm}


async def _none(command_type: str, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return command_type, body


async def _with_customer(h: Harness, t: str, command_type: str) -> tuple[str, dict[str, Any]]:
    cus = await _customer(h, t)
    body: dict[str, Any] = {"customer_id": cus}
    if command_type == "customer.update":
        body["name"] = "Bo"
    if command_type == "payment_method.attach":
        body["token"] = "pm_card_visa"
    return command_type, body


async def _with_authorization(h: Harness, t: str, command_type: str) -> tuple[str, dict[str, Any]]:
    return command_type, {"payment_id": await _authorized(h, t)}


async def _after_3ds(h: Harness, t: str) -> tuple[str, dict[str, Any]]:
    """A payment whose customer finished 3-D Secure at the provider, read back."""
    token = {"payment_method_token": "pm_card_authenticationRequired"}
    pay = await _made(h, t, "payment.create", {**_CHARGE, **token})
    gateway = h.pool.get(Tenant.model_validate(h.tenants[t]))
    assert isinstance(gateway, SimulatorGateway)
    await gateway.complete_authentication(h.tables.payments[f"{t}:{pay}"]["provider_payment_id"])
    return "payment.refresh", {"payment_id": pay}


async def _with_charge(h: Harness, t: str) -> tuple[str, dict[str, Any]]:
    pay = await _made(h, t, "payment.create", _CHARGE)
    return "refund.create", {"payment_id": pay, "amount": 300}


async def _refund_failing_later(h: Harness, t: str) -> tuple[str, dict[str, Any]]:
    """A refund of Stripe's 5126 card, read back failed (the payment changes too)."""
    pay = await _made(
        h, t, "payment.create", {**_CHARGE, "payment_method_token": "pm_card_refundFail"}
    )
    refund = await _made(h, t, "refund.create", {"payment_id": pay, "amount": 300})
    return "refund.refresh", {"refund_id": refund}


_MONTHLY = {"amount": 1200, "currency": "EUR", "interval": "month"}


async def _with_card(
    h: Harness, t: str, body: dict[str, Any], token: str = "pm_card_visa"
) -> tuple[str, dict[str, Any]]:
    cus = await _customer(h, t)
    pm = await _made(h, t, "payment_method.attach", {"customer_id": cus, "token": token})
    return "subscription.create", {"customer_id": cus, "payment_method_id": pm, **_MONTHLY, **body}


async def _subscribed(
    h: Harness, t: str, command_type: str, **body: Any
) -> tuple[str, dict[str, Any]]:
    _, create = await _with_card(h, t, {})
    sub = await _made(h, t, "subscription.create", create)
    if command_type == "subscription.refresh":  # a renewal due at the provider
        gateway = h.pool.get(Tenant.model_validate(h.tenants[t]))
        assert isinstance(gateway, SimulatorGateway)
        await gateway.advance_clock(32 * 24 * 3600)
    return command_type, {"subscription_id": sub, **body}


async def _paused(h: Harness, t: str) -> tuple[str, dict[str, Any]]:
    _, body = await _subscribed(h, t, "subscription.pause")
    await _made(h, t, "subscription.pause", body)
    return "subscription.resume", body


async def _with_balance(
    h: Harness, t: str, command_type: str, **body: Any
) -> tuple[str, dict[str, Any]]:
    """A settled charge, and for a cancel or a refresh a payout of it made."""
    await _made(h, t, "payment.create", _CHARGE)
    gateway = h.pool.get(Tenant.model_validate(h.tenants[t]))
    assert isinstance(gateway, SimulatorGateway)
    await gateway.advance_clock(2 * 24 * 3600)
    if command_type == "payout.create":
        return command_type, {"amount": 500, "currency": "USD", **body}
    payout = await _made(h, t, "payout.create", {"amount": 500, "currency": "USD"})
    if command_type == "payout.refresh":  # in transit at the provider since
        await gateway.advance_clock(24 * 3600)
    return command_type, {"payout_id": payout}


async def _transferring(
    h: Harness, t: str, command_type: str, **body: Any
) -> tuple[str, dict[str, Any]]:
    """An enabled connected account and a charge; for a reversal, a transfer of it."""
    _, refresh = await _onboarded(h, t)
    await _made(h, t, "connected_account.refresh", refresh)
    pay = await _made(h, t, "payment.create", _CHARGE)
    create = {**refresh, "amount": 500, "currency": "USD", "payment_id": pay}
    if command_type == "transfer.create":
        return command_type, {**create, **body}
    transfer = await _made(h, t, "transfer.create", create)
    return command_type, {"transfer_id": transfer, **body}


_VAT = {"display_name": "VAT", "percentage": "20", "inclusive": False, "country": "GB"}


async def _rate(h: Harness, t: str) -> str:
    return await _made(h, t, "tax_rate.create", {**_VAT, "tax_rate_id": "vat"})


async def _with_rate(h: Harness, t: str, command_type: str) -> tuple[str, dict[str, Any]]:
    rate = await _rate(h, t)
    if command_type == "tax_rate.archive":
        return command_type, {"tax_rate_id": rate}
    lines = [{"amount": 1000, "reference": "l1"}]
    return command_type, {"currency": "GBP", "line_items": lines, "tax_rate_ids": [rate]}


async def _taxed_payment(h: Harness, t: str) -> tuple[str, dict[str, Any]]:
    _, calc = await _with_rate(h, t, "tax.calculate")
    calc_id = await _made(h, t, "tax.calculate", calc)
    body = {**_CHARGE, "currency": "GBP", "amount": 1200, "tax_calculation_id": calc_id}
    return "payment.create", body


async def _taxed_subscription(h: Harness, t: str) -> tuple[str, dict[str, Any]]:
    rate = await _rate(h, t)
    return await _with_card(h, t, {"tax_rate_ids": [rate]})


async def _onboarded(h: Harness, t: str) -> tuple[str, dict[str, Any]]:
    """A connected account its holder onboarded since (enabled at the next read)."""
    body = {"country": "US", "email": "shop+enabled@example.com"}
    account = await _made(h, t, "connected_account.create", body)
    links = {"refresh_url": "https://p.example/r", "return_url": "https://p.example/d"}
    out = await h.send(
        "connected_account.onboarding_link", t, {"connected_account_id": account, **links}
    )
    assert kind(out) == "connected_account.onboarding_link_created", data(out)
    return "connected_account.refresh", {"connected_account_id": account}


_LINES = [{"description": "Hours", "amount": 1500, "quantity": 2}]


async def _invoiced(
    h: Harness, t: str, command_type: str, token: str = "pm_card_visa", **body: Any
) -> tuple[str, dict[str, Any]]:
    """A customer's saved card and, for a command about an invoice, a draft of it
    (finalized for a pay or a write-off)."""
    cus = await _customer(h, t)
    pm = await _made(h, t, "payment_method.attach", {"customer_id": cus, "token": token})
    create = {"customer_id": cus, "payment_method_id": pm, "currency": "EUR", "line_items": _LINES}
    if command_type == "invoice.create":
        return command_type, {**create, **body}
    invoice = await _made(h, t, "invoice.create", create)
    if command_type in ("invoice.pay", "invoice.mark_uncollectible"):
        await _made(h, t, "invoice.finalize", {"invoice_id": invoice})
    return command_type, {"invoice_id": invoice, **body}


async def _with_dispute(h: Harness, t: str, command_type: str) -> tuple[str, dict[str, Any]]:
    body: dict[str, Any] = {"dispute_id": await _dispute(h, t)}
    if command_type == "dispute.submit_evidence":
        body["evidence"] = {"customer_name": "Ada"}
    return command_type, body


SCENARIOS: dict[str, Setup] = {
    "customer.create": lambda h, t: _none("customer.create", {"customer_id": "cus9"}),
    "customer.create (derived id)": lambda h, t: _none("customer.create", {"name": "Ada"}),
    "customer.update": lambda h, t: _with_customer(h, t, "customer.update"),
    "customer.delete": lambda h, t: _with_customer(h, t, "customer.delete"),
    "customer.erase": lambda h, t: _with_customer(h, t, "customer.erase"),
    "payment_method.attach": lambda h, t: _with_customer(h, t, "payment_method.attach"),
    "payment_method.detach": _detach,
    "payment.create": lambda h, t: _none("payment.create", {**_CHARGE, "payment_id": "p9"}),
    "payment.create (derived id)": lambda h, t: _none("payment.create", _CHARGE),
    "payment.create (manual)": lambda h, t: _none(
        "payment.create", {**_CHARGE, "capture": "manual"}
    ),
    "payment.capture": lambda h, t: _with_authorization(h, t, "payment.capture"),
    "payment.cancel": lambda h, t: _with_authorization(h, t, "payment.cancel"),
    "payment.refresh": lambda h, t: _with_authorization(h, t, "payment.refresh"),
    "payment.refresh (after 3-D Secure)": _after_3ds,
    "refund.create": _with_charge,
    "refund.refresh": _refund_failing_later,
    "dispute.submit_evidence": lambda h, t: _with_dispute(h, t, "dispute.submit_evidence"),
    "dispute.accept": lambda h, t: _with_dispute(h, t, "dispute.accept"),
    "subscription.create": lambda h, t: _with_card(h, t, {"subscription_id": "s9"}),
    "subscription.create (derived id)": lambda h, t: _with_card(h, t, {}),
    "subscription.create (declined)": lambda h, t: _with_card(
        h, t, {}, token="pm_card_chargeCustomerFail"
    ),
    "subscription.cancel": lambda h, t: _subscribed(h, t, "subscription.cancel"),
    "subscription.cancel (at period end)": lambda h, t: _subscribed(
        h, t, "subscription.cancel", at_period_end=True
    ),
    "subscription.refresh (renewed)": lambda h, t: _subscribed(h, t, "subscription.refresh"),
    "subscription.update": lambda h, t: _subscribed(h, t, "subscription.update", amount=2400),
    "subscription.pause": lambda h, t: _subscribed(h, t, "subscription.pause"),
    "subscription.resume": _paused,
    "payout.create": lambda h, t: _with_balance(h, t, "payout.create", payout_id="po9"),
    "payout.create (derived id)": lambda h, t: _with_balance(h, t, "payout.create"),
    "payout.create (instant)": lambda h, t: _with_balance(h, t, "payout.create", method="instant"),
    "payout.cancel": lambda h, t: _with_balance(h, t, "payout.cancel"),
    "payout.refresh (in transit)": lambda h, t: _with_balance(h, t, "payout.refresh"),
    "subscription.create (taxed)": _taxed_subscription,
    "tax_rate.create": lambda h, t: _none("tax_rate.create", {**_VAT, "tax_rate_id": "t9"}),
    "tax_rate.create (derived id)": lambda h, t: _none("tax_rate.create", _VAT),
    "tax_rate.archive": lambda h, t: _with_rate(h, t, "tax_rate.archive"),
    "tax.calculate": lambda h, t: _with_rate(h, t, "tax.calculate"),
    "payment.create (taxed)": _taxed_payment,
    "connected_account.create": lambda h, t: _none(
        "connected_account.create", {"country": "US", "connected_account_id": "ca9"}
    ),
    "connected_account.create (derived id)": lambda h, t: _none(
        "connected_account.create", {"country": "DE", "capabilities": ["transfers"]}
    ),
    "connected_account.refresh (onboarded)": _onboarded,
    "invoice.create": lambda h, t: _invoiced(h, t, "invoice.create", invoice_id="in9"),
    "invoice.create (derived id)": lambda h, t: _invoiced(h, t, "invoice.create"),
    "invoice.finalize": lambda h, t: _invoiced(h, t, "invoice.finalize"),
    "invoice.pay": lambda h, t: _invoiced(h, t, "invoice.pay"),
    "invoice.pay (declined)": lambda h, t: _invoiced(
        h, t, "invoice.pay", token="pm_card_chargeCustomerFail"
    ),
    "invoice.update": lambda h, t: _invoiced(
        h, t, "invoice.update", line_items=[{"description": "Other", "amount": 2500}]
    ),
    "invoice.void": lambda h, t: _invoiced(h, t, "invoice.void"),
    "invoice.mark_uncollectible": lambda h, t: _invoiced(h, t, "invoice.mark_uncollectible"),
    "invoice.refresh": lambda h, t: _invoiced(h, t, "invoice.refresh"),
    "transfer.create": lambda h, t: _transferring(h, t, "transfer.create", transfer_id="tr9"),
    "transfer.create (derived id)": lambda h, t: _transferring(h, t, "transfer.create"),
    "transfer.reverse": lambda h, t: _transferring(h, t, "transfer.reverse", amount=200),
    "transfer.reverse (all)": lambda h, t: _transferring(h, t, "transfer.reverse"),
    "transfer.refresh (unchanged)": lambda h, t: _transferring(h, t, "transfer.refresh"),
}


async def _effects(h: Harness, record: dict[str, Any]) -> list[tuple[str, str]]:
    gateway = h.pool.get(Tenant.model_validate(record))
    assert isinstance(gateway, SimulatorGateway)
    return sorted((e.kind, e.idempotency_key) for e in await gateway.effects())


def _entities(h: Harness) -> dict[str, Any]:
    return {
        name: copy.deepcopy(dict(getattr(h.tables, name)))
        for name in (
            "customers",
            "payment_methods",
            "payments",
            "refunds",
            "disputes",
            "subscriptions",
            "invoices",
            "payouts",
            "tax_rates",
            "tax_calculations",
            "connected_accounts",
            "transfers",
        )
    }


def _durable(h: Harness) -> tuple[Any, ...]:
    """What of the tables a crash before delivery keeps: all of them, as they are now."""
    return (
        copy.deepcopy(h.idempotency),
        _entities(h),
        copy.deepcopy(dict(h.processor.limits.table)),
    )


def _crash_back_to(h: Harness, durable: tuple[Any, ...]) -> None:
    """What survives a worker killed after the provider call, before delivery."""
    h.idempotency.clear()
    h.idempotency.update(durable[0])
    for name, rows in durable[1].items():
        getattr(h.tables, name).clear()
        getattr(h.tables, name).update(rows)
    h.processor.limits.table.clear()
    h.processor.limits.table.update(durable[2])


def _change(h: Harness, t: str, how: str) -> None:
    record = h.tenants[t]
    if how == "suspended":
        h.tenants[t] = {**record, "status": "suspended"}
    elif how == "removed":
        del h.tenants[t]
    else:  # `keys rotate` before this worker has the new key: the gateway cannot open
        h.tenants[t] = {**record, "secrets": {"api_key": "v1.mk-0000.AAAA.AAAA"}}


@pytest.mark.parametrize("how", ["suspended", "gateway", "removed"])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
async def test_a_redelivery_whose_idempotency_record_was_lost_keeps_its_answer(
    harness: Harness, scenario: str, how: str
) -> None:
    h = harness
    t = h.add_tenant()
    record = dict(h.tenants[t])
    command_type, body = await SCENARIOS[scenario](h, t)
    rec = _command(t, command_type, body, "cmd-under-test")
    first = await _answer(h, rec)
    assert not kind(first).endswith("rejected"), data(first)
    entities, effects = _entities(h), await _effects(h, record)
    del h.idempotency[f"{t}:cmd-under-test"]  # the crash lost the idempotency batch
    _change(h, t, how)
    emits = await h.processor.process(rec)
    if how == "removed":  # as one let through: parked until the tenant is back
        assert [e.topic for e in emits] == [h.settings.retry_topic]
        h.tenants[t] = record
        again = await _answer(h, _command(t, command_type, body, "cmd-under-test"))  # replay
    else:
        again = await _answer(h, rec)
    assert (kind(again), again.get_id()) == (kind(first), first.get_id()), data(again)
    assert data(again) == data(first)
    assert _entities(h) == entities
    assert await _effects(h, record) == effects  # the provider was not asked again


async def test_a_command_that_never_ran_is_still_refused(harness: Harness) -> None:
    """The entity probe finds nothing for a command that did not run: the refusals stand."""
    h = harness
    t = h.add_tenant()
    _change(h, t, "suspended")
    out = await _answer(h, _command(t, "payment.create", {**_CHARGE, "payment_id": "p1"}, "c1"))
    assert data(out)["reason"] == "tenant_suspended"
    assert "p1" not in str(h.tables.payments)


async def test_another_commands_payment_does_not_pass_for_this_ones(harness: Harness) -> None:
    """A payment another command made (same chosen id) is not this command's effect: a
    new command naming it, for a tenant whose gateway is broken, is refused as before."""
    h = harness
    t = h.add_tenant()
    body = {**_CHARGE, "payment_id": "p1"}
    assert kind(await _answer(h, _command(t, "payment.create", body, "c1"))) == (
        "payment.succeeded"
    )
    _change(h, t, "gateway")
    out = await _answer(h, _command(t, "payment.create", body, "c2"))
    assert data(out)["reason"] == "gateway_not_configured"


LIMITS = {"daily_payment_volume": {"USD": 100000}}


async def test_a_charge_redelivered_after_its_limit_was_lowered_keeps_its_answer(
    harness: Harness,
) -> None:
    """The crash lost the idempotency and limits batches; the tenant's daily limit was
    lowered below the payment meanwhile: answered as before, counted once, and the
    refusal it was about to get is not kept for the record."""
    h = harness
    t = h.add_tenant(limits=LIMITS)
    before = copy.deepcopy(h.processor.limits.table.get(f"{t}:limits"))
    rec = _command(t, "payment.create", {**_CHARGE, "payment_id": "p1"}, "c1")
    first = await _answer(h, rec)
    assert kind(first) == "payment.succeeded"
    del h.idempotency[f"{t}:c1"]
    if before is None:
        h.processor.limits.table.pop(f"{t}:limits", None)
    else:
        h.processor.limits.table[f"{t}:limits"] = before
    h.tenants[t] = {**h.tenants[t], "limits": {"daily_payment_volume": {"USD": 100}}}
    again = await _answer(h, rec)
    assert (kind(again), again.get_id()) == (kind(first), first.get_id()), data(again)
    state = h.processor.limits.table[f"{t}:limits"]
    assert (state.get("volume") or {}).get("USD") == 800  # counted once
    assert kind(await _answer(h, rec)) == "payment.succeeded"  # and so it stays


async def test_a_new_charge_over_a_lowered_limit_is_still_refused(harness: Harness) -> None:
    h = harness
    t = h.add_tenant(limits={"daily_payment_volume": {"USD": 100}})
    out = await _answer(h, _command(t, "payment.create", {**_CHARGE, "payment_id": "p1"}, "c1"))
    assert data(out)["reason"] == "quota_exceeded"


async def test_every_command_that_changes_an_entity_is_covered() -> None:
    """A new command type must show that its handler finds its own effect before it
    calls the provider (customer.export, balance.retrieve and an onboarding link change
    nothing: a link's replay answers without its URL, tests/agents/test_connected_accounts.py)."""
    unchanging = {"customer.export", "balance.retrieve", "connected_account.onboarding_link"}
    assert {name.split(" ")[0] for name in SCENARIOS} == set(COMMANDS) - unchanging


@pytest.mark.parametrize("how", ["removed", "suspended+gateway"])
async def test_a_resend_past_the_window_parked_by_its_entity_counts_once(
    harness: Harness, how: str
) -> None:
    """c1 charged and counted at O1. The window passes; the client sends c1 again at O2
    while the tenant is removed (or suspended with its gateway unusable): known by its
    entity, it is parked again, marked as counted by another record, so the dlq replay
    at O3 answers it without counting the money a second time."""
    h = harness
    t = limited_tenant(h)
    record = dict(h.tenants[t])
    first = await _answer(h, _record(t))
    assert kind(first) == "payment.succeeded" and used(h, t) == 5000
    del h.idempotency[f"{t}:c1"]  # the idempotency window passed
    if how == "removed":
        del h.tenants[t]
    else:
        h.tenants[t] = {**record, "status": "suspended",
                        "secrets": {"api_key": "v1.mk-0000.AAAA.AAAA"}}  # fmt: skip
    emits = await h.processor.process(_record(t))  # the late resend, O2
    assert [e.topic for e in emits] == [h.settings.retry_topic]
    h.tenants[t] = record
    again = await _answer(h, _record(t))  # dlq replay, O3
    assert again.get_id() == first.get_id()
    assert await _charges(h, t, record) == 1  # no money moved again
    assert used(h, t) == 5000, f"one 5000 payment counted as {used(h, t)}"


async def test_rate_limited_exports_are_not_run_to_look_for_an_effect(harness: Harness) -> None:
    """customer.export changes nothing, so the entity probe does not run its handler
    (which scans tables) for each export the rate limit refuses."""
    h = harness
    t = h.add_tenant(limits={"commands_per_second": 1, "burst": 1})
    await _answer(h, _command(t, "customer.create", {"customer_id": "cus1"}, "mk"))

    class Counting(dict[str, Any]):
        scans = 0

        def items(self):  # type: ignore[override]
            Counting.scans += 1
            return super().items()

    h.tables.payments = Counting(h.tables.payments)  # type: ignore[assignment]
    refused = 0
    for i in range(20):
        out = await _answer(h, _command(t, "customer.export", {"customer_id": "cus1"}, f"e{i}"))
        refused += data(out).get("reason") == "rate_limited"
    assert refused >= 19
    assert Counting.scans == 0, f"{refused} refused exports scanned payments {Counting.scans} times"


_DISPUTED = {**_CHARGE, "payment_method_token": "pm_card_createDispute"}


async def _disputed_at_capture(h: Harness, t: str) -> tuple[str, dict[str, Any]]:
    payment = await _made(h, t, "payment.create", {**_DISPUTED, "capture": "manual"})
    return "payment.capture", {"payment_id": payment}


DISPUTED: dict[str, Setup] = {
    "payment.create": lambda h, t: _none("payment.create", {**_DISPUTED, "payment_id": "p7"}),
    "payment.create (derived id)": lambda h, t: _none("payment.create", _DISPUTED),
    "payment.capture": _disputed_at_capture,
}


@pytest.mark.parametrize("how", ["suspended", "gateway", "removed"])
@pytest.mark.parametrize("scenario", sorted(DISPUTED))
async def test_a_charge_known_only_by_the_dispute_it_raised_keeps_its_answer(
    harness: Harness, scenario: str, how: str
) -> None:
    """The crash kept the dispute the charge raised and lost every other write of the
    command (its payment's among them): the dispute, whose id the command derives,
    knows it took effect."""
    h = harness
    t = h.add_tenant()
    record = dict(h.tenants[t])
    command_type, body = await DISPUTED[scenario](h, t)
    payments_before = copy.deepcopy(dict(h.tables.payments))
    rec = _command(t, command_type, body, "cmd-under-test")
    first = await _answer(h, rec)
    assert data(first)["object"]["dispute_id"], data(first)
    entities, effects = _entities(h), await _effects(h, record)
    del h.idempotency[f"{t}:cmd-under-test"]
    h.tables.payments.clear()
    h.tables.payments.update(copy.deepcopy(payments_before))  # the payment write lost
    _change(h, t, how)
    emits = await h.processor.process(rec)
    if how == "removed":
        assert [e.topic for e in emits] == [h.settings.retry_topic]
        h.tenants[t] = record
        again = await _answer(h, _command(t, command_type, body, "cmd-under-test"))
    else:
        again = await _answer(h, rec)
    assert (kind(again), again.get_id()) == (kind(first), first.get_id()), data(again)
    assert data(again) == data(first)
    assert await _effects(h, record) == effects  # the provider was not asked again
    assert _entities(h) == entities  # the payment repaired from the answer


@pytest.mark.parametrize(
    "then",
    [
        "suspended",
        pytest.param(
            "removed",
            marks=pytest.mark.xfail(
                strict=True,
                reason="nothing of a batch is durable before it is delivered: a crash after "
                "the provider call leaves neither an in-flight record nor an entity to "
                "recognise it by, and a removed tenant has no provider left to ask",
            ),
        ),
    ],
)
async def test_K1_a_charge_in_flight_at_a_crash_before_delivery_is_not_refused(
    harness: Harness, then: str
) -> None:
    """The provider charged; the worker died before producing the batch (its in-flight
    idempotency record is coalesced into the final one, so never produced); the tenant
    is suspended or removed before the redelivery. Suspended: the provider, asked
    whether it knows the charge's key, does, so the command finishes (the provider
    answers from the key: the same event, no second charge). Removed: answered
    `unknown_tenant` although the money moved (README: known gap K1)."""
    h = harness
    t = h.add_tenant()
    record = dict(h.tenants[t])
    durable = _durable(h)
    rec = _command(t, "payment.create", {**_CHARGE, "payment_id": "p1"}, "cmd-k1")
    rec = dataclasses.replace(rec, timestamp_ms=int(time.time() * 1000))  # a crash just now
    first = await _answer(h, rec)
    assert kind(first) == "payment.succeeded"
    _crash_back_to(h, durable)
    _change(h, t, then)
    emits = await h.processor.process(rec)
    if then == "removed":  # parked again, as one let through, would be right
        assert [e.topic for e in emits] == [h.settings.retry_topic]
    else:  # finished: the provider answers it from its key
        again = outcome_of(h.settings, emits)
        assert again is not None and not kind(again).endswith("rejected"), data(again)
        assert again.get_id() == first.get_id()  # the same answer, the same event
    assert [kind_ for kind_, _ in await _effects(h, record)] == ["charge"]

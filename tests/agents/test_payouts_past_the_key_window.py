"""Creates of a chosen id past the provider's key window, and a parked payout cancel.

A payout.create (or subscription.create) of a chosen id uses the id's provider key
(pse:...:payout:po1), as payment.create's does; parked with its answer lost and retried a
day later under a new command id, only that key ties it to the first, and Stripe forgets
keys after 24 h: held for a person then (provider_window.CREATES), as payments are, or it
could pay out (bill) twice (review h74m, finding 1). A parked payout.cancel re-driven after
a webhook's refresh recorded the cancel emits no second payout.canceled (finding 2)."""

from __future__ import annotations

import inspect
import itertools
import re
import time
from typing import Any

import pytest

from paystream.agents import handlers
from paystream.agents.pipeline import Inbound
from paystream.agents.provider_window import CREATES
from paystream.client import build_command
from paystream.first_attempt import FIRST_ATTEMPT_HEADER
from paystream.gateways.simulator import SimulatorGateway
from paystream.settings import CloudEventsMode
from paystream.streams.codec import encode_event
from paystream.streams.commands import COMMANDS
from paystream.tenancy.models import Tenant
from tests.agents.harness import Harness, data, kind, new_tenant_id, outcome_of

pytestmark = pytest.mark.asyncio
DAY = 24 * 3600
_offsets = itertools.count(1)
_NOW_MS = int(time.time() * 1000)


def _command(tenant: str, command_type: str, body: dict[str, Any], command_id: str) -> Inbound:
    event = build_command(command_type, tenant, body, command_id=command_id)
    rec = encode_event(event, tenant.encode(), CloudEventsMode.BINARY)
    return Inbound(
        rec.key, rec.value, dict(rec.headers), _NOW_MS, "paystream.commands", 0,
        next(_offsets),
    )  # fmt: skip


def _gateway(h: Harness, tenant: str) -> SimulatorGateway:
    gateway = h.pool.get(Tenant.model_validate(h.tenants[tenant]))
    assert isinstance(gateway, SimulatorGateway)
    return gateway


async def _payouts_made(h: Harness, t: str) -> int:
    return sum(1 for e in await _gateway(h, t).effects() if e.kind == "payout.created")


@pytest.mark.parametrize(("hours_ago", "held"), [(25, True), (20, False)])
async def test_a_payout_of_a_chosen_id_retried_under_a_new_key_a_day_later_is_held(
    harness: Harness, hours_ago: int, held: bool
) -> None:
    h = harness
    t = new_tenant_id()
    h.add_tenant(t, gateway_options={"lose_response_first": {f"pse:{t}:payout:po1": 3}})
    paid = await h.send(
        "payment.create", t,
        {"amount": 9000, "currency": "EUR", "payment_method_token": "pm_card_visa"},
    )  # fmt: skip
    assert kind(paid) == "payment.succeeded", data(paid)
    await _gateway(h, t).advance_clock(2 * DAY)
    body = {"payout_id": "po1", "amount": 3000, "currency": "EUR"}
    await _resent_under_a_new_key(h, t, "payout", body, hours_ago=hours_ago, held=held)
    assert await _payouts_made(h, t) == 1


async def _resent_under_a_new_key(
    h: Harness, t: str, entity: str, body: dict[str, Any], *, hours_ago: int, held: bool
) -> None:
    """``{entity}.create`` of ``body`` made under key k3 with its answers lost (parked),
    its first attempt moved ``hours_ago`` back, then sent again under key k4: ``held``,
    it is parked stale; else it is created."""
    emits = await h.processor.process(_command(t, f"{entity}.create", body, "k3"))
    assert [e.topic for e in emits] == [h.settings.retry_topic]  # made, its answers lost
    assert h.idempotency[f"{t}:k3"]["state"] == "parked"
    h.idempotency[f"{t}:k3"]["first_attempt_ms"] -= hours_ago * 3600 * 1000
    emits = await h.processor.process(_command(t, f"{entity}.create", body, "k4"))
    if held:
        # As payment.create's (test_let_through): held for a person, with the first
        # attempt's time, since the provider (Stripe: 24 h) may have forgotten the key.
        reasons = [dict(e.record.headers).get("paystream-park-reason") for e in emits]
        assert reasons == [b"stale"], reasons
        first = int(dict(emits[0].record.headers)[FIRST_ATTEMPT_HEADER])
        assert first == h.idempotency[f"{t}:k3"]["first_attempt_ms"]
    else:
        out = outcome_of(h.settings, emits)
        assert out is not None and kind(out) == f"{entity}.created", out and data(out)


async def test_every_create_keyed_by_its_chosen_id_is_held_past_the_window() -> None:
    """Each create_key caller's entity type is in CREATES (payout and subscription were
    not: a new create keyed by its id must be added there, or it runs unheld)."""
    keyed = set(re.findall(r'create_key\(\s*"(\w+)"', inspect.getsource(handlers)))
    assert keyed == {kind for kind, _ in CREATES.values()}, keyed
    for command_type, (_, field) in CREATES.items():
        assert field in COMMANDS[command_type].model_fields, command_type


async def _payment_method(h: Harness, t: str) -> None:
    made = await h.send("customer.create", t, {"customer_id": "c1"})
    assert kind(made) == "customer.created", data(made)
    saved = await h.send(
        "payment_method.attach", t,
        {"customer_id": "c1", "token": "pm_card_visa", "payment_method_id": "m1"},
    )  # fmt: skip
    assert kind(saved) == "payment_method.attached", data(saved)


@pytest.mark.parametrize(("hours_ago", "held"), [(25, True), (20, False)])
async def test_a_subscription_of_a_chosen_id_retried_under_a_new_key_a_day_later_is_held(
    harness: Harness, hours_ago: int, held: bool
) -> None:
    """As a payout's: the first invoice is charged at create, under the id's key."""
    h = harness
    t = new_tenant_id()
    h.add_tenant(t, gateway_options={"lose_response_first": {f"pse:{t}:subscription:s1": 3}})
    await _payment_method(h, t)
    body = {
        "subscription_id": "s1", "customer_id": "c1", "payment_method_id": "m1",
        "amount": 1500, "currency": "EUR", "interval": "month",
    }  # fmt: skip
    await _resent_under_a_new_key(h, t, "subscription", body, hours_ago=hours_ago, held=held)
    charges = [e for e in await _gateway(h, t).effects() if e.kind == "charge"]
    assert len(charges) == 1, charges


async def test_a_parked_cancel_re_driven_after_a_refresh_recorded_it_emits_no_second_cancel(
    harness: Harness,
) -> None:
    """payout.cancel k5 reaches the provider, its answers are lost: parked. Stripe's
    payout.canceled webhook (here its refresh) records the cancel: payout.canceled, the
    amount available again. `dlq replay` then re-drives k5 (let through): the provider
    answers the cancel from its key and paystream emits payout.canceled a second time
    (previous_status canceled), though AsyncAPI says it is emitted once per payout and a
    consumer crediting the balance on it counts the 3000 twice."""
    h = harness
    t = new_tenant_id()
    h.add_tenant(t, gateway_options={"lose_response_first": {f"ps:{t}:k5": 3}})
    paid = await h.send(
        "payment.create", t,
        {"amount": 9000, "currency": "EUR", "payment_method_token": "pm_card_visa"},
    )  # fmt: skip
    assert kind(paid) == "payment.succeeded", data(paid)
    await _gateway(h, t).advance_clock(2 * DAY)
    made = await h.send("payout.create", t, {"payout_id": "po1", "amount": 3000, "currency": "EUR"})
    assert kind(made) == "payout.created", data(made)
    emits = await h.processor.process(_command(t, "payout.cancel", {"payout_id": "po1"}, "k5"))
    assert [e.topic for e in emits] == [h.settings.retry_topic]
    refreshed = await h.send("payout.refresh", t, {"payout_id": "po1"})
    assert kind(refreshed) == "payout.canceled", data(refreshed)  # the one cancel's news
    redriven = await h.processor.process(_command(t, "payout.cancel", {"payout_id": "po1"}, "k5"))
    out = outcome_of(h.settings, redriven)
    assert out is not None and kind(out) == "command.rejected", out and data(out)
    assert data(out)["reason"] == "invalid_state", data(out)
    assert "already canceled" in data(out)["message"], data(out)

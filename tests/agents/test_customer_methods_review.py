"""Customers and payment methods (review h68z): card data passed off as a provider token
(digits grouped by `:` or `_`, a bare CVC) was sent to the provider and quoted back in
the outcome; an update could take a customer past Stripe's 50 metadata keys; a declined
attach under a chosen id made the id unusable, refused `idempotency_conflict` naming a
key the tenant never sent."""

from __future__ import annotations

import json
import random
import string

import pytest

from paystream.client import build_command
from paystream.gateways.simulator import SimulatorGateway
from paystream.tenancy.models import Tenant
from tests.agents.harness import Harness, data, kind

pytestmark = pytest.mark.asyncio


def _letters(prefix: str) -> str:
    """An id of letters only: no digit of it can meet the token's in a substring check
    (the simulator's state outlives a test, in Redis: each test a tenant of its own)."""
    return prefix + "".join(random.choices(string.ascii_lowercase, k=12))


# ---- 1. a card number or security code passed off as a provider token ----------------

# Each is card data written where only a provider's opaque token belongs. None is refused:
# each is sent to the provider as a payment method id, and its `not_found` answer quotes
# it back ("no such payment method: '4242:4242:4242:4242'"), in the outcome and in the
# rejection kept under the idempotency key.
DISGUISED = [
    pytest.param("4242:4242:4242:4242", id="pan-colons"),
    pytest.param("4242-4242.4242_4242", id="pan-mixed-separators"),
    pytest.param("tok_4242_4242_4242_4242", id="pan-underscores-after-prefix"),
    pytest.param("737", id="cvc-alone"),
    pytest.param("4242424242:424242", id="pan-split-once"),
]


@pytest.mark.parametrize("token", DISGUISED)
async def test_card_data_as_an_attach_token_is_refused_and_never_echoed(
    harness: Harness, token: str
) -> None:
    h = harness
    t = h.add_tenant(_letters("tenant-"))
    await h.send("customer.create", t, {"customer_id": "cus-a"}, command_id="cmd-create")
    gateway = h.pool.get(Tenant.model_validate(h.tenants[t]))
    assert isinstance(gateway, SimulatorGateway)
    asked: list[str] = []
    real = gateway.attach_payment_method

    async def spy(req, *, idempotency_key):  # type: ignore[no-untyped-def]
        asked.append(req.token)
        return await real(req, idempotency_key=idempotency_key)

    gateway.attach_payment_method = spy  # type: ignore[method-assign]
    out = await h.send(
        "payment_method.attach", t, {"customer_id": "cus-a", "token": token},
        command_id="cmd-attach",
    )  # fmt: skip
    body = json.dumps(data(out))
    kept = json.dumps(h.idempotency, default=str)  # the answer kept under the key
    assert token not in kept, "the token is kept in the stored rejection"
    assert asked == [], f"card data sent to the provider as a token: {asked}"
    assert token not in body, body
    assert data(out).get("reason") in ("card_data_forbidden", "validation_error"), body


@pytest.mark.parametrize("token", DISGUISED)
async def test_card_data_as_a_payment_token_is_never_sent_or_echoed(
    harness: Harness, token: str
) -> None:
    h = harness
    t = h.add_tenant(_letters("tenant-"))
    out = await h.send(
        "payment.create", t,
        {"amount": 100, "currency": "USD", "payment_method_token": token},
        command_id="cmd-pay",
    )  # fmt: skip
    body = json.dumps(data(out))
    assert token not in body, body
    assert token not in json.dumps(h.idempotency, default=str)
    assert data(out).get("reason") in ("card_data_forbidden", "validation_error"), body


# ---- 2. metadata: Stripe's 50 keys are the customer's, not the update's --------------


async def test_an_update_taking_a_customer_past_50_metadata_keys_is_refused(
    harness: Harness,
) -> None:
    """Stripe: "You can add 50 total key-value pairs". The handler (and the simulator)
    merge an update of 50 new keys into a customer holding one: recorded and published
    with 51 keys, where Stripe refuses the update (a validation_error the simulator
    never gives, so a tenant testing against it learns of it in production)."""
    h = harness
    t = h.add_tenant()
    await h.send("customer.create", t, {"customer_id": "c1", "metadata": {"plan": "gold"}})
    update = {"customer_id": "c1", "metadata": {f"k{i}": "v" for i in range(50)}}
    out = await h.send("customer.update", t, update)
    assert len(h.tables.customers[f"{t}:c1"]["metadata"]) <= 50
    assert kind(out) == "command.rejected", data(out)["object"]["metadata"].__len__()
    assert data(out)["reason"] == "validation_error"


async def test_an_update_removing_keys_may_add_as_many_back(harness: Harness) -> None:
    """(The guard for the fix: "" removes a key, so 50 after the merge is allowed.)"""
    h = harness
    t = h.add_tenant()
    await h.send("customer.create", t, {"customer_id": "c1", "metadata": {"plan": "gold"}})
    update = {"plan": ""} | {f"k{i}": "v" for i in range(49)}
    out = await h.send("customer.update", t, {"customer_id": "c1", "metadata": update})
    assert kind(out) == "customer.updated", data(out)
    assert len(data(out)["object"]["metadata"]) == 49


async def test_an_attach_declined_under_a_chosen_id_does_not_burn_the_id(
    harness: Harness,
) -> None:
    """The card is declined as it is saved (payment_method.attach_failed): no payment
    method is recorded, yet the provider keeps the decline under the key derived from
    the chosen id. The customer's next card, attached under the same id, is refused
    `idempotency_conflict`, quoting a provider key the tenant never sent, for as long
    as the provider keeps keys (Stripe: 24 h)."""
    h = harness
    t = h.add_tenant()
    await h.send("customer.create", t, {"customer_id": "c1"})
    declined = "pm_card_visa_chargeDeclined"
    first = {"customer_id": "c1", "token": declined, "payment_method_id": "pm1"}
    assert kind(await h.send("payment_method.attach", t, first)) == "payment_method.attach_failed"
    again = {"customer_id": "c1", "token": "pm_card_mastercard", "payment_method_id": "pm1"}
    out = await h.send("payment_method.attach", t, again)
    # Either the id is free (nothing was made under it) and the new card is saved, or it
    # is taken and the tenant is told so; never a conflict on a key it never chose.
    saved = kind(out) == "payment_method.attached"
    assert saved or data(out)["reason"] == "invalid_state", data(out)


# The first mapping of an attach's taken id called it "refused or declined", though an
# attach saved with its answer lost and parked takes it too (review h68aa).
async def test_an_attach_saved_but_parked_is_not_called_refused_or_declined(
    harness: Harness,
) -> None:
    h = harness
    # Every answer under the chosen id's provider key is lost: applied, then a timeout.
    t = h.add_tenant()
    key = f"pse:{t}:payment_method:pm1"
    h.tenants[t]["gateway_options"] = {"lose_response_first": {key: 50}}
    await h.send("customer.create", t, {"customer_id": "c1"})
    first = build_command(
        "payment_method.attach", t,
        {"customer_id": "c1", "token": "pm_card_visa", "payment_method_id": "pm1"},
        command_id="attach-1",
    )  # fmt: skip
    emits, out = await h.send_event(first)
    assert out is None, data(out)  # parked: the provider saved the card, its answer lost
    assert [e.topic for e in emits] == [h.settings.retry_topic]
    # The customer's browser made a new token (Stripe.js does, each time) and the tenant,
    # with no answer yet, attaches it under the same id.
    out = await h.send(
        "payment_method.attach", t,
        {"customer_id": "c1", "token": "pm_card_mastercard", "payment_method_id": "pm1"},
        command_id="attach-2",
    )  # fmt: skip
    assert kind(out) == "command.rejected", data(out)
    # The card under pm1 was saved at the provider: it was not refused or declined.
    assert "refused or declined" not in data(out)["message"], data(out)

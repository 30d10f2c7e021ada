"""A payment.create under a chosen payment_id the provider keeps an earlier answer under (one it
refused, or one that charged with its answer lost and parked) was refused
`idempotency_conflict`, quoting an internal key the tenant never sent: read as "nothing
happened", the shop resent under a new id and charged the customer again (review h68ai)."""

from __future__ import annotations

import pytest

from paystream.client import build_command
from tests.agents.harness import Harness, data, kind

pytestmark = pytest.mark.asyncio

_PAY = {"amount": 1000, "currency": "USD"}


async def test_a_chosen_payment_id_refused_at_the_provider_is_not_a_conflict_on_an_unsent_key(
    harness: Harness,
) -> None:
    h = harness
    t = h.add_tenant()
    await h.send("customer.create", t, {"customer_id": "c1"})
    pm = await h.send(
        "payment_method.attach", t,
        {"customer_id": "c1", "payment_method_id": "pm1", "token": "pm_card_visa"},
    )  # fmt: skip
    saved = data(pm)["object"]["provider_payment_method_id"]
    # The saved card's provider id sent as a token without its customer: refused by the
    # provider ("... or none was given"), and the refusal is kept under the id's key.
    first = await h.send(
        "payment.create", t, {**_PAY, "payment_id": "order-1", "payment_method_token": saved}
    )
    assert data(first)["reason"] == "validation_error", data(first)
    # The tenant does what the message says: names the customer. No payment was made.
    fixed = await h.send(
        "payment.create", t,
        {**_PAY, "payment_id": "order-1", "payment_method_token": saved, "customer_id": "c1"},
    )  # fmt: skip
    # Either the id is free and the payment is made, or the tenant is told the id is
    # taken at the provider; never a conflict on a key it never chose.
    made = kind(fixed) == "payment.succeeded"
    assert made or data(fixed)["reason"] == "invalid_state", data(fixed)
    assert f"pse:{t}:" not in str(data(fixed).get("message")), data(fixed)


async def test_a_chosen_payment_id_parked_after_charging_is_said_to_be_maybe_charged(
    harness: Harness,
) -> None:
    h = harness
    t = h.add_tenant()
    key = f"pse:{t}:payment:order-2"
    # Every answer under the chosen id's provider key is lost: charged, then a timeout.
    h.tenants[t]["gateway_options"] = {"lose_response_first": {key: 50}}
    first = build_command(
        "payment.create", t,
        {**_PAY, "payment_id": "order-2", "payment_method_token": "pm_card_visa"},
        command_id="create-1",
    )  # fmt: skip
    emits, out = await h.send_event(first)
    assert out is None, data(out)  # parked: the provider charged, its answer lost
    assert [e.topic for e in emits] == [h.settings.retry_topic]
    # No answer yet; the shop's checkout retries the order with the amount corrected.
    again = await h.send(
        "payment.create", t,
        {"amount": 1200, "currency": "USD", "payment_id": "order-2",
         "payment_method_token": "pm_card_visa"},
        command_id="create-2",
    )  # fmt: skip
    assert kind(again) == "command.rejected", data(again)
    # The customer WAS charged under this id: the answer must say the id is taken (an
    # earlier create, maybe still parked, may have charged), not a bare key conflict
    # that reads as "nothing happened here".
    assert data(again)["reason"] == "invalid_state", data(again)
    assert "parked" in data(again)["message"], data(again)

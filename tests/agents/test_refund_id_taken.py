"""refund.create never got the fix made for payment_id and payment_method_id: under a chosen
refund_id the provider keeps an earlier answer under (a refund refused while a dispute was
open, or one made with its answer lost and parked), it was answered `idempotency_conflict`
naming a key the tenant never sent; read as "nothing happened", the refund sent again under
a new id refunded twice (review h68al)."""

from __future__ import annotations

import pytest

from paystream.client import build_command
from paystream.tenancy.models import Tenant
from tests.agents.harness import Harness, data, kind

pytestmark = pytest.mark.asyncio


async def _paid(h: Harness, t: str, pid: str, amount: int = 1000) -> None:
    out = await h.send(
        "payment.create", t,
        {"amount": amount, "currency": "USD", "payment_id": pid,
         "payment_method_token": "pm_card_visa"},
    )  # fmt: skip
    assert kind(out) == "payment.succeeded", data(out)


async def test_a_chosen_refund_id_parked_after_refunding_is_said_to_be_maybe_refunded(
    harness: Harness,
) -> None:
    h = harness
    t = h.add_tenant()
    key = f"pse:{t}:refund:rf-1"
    # Every answer under the chosen id's provider key is lost: refunded, then a timeout.
    h.tenants[t]["gateway_options"] = {"lose_response_first": {key: 50}}
    await _paid(h, t, "pay-1")
    first = build_command(
        "refund.create", t, {"payment_id": "pay-1", "refund_id": "rf-1", "amount": 300},
        command_id="refund-1",
    )  # fmt: skip
    emits, out = await h.send_event(first)
    assert out is None, data(out)  # parked: the provider refunded, its answer lost
    assert [e.topic for e in emits] == [h.settings.retry_topic]
    # No answer yet; the support agent retries the refund with the amount corrected.
    again = await h.send(
        "refund.create", t, {"payment_id": "pay-1", "refund_id": "rf-1", "amount": 400},
        command_id="refund-2",
    )  # fmt: skip
    assert kind(again) == "command.rejected", data(again)
    # The customer WAS refunded 300 under this id: the answer must say the id is taken
    # (an earlier refund, maybe still parked, may have refunded), not a bare conflict on
    # a key the tenant never sent, which reads as "nothing happened": resent under a new
    # refund id, the customer is refunded 300 + 400 for one 400 refund.
    assert f"pse:{t}:" not in str(data(again).get("message")), data(again)
    assert data(again)["reason"] == "invalid_state", data(again)
    assert "parked" in data(again)["message"], data(again)


async def test_a_chosen_refund_id_refused_at_the_provider_is_not_a_conflict_on_an_unsent_key(
    harness: Harness,
) -> None:
    h = harness
    t = h.add_tenant()
    paid = await h.send(
        "payment.create", t,
        {"amount": 1000, "currency": "USD", "payment_id": "pay-2",
         "payment_method_token": "pm_card_createDispute"},
    )  # fmt: skip
    assert kind(paid) == "payment.succeeded", data(paid)
    [dispute] = data(paid)["related"]
    # Open at the provider, which refuses the refund; its refusal is kept under the id's key.
    first = await h.send(
        "refund.create", t, {"payment_id": "pay-2", "refund_id": "rf-2", "amount": 1000}
    )
    assert data(first)["reason"] == "invalid_state", data(first)
    # The merchant wins the dispute, then refunds part of the order under the same id.
    sim = h.pool.get(Tenant.model_validate(h.tenants[t]))
    await sim.resolve_dispute(dispute["object"]["provider_dispute_id"], won=True)  # type: ignore[attr-defined]
    read = await h.send("payment.refresh", t, {"payment_id": "pay-2"})
    assert kind(read) != "command.rejected", data(read)
    again = await h.send(
        "refund.create", t, {"payment_id": "pay-2", "refund_id": "rf-2", "amount": 400}
    )
    # No refund was ever made under rf-2: either it is made now, or the tenant is told
    # the id is taken at the provider; never a conflict on a key it never chose.
    made = kind(again) == "refund.succeeded"
    assert made or data(again)["reason"] == "invalid_state", data(again)
    assert f"pse:{t}:" not in str(data(again).get("message")), data(again)

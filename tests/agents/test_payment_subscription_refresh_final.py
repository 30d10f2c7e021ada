"""payment.refresh of a payment canceled here (or failed and not open at its provider),
and subscription.refresh of a subscription canceled here (final): answered from the
record without a provider read, `payment.canceled` with previous_status canceled (as an
unchanged read's) and `subscription.updated` with previous_status canceled; nothing
counted again (analytics: no attempt, no decline, no churn). What a Stripe webhook's
sealed refresh meets when the echo of the tenant's own payment.cancel
(`payment_intent.canceled`) or subscription.cancel (`customer.subscription.deleted`)
reached the endpoint before that command's outcome was recorded: the endpoint read the
entity as before and queued the refresh behind the command. It was refused
`invalid_state`: a `command.rejected` under the webhook's command id, which the tenant
never sent (as tests/agents/test_payout_transfer_refresh_final.py for payouts)."""

from __future__ import annotations

import pytest

from paystream.insights.observe import observe
from tests.agents.final_reads import assert_answered_from_the_record, provider_reads
from tests.agents.harness import Harness, data, kind, simulator_of
from tests.agents.test_subscriptions import _charges, _customer, _subscribe

pytestmark = pytest.mark.asyncio


async def test_the_echo_of_a_payment_cancel_is_read_from_the_record_not_refused(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    t = h.add_tenant()
    made = await h.send(
        "payment.create",
        t,
        {"payment_id": "p1", "amount": 900, "currency": "USD",
         "payment_method_token": "pm_card_visa", "capture": "manual"},
    )  # fmt: skip
    assert kind(made) == "payment.authorized", data(made)
    canceled = await h.send("payment.cancel", t, {"payment_id": "p1"})
    assert kind(canceled) == "payment.canceled", data(canceled)
    effects = await simulator_of(h, t).effects()
    reads = provider_reads(h, t, monkeypatch, "retrieve_payment")
    # The webhook's refresh (payment_intent.canceled), queued while it read authorized.
    for _ in range(2):
        echo = await h.send("payment.refresh", t, {"payment_id": "p1"})
        assert_answered_from_the_record(echo, "payment.canceled", "canceled")
        assert "error" not in data(echo) and "related" not in data(echo)
        seen = observe(echo)
        assert seen is None or (seen.attempt, seen.authorized, seen.captured) == (False, 0, 0)
    assert reads == []
    assert await simulator_of(h, t).effects() == effects
    again = await h.send("payment.capture", t, {"payment_id": "p1"})
    assert data(again)["reason"] == "invalid_state", data(again)


async def test_the_echo_of_a_subscription_cancel_is_read_from_the_record_not_refused(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    t = h.add_tenant()
    await _customer(h, t)
    made = await _subscribe(h, t)
    assert kind(made) == "subscription.created", data(made)
    gone = await h.send("subscription.cancel", t, {"subscription_id": "s1"})
    assert kind(gone) == "subscription.canceled", data(gone)
    assert observe(gone) is not None and observe(gone).subscription_canceled  # type: ignore[union-attr]
    held = dict(h.tables.subscriptions[f"{t}:s1"])
    reads = provider_reads(h, t, monkeypatch, "retrieve_subscription")
    # The webhook's refresh (customer.subscription.deleted), queued while it read active.
    echo = await h.send("subscription.refresh", t, {"subscription_id": "s1"})
    assert_answered_from_the_record(echo, "subscription.updated", "canceled")
    assert "related" not in data(echo) and "error" not in data(echo)
    seen = observe(echo)
    assert seen is None or not (seen.subscription_canceled or seen.invoices_declined), seen
    assert reads == []
    fields = ("status", "canceled_at", "current_period_end", "amount")
    assert [h.tables.subscriptions[f"{t}:s1"][f] for f in fields] == [held[f] for f in fields]
    assert len(await _charges(h, t)) == 1

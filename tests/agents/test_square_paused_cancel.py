"""A Square subscription paused in Square's dashboard, read back `paused`, cancelled
through paystream (review h82re L2): a cancel now was answered `unsupported` ("send
at_period_end true"), one at period end `invalid_state`. Square's CancelSubscription
cancels an active subscription only: both are refused alike, `unsupported`, with one
message saying what to do, before any call (through the Square gateway, against the
tests' FAKE Square)."""

from __future__ import annotations

import pytest

from tests.agents.harness import Harness, data, kind
from tests.agents.test_square_decline_redelivered import _square_tenant, h
from tests.gateways.harness import pause_square_subscription

__all__ = ["h"]

pytestmark = pytest.mark.asyncio


async def test_a_paused_square_subscription_is_refused_alike_whether_now_or_at_period_end(
    h: Harness, square_url: str
) -> None:
    t = _square_tenant(h)
    made = await h.send("customer.create", t, {"customer_id": "c1", "name": "Ada"})
    assert kind(made) == "customer.created", data(made)
    card = {"payment_method_id": "m1", "customer_id": "c1", "token": "cnon:card-nonce-ok"}
    attached = await h.send("payment_method.attach", t, card)
    assert kind(attached) == "payment_method.attached", data(attached)
    body = {"subscription_id": "s1", "customer_id": "c1", "payment_method_id": "m1",
            "amount": 700, "currency": "USD", "interval": "week"}  # fmt: skip
    created = await h.send("subscription.create", t, body)
    assert kind(created) == "subscription.created", data(created)
    sid = h.tables.subscriptions[f"{t}:s1"]["provider_subscription_id"]
    await pause_square_subscription(square_url, sid)
    read = await h.send("subscription.refresh", t, {"subscription_id": "s1"})
    assert data(read)["object"]["status"] == "paused", data(read)
    answers = []
    for at_period_end in (False, True):
        cancel = {"subscription_id": "s1", "at_period_end": at_period_end}
        out = await h.send("subscription.cancel", t, cancel)
        assert kind(out) == "command.rejected", data(out)
        answers.append((data(out)["reason"], data(out)["message"]))
    assert answers[0] == answers[1], answers
    reason, message = answers[0]
    assert reason == "unsupported" and "Resume it in Square's dashboard" in message, message
    assert h.tables.subscriptions[f"{t}:s1"]["status"] == "paused"

"""A Paddle free trial's price: held to the command's amount at its checkout (whose total
is 0 at any price), and kept a trial's when its amount is changed during the trial.
Against the FAKE Paddle (tests/fixtures/paddle_fake.py)."""

from __future__ import annotations

from typing import Any

import pytest

from paystream.gateways.base import InvoiceStatus, SubscriptionStatus, UpdateSubscription
from paystream.gateways.errors import ErrorCode, GatewayError
from tests.gateways.harness import paddle_checkout
from tests.gateways.paddle_gateway.test_subscriptions import (
    _customer,
    _paddle_sub_id,
    _plan,
    _read,
    _renew,
    _subscription_at_paddle,
)
from tests.gateways.paddle_gateway.wire import LosingClient, gateway, key, losing, usd


async def test_an_amount_changed_during_a_trial_keeps_the_trial(paddle_url: str) -> None:
    """Paddle's trial is its prices' trial_period: the new price keeps the trial's, and
    the subscription's item stays in its trial (nothing billed), billed at its end."""
    gw = gateway(paddle_url)
    made = await gw.create_subscription(
        _plan(customer=await _customer(gw), trial_days=7), idempotency_key=key()
    )
    sid = made.provider_subscription_id
    await paddle_checkout(paddle_url, sid)
    trial_end = (await _read(gw, sid)).trial_end
    client = losing(gw, "POST", "nothing", lose=0)
    changed = await gw.update_subscription(
        UpdateSubscription(provider_subscription_id=sid, amount=usd(900)), idempotency_key=key()
    )
    assert changed.status is SubscriptionStatus.TRIALING and changed.amount == usd(900)
    assert changed.trial_end == trial_end
    (sent,) = [b for b in client.bodies if "items" in b]
    assert sent["items"][0]["price"]["trial_period"] == {"interval": "day", "frequency": 7}
    assert sent["proration_billing_mode"] == "do_not_bill"
    paddle_sub = await _paddle_sub_id(paddle_url, sid)
    item = (await _subscription_at_paddle(paddle_url, paddle_sub))["items"][0]
    assert item["status"] == "trialing" and item["previously_billed_at"] is None
    assert item["trial_dates"] is not None and item["next_billed_at"] is not None
    await _renew(paddle_url, paddle_sub)  # (the trial's end: the new amount billed)
    active = await _read(gw, sid)
    assert active.status is SubscriptionStatus.ACTIVE
    assert [(i.status, i.amount) for i in active.invoices] == [
        (InvoiceStatus.PAID, usd(900)),
        (InvoiceStatus.PAID, usd(0)),
    ]
    await gw.aclose()


async def test_an_active_subscription_changed_sends_no_trial_period(paddle_url: str) -> None:
    gw = gateway(paddle_url)
    made = await gw.create_subscription(
        _plan(customer=await _customer(gw), trial_days=3), idempotency_key=key()
    )
    sid = made.provider_subscription_id
    await paddle_checkout(paddle_url, sid)
    await _renew(paddle_url, await _paddle_sub_id(paddle_url, sid))  # (the trial over)
    client = losing(gw, "POST", "nothing", lose=0)
    await gw.update_subscription(
        UpdateSubscription(provider_subscription_id=sid, amount=usd(900)), idempotency_key=key()
    )
    (sent,) = [b for b in client.bodies if "items" in b]
    assert "trial_period" not in sent["items"][0]["price"]
    await gw.aclose()


class _Repriced(LosingClient):
    """Paddle's answer to the checkout's POST with its item at another unit price (a
    fault, or the object changed at Paddle): a trial's total stays 0."""

    async def call(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        answer = await super().call(method, path, **kw)
        if (method, path) == ("POST", "transactions"):
            answer["data"]["items"][0]["price"]["unit_price"]["amount"] = "100"
        return answer


async def test_a_trial_checkout_at_another_price_is_not_answered_as_made(paddle_url: str) -> None:
    gw = gateway(paddle_url)
    customer = await _customer(gw)
    gw._client = _Repriced(gw._client, "POST", "nothing", 0)
    with pytest.raises(GatewayError) as refused:
        await gw.create_subscription(_plan(customer=customer, trial_days=7), idempotency_key=key())
    assert refused.value.code is ErrorCode.INVALID_STATE
    assert "1.00 USD" in refused.value.message and "12.00 USD" in refused.value.message
    await gw.aclose()


async def _trialing(paddle_url: str, gw: Any, days: int = 7) -> tuple[str, str]:
    made = await gw.create_subscription(
        _plan(customer=await _customer(gw), trial_days=days), idempotency_key=key()
    )
    sid = made.provider_subscription_id
    await paddle_checkout(paddle_url, sid)
    assert (await _read(gw, sid)).status is SubscriptionStatus.TRIALING
    return sid, await _paddle_sub_id(paddle_url, sid)


async def test_a_trial_ended_now_is_activated_and_billed_once(paddle_url: str) -> None:
    """trial_end "now": Paddle's activate a trialing subscription, its first period
    billed at once. Its answer lost, asked again: the subscription, no longer trialing,
    is read back, never activated (charged) a second time (Paddle takes no key)."""
    from tests.gateways.paddle_gateway.wire import effects

    gw = gateway(paddle_url)
    sid, paddle_sub = await _trialing(paddle_url, gw)
    path = f"subscriptions/{paddle_sub}/activate"
    client = losing(gw, "POST", path, lose=1)
    req = UpdateSubscription(provider_subscription_id=sid, trial_end="now")
    with pytest.raises(GatewayError):
        await gw.update_subscription(req, idempotency_key=key())
    ended = await gw.update_subscription(req, idempotency_key=key())
    assert ended.status is SubscriptionStatus.ACTIVE
    assert next((i.status, i.amount) for i in ended.invoices) == (InvoiceStatus.PAID, usd(1200))
    assert ended.trial_end is None
    assert client.sent.count(("POST", path)) == 1
    activated = [e for e in await effects(paddle_url) if e["kind"] == "subscription_activate"]
    assert [e["id"] for e in activated] == [paddle_sub]
    await gw.aclose()


async def test_a_trials_end_moved_is_its_next_billed_at(paddle_url: str) -> None:
    import time

    gw = gateway(paddle_url)
    sid, paddle_sub = await _trialing(paddle_url, gw)
    client = losing(gw, "POST", "nothing", lose=0)
    for days in (30, 2):  # later, then earlier
        at = int(time.time()) + days * 24 * 3600
        moved = await gw.update_subscription(
            UpdateSubscription(provider_subscription_id=sid, trial_end=at), idempotency_key=key()
        )
        assert moved.status is SubscriptionStatus.TRIALING
        assert moved.trial_end is not None and int(moved.trial_end.timestamp()) == at
        assert int(moved.current_period_end.timestamp()) == at
    sent = [b for b in client.bodies if "next_billed_at" in b]
    assert len(sent) == 2 and all(b["proration_billing_mode"] == "do_not_bill" for b in sent)
    at_paddle = await _subscription_at_paddle(paddle_url, paddle_sub)
    assert (
        at_paddle["status"] == "trialing"
        and at_paddle["next_billed_at"] == sent[-1]["next_billed_at"]
    )
    # Not trialing any more: refused before anything is sent.
    await _renew(paddle_url, paddle_sub)
    with pytest.raises(GatewayError) as refused:
        await gw.update_subscription(
            UpdateSubscription(provider_subscription_id=sid, trial_end=int(time.time()) + 3600),
            idempotency_key=key(),
        )
    assert refused.value.code is ErrorCode.INVALID_STATE
    await gw.aclose()

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
    # (the fake serves the session: other tests' subscriptions are activated too)
    mine = [e["kind"] for e in await effects(paddle_url) if e["id"] == paddle_sub]
    assert mine.count("subscription_activate") == 1
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


async def _activation(url: str, paddle_sub: str, **body: str) -> None:
    """What the FAKE Paddle's activations of ``paddle_sub`` meet from now on."""
    import aiohttp

    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/_fake/subscriptions/{paddle_sub}/activation", json=body) as r,
    ):
        r.raise_for_status()


def test_paddles_activation_refusals_are_state_and_its_decline_a_card_decline() -> None:
    """Paddle's error reference: the activation refusals are the subscription's state
    (`invalid_state`, worded as an activation), not the command's fault
    (`invalid_request`); a charge asked of it declined is a card decline."""
    from paystream.gateways.paddle.errors import map_paddle_answer

    def answer(code: str) -> Any:
        return {"error": {"type": "request_error", "code": code, "detail": "as Paddle says"},
                "meta": {"request_id": "r1"}}  # fmt: skip

    for code in (
        "subscription_cannot_activate",
        "subscription_missing_payment_method_cannot_activate",
        "subscription_consent_requirement_cannot_activate",
        "subscription_manual_collection_mode_activation_not_allowed",
    ):
        mapped = map_paddle_answer(400, answer(code))
        assert mapped.code is ErrorCode.INVALID_STATE, code
        assert "cannot activate the subscription (end its trial now)" in mapped.message
        assert "as Paddle says" in mapped.message and not mapped.retryable
    declined = map_paddle_answer(400, answer("subscription_payment_declined"))
    assert declined.code is ErrorCode.CARD_DECLINED and not declined.retryable


@pytest.mark.parametrize(
    ("outcome", "code"),
    [
        ("subscription_missing_payment_method_cannot_activate", ErrorCode.INVALID_STATE),
        ("subscription_consent_requirement_cannot_activate", ErrorCode.INVALID_STATE),
        ("declined", ErrorCode.CARD_DECLINED),
        ("not_enough_balance", ErrorCode.CARD_DECLINED),
    ],
)
async def test_an_activation_refused_leaves_it_trialing_read_back(
    paddle_url: str, outcome: str, code: ErrorCode
) -> None:
    """Refused (a refusal of Paddle's reference, or its charge declined: still trialing,
    nothing billed), the subscription is read back onto the error (``read_back``) as
    Paddle holds it now, for the record."""
    from tests.gateways.paddle_gateway.wire import effects

    gw = gateway(paddle_url)
    sid, paddle_sub = await _trialing(paddle_url, gw)
    await _activation(paddle_url, paddle_sub, outcome=outcome)
    with pytest.raises(GatewayError) as refused:
        await gw.update_subscription(
            UpdateSubscription(provider_subscription_id=sid, trial_end="now"),
            idempotency_key=key(),
        )
    assert refused.value.code is code and not refused.value.retryable
    read = refused.value.read_back
    assert read is not None and read.status is SubscriptionStatus.TRIALING  # type: ignore[attr-defined]
    assert [i.status for i in read.invoices] == [InvoiceStatus.PAID]  # type: ignore[attr-defined]
    at_paddle = await _subscription_at_paddle(paddle_url, paddle_sub)
    assert at_paddle["status"] == "trialing"
    mine = [e["kind"] for e in await effects(paddle_url) if e["id"] == paddle_sub]
    assert "subscription_activate" not in mine
    await gw.aclose()


async def test_a_new_amount_beside_an_activation_refused_is_read_back(paddle_url: str) -> None:
    """amount and trial_end now are two calls at Paddle (the PATCH, then /activate): the
    activation refused after the PATCH, the new amount is in effect at Paddle, and the
    error carries the subscription read back at it (the record takes it)."""
    gw = gateway(paddle_url)
    sid, paddle_sub = await _trialing(paddle_url, gw)
    await _activation(paddle_url, paddle_sub, outcome="declined")
    with pytest.raises(GatewayError) as refused:
        await gw.update_subscription(
            UpdateSubscription(provider_subscription_id=sid, amount=usd(900), trial_end="now"),
            idempotency_key=key(),
        )
    assert refused.value.code is ErrorCode.CARD_DECLINED
    read = refused.value.read_back
    assert read is not None and read.amount == usd(900)  # type: ignore[attr-defined]
    assert read.status is SubscriptionStatus.TRIALING  # type: ignore[attr-defined]
    item = (await _subscription_at_paddle(paddle_url, paddle_sub))["items"][0]
    assert item["price"]["unit_price"]["amount"] == "900"
    await gw.aclose()


async def test_a_manually_collected_one_is_refused_before_anything_is_sent(
    paddle_url: str,
) -> None:
    """Paddle activates only an automatically-collected subscription: a manual one is
    refused `invalid_state` from the read, before the PATCH of an amount beside it (so
    it is never applied alone); the fake refuses its activation as Paddle does."""
    gw = gateway(paddle_url)
    sid, paddle_sub = await _trialing(paddle_url, gw)
    await _activation(paddle_url, paddle_sub, collection_mode="manual")
    client = losing(gw, "POST", "nothing", lose=0)
    with pytest.raises(GatewayError) as refused:
        await gw.update_subscription(
            UpdateSubscription(provider_subscription_id=sid, amount=usd(900), trial_end="now"),
            idempotency_key=key(),
        )
    assert refused.value.code is ErrorCode.INVALID_STATE and not refused.value.reached_provider
    assert "collected manually" in refused.value.message
    assert [m for m, _ in client.sent if m != "GET"] == []
    item = (await _subscription_at_paddle(paddle_url, paddle_sub))["items"][0]
    assert item["price"]["unit_price"]["amount"] == "1200"
    # (the fake itself refuses it as Paddle's reference has it)
    import aiohttp

    from tests.fixtures.paddle_fake import FAKE_PADDLE_API_KEY

    auth = {"Authorization": f"Bearer {FAKE_PADDLE_API_KEY}"}
    async with (
        aiohttp.ClientSession(headers=auth) as session,
        session.post(f"{paddle_url}/subscriptions/{paddle_sub}/activate", json={}) as r,
    ):
        said = await r.json()
    assert r.status == 400
    assert said["error"]["code"] == "subscription_manual_collection_mode_activation_not_allowed"
    await gw.aclose()

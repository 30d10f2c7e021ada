"""Review h78f of Square subscriptions (fa0f6b3..d1813af): each test fails on d1813af and
shows one finding of review h78f (F1-F3: REPORT.md F-numbers)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from paystream.gateways.base import (
    CancelSubscription,
    InvoiceStatus,
    SubscriptionStatus,
    UpdateSubscription,
)
from paystream.gateways.square import subscriptions
from paystream.gateways.square.gateway import SquareGateway
from tests.gateways.square_gateway.test_square_subscriptions import (
    fake,
    subscribe,
)
from tests.gateways.square_gateway.wire import Wire, gateway_at, key, usd, wired

__all__ = ["wired"]


def _sub(**fields: Any) -> dict[str, Any]:
    """A Square Subscription as RetrieveSubscription answers it (the reference's fields)."""
    return {
        "id": "sub-1",
        "location_id": "L1",
        "plan_variation_id": "V1",
        "customer_id": "C1",
        "start_date": "2026-05-01",
        "status": "ACTIVE",
        "price_override_money": {"amount": 2000, "currency": "USD"},
        "card_id": "ccof:1",
        "version": 3,
        **fields,
    }


def _inv(status: str) -> dict[str, Any]:
    return {
        "id": "inv:0-1",
        "status": status,
        "sale_or_service_date": "2026-05-01",
        "payment_requests": [{"computed_amount_money": {"amount": 2000, "currency": "USD"}}],
    }


# ---- F1: charged_through_date is the period's LAST DAY at Square --------------------


async def test_f1_the_fakes_charged_through_date_is_the_billed_periods_last_day(
    square_url: str,
) -> None:
    """Square's reference (Subscription.charged_through_date): "this date will be the
    last day of the billing period ... invoice on May 1 ... set to May 31"; its
    CancelSubscription example shows canceled_date == charged_through_date, a month's
    last day. The fake sets the NEXT period's first day."""
    gw = gateway_at(square_url)
    sub = await subscribe(gw)  # weekly
    held = (await fake(square_url, "GET", f"/v2/subscriptions/{sub.provider_subscription_id}"))[
        "subscription"
    ]
    start = date.fromisoformat(held["start_date"])
    assert held["charged_through_date"] == (start + timedelta(days=6)).isoformat()
    await gw.aclose()


def test_f1_a_period_read_from_squares_charged_through_date_ends_the_day_after() -> None:
    """May billed on May 1: Square says charged_through_date 2026-05-31; the period
    paystream answers must end 2026-06-01 00:00 UTC (as the invoice's period does), not
    a day early."""
    res = subscriptions.subscription(_sub(charged_through_date="2026-05-31"), "MONTHLY", usd(100))
    assert res.current_period_start == datetime(2026, 5, 1, tzinfo=UTC)
    assert res.current_period_end == datetime(2026, 6, 1, tzinfo=UTC)


def test_f1_a_cancel_at_period_end_is_canceled_at_the_periods_end() -> None:
    """Square's canceled_date is the period's last day (CancelSubscription's example:
    canceled_date 2024-03-31 == charged_through_date); "after this date" it is CANCELED:
    canceled_at is the period's end, 2026-06-01, not 2026-05-31 00:00."""
    res = subscriptions.subscription(
        _sub(status="CANCELED", charged_through_date="2026-05-31", canceled_date="2026-05-31"),
        "MONTHLY",
        usd(100),
    )
    assert res.canceled_at == res.current_period_end == datetime(2026, 6, 1, tzinfo=UTC)


# ---- F2: invoice statuses that are no decline read as card_declined / past_due ------


@pytest.mark.parametrize("status", ["PAYMENT_PENDING", "SCHEDULED"])
def test_f2_an_invoice_not_declined_carries_no_decline(status: str) -> None:
    """PAYMENT_PENDING: "a payment on the invoice was initiated but has not yet been
    processed"; SCHEDULED: not yet processed. Neither is a declined card."""
    got = subscriptions.invoice(_inv(status), date(2026, 5, 1), "MONTHLY", None)
    assert got is not None
    assert got.failure_code is None and got.failure_message is None


def test_f2_a_payment_in_flight_is_not_past_due() -> None:
    got = subscriptions.invoice(_inv("PAYMENT_PENDING"), date(2026, 5, 1), "MONTHLY", None)
    assert got is not None
    res = subscriptions.subscription(_sub(), "MONTHLY", usd(100), (got,))
    assert res.status is not SubscriptionStatus.PAST_DUE


def test_f2_a_failed_invoice_is_void() -> None:
    """FAILED: "Square canceled the invoice due to suspicious activity": nothing is
    payable on it; read OPEN, the subscription stays past_due on an invoice no one can
    pay, with a made-up card_declined."""
    got = subscriptions.invoice(_inv("FAILED"), date(2026, 5, 1), "MONTHLY", None)
    assert got is not None and got.status is InvoiceStatus.VOID


# ---- F3: a keyless call refused because another worker did it first ----------------


async def _stale_read(wire: Wire, square_url: str, sid: str) -> None:
    """The next RetrieveSubscription answers the subscription as it was before."""
    held = await fake(square_url, "GET", f"/v2/subscriptions/{sid}?include=actions")
    wire.answer[f"/v2/subscriptions/{sid}"] = (200, held)


async def test_f3_a_cancel_raced_by_another_workers_is_answered_canceled(
    wired: tuple[SquareGateway, Wire], square_url: str
) -> None:
    """Two workers (or a retry racing the original): both read "not canceled", the
    other's CancelSubscription lands first, ours is refused (a second cancel, 400 at the
    fake). The subscription IS to be canceled at period end: the answer must say so,
    not fail the command."""
    gw, wire = wired
    sub = await subscribe(gw)
    sid = sub.provider_subscription_id
    await _stale_read(wire, square_url, sid)
    await fake(square_url, "POST", f"/v2/subscriptions/{sid}/cancel", {})  # the other's
    req = CancelSubscription(provider_subscription_id=sid, at_period_end=True)
    got = await gw.cancel_subscription(req, idempotency_key=key())
    assert got.cancel_at_period_end and got.status is SubscriptionStatus.ACTIVE


async def test_f3_a_resume_raced_by_another_workers_is_answered_resumed(
    wired: tuple[SquareGateway, Wire], square_url: str
) -> None:
    """Both read the CANCEL action; the other deletes it first; ours gets 404 for the
    action, surfaced as NOT_FOUND (a tenant told its live subscription is not found)."""
    gw, wire = wired
    sub = await subscribe(gw)
    sid = sub.provider_subscription_id
    ends = UpdateSubscription(provider_subscription_id=sid, cancel_at_period_end=True)
    await gw.update_subscription(ends, idempotency_key=key())
    await _stale_read(wire, square_url, sid)
    held = await fake(square_url, "GET", f"/v2/subscriptions/{sid}?include=actions")
    (action,) = held["subscription"]["actions"]
    await fake(square_url, "DELETE", f"/v2/subscriptions/{sid}/actions/{action['id']}")
    resume = UpdateSubscription(provider_subscription_id=sid, cancel_at_period_end=False)
    got = await gw.update_subscription(resume, idempotency_key=key())
    assert not got.cancel_at_period_end and got.status is SubscriptionStatus.ACTIVE

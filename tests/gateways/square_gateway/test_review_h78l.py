"""Review h78l: Square subscriptions after e1653fa / 552c65c: a trial's declined first
charge is past_due, and stays so (its invoices kept) once canceled at its period's end."""

from __future__ import annotations

import pytest

from paystream.gateways.base import CancelSubscription, SubscriptionStatus
from paystream.tables.state_machines import InvalidState, check_subscription_move
from tests.gateways.harness import advance_square_clock, square_today
from tests.gateways.square_gateway.test_square_subscriptions import (
    DAY,
    declining,
    effects_of,
    plan,
    read,
)
from tests.gateways.square_gateway.wire import gateway_at, key


async def test_h78l_a_past_due_cancel_at_period_end_is_not_answered_incomplete(
    square_url: str,
) -> None:
    """Review h78l M2: a trial whose first charge is declined reads past_due (only the
    create schedules an incomplete's end). Canceled at its period's end it stays
    past_due: never paid, its end scheduled and its invoice declined, it read
    `incomplete` before, a move back (past_due -> incomplete) the state machine refuses,
    so the cancel's answer and every refresh after it were refused until Square ended
    it."""
    gw = gateway_at(square_url)
    gw.today = lambda: square_today(square_url)
    customer, card = await declining(gw, square_url)
    sub = await gw.create_subscription(plan(customer, card, trial_days=1), idempotency_key=key())
    assert sub.status is SubscriptionStatus.TRIALING
    await advance_square_clock(square_url, DAY + 60)
    due = await read(gw, sub)
    assert due.status is SubscriptionStatus.PAST_DUE
    req = CancelSubscription(
        provider_subscription_id=sub.provider_subscription_id, at_period_end=True
    )
    ends = await gw.cancel_subscription(req, idempotency_key=key())
    assert ends.cancel_at_period_end
    try:
        check_subscription_move(due.status.value, ends.status.value)
    except InvalidState as exc:
        pytest.fail(f"the cancel's answer cannot be recorded: {exc}")
    assert (await read(gw, sub)).status is SubscriptionStatus.PAST_DUE
    await gw.aclose()


async def test_h78l_a_period_end_cancel_of_a_never_paid_one_keeps_its_invoice(
    square_url: str,
) -> None:
    """Review h78l L3 (h78f F7): only paystream's cancel now and an incomplete's end void
    invoices. A trial's, past due, canceled at its period's end keeps its unpaid invoice
    when Square ends it (never paid, it was taken for an incomplete the create ended)."""
    gw = gateway_at(square_url)
    gw.today = lambda: square_today(square_url)
    customer, card = await declining(gw, square_url)
    sub = await gw.create_subscription(plan(customer, card, trial_days=1), idempotency_key=key())
    await advance_square_clock(square_url, DAY + 60)
    req = CancelSubscription(
        provider_subscription_id=sub.provider_subscription_id, at_period_end=True
    )
    await gw.cancel_subscription(req, idempotency_key=key())
    await advance_square_clock(square_url, 7 * DAY + 60)
    ended = await read(gw, sub)
    assert ended.status is SubscriptionStatus.CANCELED
    sid = sub.provider_subscription_id
    assert await effects_of(square_url, "invoice_cancel", sid) == []
    await gw.aclose()

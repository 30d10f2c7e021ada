"""Review h78l: Square subscriptions after e1653fa / 552c65c: a trial's declined first
charge is past_due, and stays so (its invoices kept) once canceled at its period's end;
a trial's create retried after a midnight answers the one made; a trial is never short."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from paystream.gateways.base import CancelSubscription, SubscriptionStatus
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.square.gateway import SquareGateway
from paystream.tables.state_machines import InvalidState, check_subscription_move
from tests.gateways.harness import advance_square_clock, square_today
from tests.gateways.square_gateway.test_square_subscriptions import (
    DAY,
    card_of,
    declining,
    effects_of,
    fake,
    plan,
    read,
)
from tests.gateways.square_gateway.wire import Wire, gateway_at, key, wired

__all__ = ["wired"]


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
    await advance_square_clock(square_url, 2 * DAY + 60)
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
    await advance_square_clock(square_url, 2 * DAY + 60)
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


async def test_h78l_a_trial_create_retried_the_next_day_answers_the_subscription_made(
    wired: tuple[SquareGateway, Wire], square_url: str
) -> None:
    """H1: a trial's start_date is worked out again on every try of the create. Its
    first answer lost and the command retried after a UTC midnight, the retry sent
    another start_date under the same key: Square refused it IDEMPOTENCY_KEY_REUSED and
    the command failed, while the subscription the first try made stayed at Square and
    billed the card when its trial ended. Now the day before's is asked for too."""
    gw, wire = wired
    gw.today = lambda: square_today(square_url)
    customer, card = await card_of(gw)
    k = key()
    first_day = await square_today(square_url)
    wire.lose = "POST /v2/subscriptions"
    with pytest.raises(GatewayError) as lost:
        await gw.create_subscription(plan(customer, card, trial_days=3), idempotency_key=k)
    assert lost.value.retryable
    await advance_square_clock(square_url, DAY)
    sub = await gw.create_subscription(plan(customer, card, trial_days=3), idempotency_key=k)
    assert sub.status is SubscriptionStatus.TRIALING
    # (the first try's subscription: its start date worked out the day before)
    held = await fake(square_url, "GET", f"/v2/subscriptions/{sub.provider_subscription_id}")
    assert held["subscription"]["start_date"] == (first_day + timedelta(days=4)).isoformat()
    # Another body under the key is still refused (only the day before's is tried).
    with pytest.raises(GatewayError) as other:
        await gw.create_subscription(plan(customer, card, trial_days=5), idempotency_key=k)
    assert other.value.code is ErrorCode.IDEMPOTENCY_ERROR


async def test_h78l_a_trial_lasts_at_least_its_trial_days(square_url: str) -> None:
    """L4: start_date was Square's (UTC) today + trial_days, so a trial lasted trial_days
    less the time of day it was made (a 1-day trial made at 23:59 UTC was charged a
    minute later). Now a day more: it lasts trial_days to trial_days + 1."""
    gw = gateway_at(square_url)
    gw.today = lambda: square_today(square_url)
    customer, card = await card_of(gw)
    sub = await gw.create_subscription(plan(customer, card, trial_days=1), idempotency_key=key())
    made = sub.current_period_start
    assert sub.trial_end is not None
    now_fake = datetime.now(UTC).replace(year=made.year, month=made.month, day=made.day)
    assert timedelta(days=1) <= sub.trial_end - now_fake <= timedelta(days=2)
    await gw.aclose()

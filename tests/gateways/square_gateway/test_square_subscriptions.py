"""Square's subscriptions through the gateway, against the tests' FAKE Square: what the
contract suite skips for Square (tests/gateways/test_contract.py: a cancel now) and what
only Square has: its cadences, a cancel only at the period's end (at once only of one
never paid), a trial as a later start_date, a declined first charge's end scheduled,
calls that take no idempotency key retried after a lost answer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from paystream.gateways.base import (
    INVOICES_LISTED_MAX,
    AttachPaymentMethod,
    CancelSubscription,
    CreateCustomer,
    CreateSubscription,
    DetachPaymentMethod,
    InvoiceStatus,
    RetrieveSubscription,
    SubscriptionResult,
    SubscriptionStatus,
    UpdateSubscription,
)
from paystream.gateways.errors import ErrorCode, GatewayError, UnsupportedOperation
from paystream.gateways.square.gateway import SquareGateway
from tests.fixtures.square_fake import FAKE_SQUARE_MERCHANT, FAKE_SQUARE_TOKEN
from tests.gateways.harness import (
    advance_square_clock,
    pause_square_subscription,
    pay_square_invoice,
    square_today,
)
from tests.gateways.square_gateway.wire import Wire, gateway_at, key, usd, wired

__all__ = ["wired"]

DAY = 24 * 3600


async def card_of(gw: SquareGateway, customer: str | None = None) -> tuple[str, str]:
    """(a customer, a card on file of it)."""
    if customer is None:
        made = await gw.create_customer(CreateCustomer(name="Ada"), idempotency_key=key())
        customer = made.provider_customer_id
    pm = await gw.attach_payment_method(
        AttachPaymentMethod(provider_customer_id=customer, token="cnon:card-nonce-ok"),
        idempotency_key=key(),
    )
    return customer, pm.provider_payment_method_id


def plan(customer: str, card: str, **fields: Any) -> CreateSubscription:
    return CreateSubscription(
        provider_customer_id=customer,
        provider_payment_method_id=card,
        **{"amount": usd(700), "interval": "week", **fields},
    )


async def subscribe(gw: SquareGateway, **fields: Any) -> SubscriptionResult:
    customer, card = await card_of(gw)
    return await gw.create_subscription(plan(customer, card, **fields), idempotency_key=key())


async def fake(square_url: str, method: str, path: str, body: Any = None) -> Any:
    """A control route of the fake's, or Square's API as the tests' seller calls it."""
    auth = {"Authorization": f"Bearer {FAKE_SQUARE_TOKEN}"}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"{square_url}{path}", json=body, headers=auth) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def effects_of(square_url: str, kind: str, subscription_id: str) -> list[dict[str, Any]]:
    """The fake's ledger of what its requests did, for one subscription."""
    ledger = (await fake(square_url, "GET", "/_fake/effects"))[FAKE_SQUARE_MERCHANT]
    return [e for e in ledger if e["kind"] == kind and e.get("subscription_id") == subscription_id]


async def read(gw: SquareGateway, sub: SubscriptionResult) -> SubscriptionResult:
    req = RetrieveSubscription(provider_subscription_id=sub.provider_subscription_id)
    return await gw.retrieve_subscription(req, idempotency_key=key())


@pytest.mark.parametrize(
    ("interval", "count", "cadence"),
    [("week", 2, "EVERY_TWO_WEEKS"), ("month", 3, "QUARTERLY"), ("year", 1, "ANNUAL")],
)
async def test_an_interval_is_billed_at_squares_cadence(
    square_url: str, interval: str, count: int, cadence: str
) -> None:
    gw = gateway_at(square_url)
    sub = await subscribe(gw, interval=interval, interval_count=count)
    assert (sub.interval, sub.interval_count) == (interval, count)
    held = await fake(square_url, "GET", f"/v2/subscriptions/{sub.provider_subscription_id}")
    variation = await gw._variation(held["subscription"]["plan_variation_id"])
    assert variation["subscription_plan_variation_data"]["phases"][0]["cadence"] == cadence
    assert held["subscription"]["price_override_money"] == {"amount": 700, "currency": "USD"}
    await gw.aclose()


async def test_one_plan_variation_serves_every_subscription_of_a_currency_and_cadence(
    square_url: str,
) -> None:
    first, second = gateway_at(square_url), gateway_at(square_url)
    a, b = await subscribe(first, amount=usd(500)), await subscribe(second, amount=usd(900))
    held = [
        (await fake(square_url, "GET", f"/v2/subscriptions/{s.provider_subscription_id}"))
        for s in (a, b)
    ]
    assert (
        held[0]["subscription"]["plan_variation_id"]
        == (held[1]["subscription"]["plan_variation_id"])
    )
    assert (a.amount, b.amount) == (usd(500), usd(900))
    await first.aclose()
    await second.aclose()


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"interval": "week", "interval_count": 3}, "Square bills only its cadences"),
        ({"interval": "day", "interval_count": 7}, "every 1 day"),
    ],
)
async def test_a_shape_square_cannot_bill_is_refused_before_any_call(
    wired: tuple[SquareGateway, Wire], fields: dict[str, Any], says: str
) -> None:
    gw, wire = wired
    with pytest.raises(UnsupportedOperation) as info:
        await gw.create_subscription(plan("cus_x", "ccof:x", **fields), idempotency_key=key())
    assert says in info.value.message and wire.sent == []


@pytest.mark.parametrize("trial_end", ["now", 1_900_000_000])
async def test_a_trial_end_is_refused_before_any_call(
    wired: tuple[SquareGateway, Wire], trial_end: Any
) -> None:
    """Square's trial is a later start_date (made at create): paystream neither ends nor
    moves it there, and says so (unsupported) before anything is sent."""
    gw, wire = wired
    with pytest.raises(UnsupportedOperation) as info:
        await gw.update_subscription(
            UpdateSubscription(provider_subscription_id="sub_x", trial_end=trial_end),
            idempotency_key=key(),
        )
    assert "a trial is the subscription's later start_date" in info.value.message
    assert "cancel it and subscribe anew" in info.value.message and wire.sent == []


async def test_a_cancel_now_of_one_paid_for_is_refused(square_url: str) -> None:
    gw = gateway_at(square_url)
    sub = await subscribe(gw)
    with pytest.raises(UnsupportedOperation) as info:
        await gw.cancel_subscription(
            CancelSubscription(provider_subscription_id=sub.provider_subscription_id),
            idempotency_key=key(),
        )
    assert "only at the end of its paid period" in info.value.message
    assert "at_period_end true" in info.value.message
    assert await effects_of(square_url, "subscription_cancel", sub.provider_subscription_id) == []
    assert (await read(gw, sub)).status is SubscriptionStatus.ACTIVE
    await gw.aclose()


async def test_a_pause_or_resume_is_unsupported_and_nothing_is_sent(square_url: str) -> None:
    """Square's PauseSubscription pauses from the start of the next billing cycle (a date
    within the cycle under way is moved there), never now: subscription.pause and
    .resume are answered unsupported, saying so, before any call."""
    from paystream.gateways.base import PauseSubscription, ResumeSubscription

    gw = gateway_at(square_url)
    sub = await subscribe(gw)
    sid = sub.provider_subscription_id
    for call in (
        gw.pause_subscription(
            PauseSubscription(provider_subscription_id=sid), idempotency_key=key()
        ),
        gw.resume_subscription(
            ResumeSubscription(provider_subscription_id=sid), idempotency_key=key()
        ),
    ):
        with pytest.raises(UnsupportedOperation) as info:
            await call
        assert "next billing cycle" in info.value.message, info.value.message
    assert (await read(gw, sub)).status is SubscriptionStatus.ACTIVE
    await gw.aclose()


async def test_a_subscription_paused_in_squares_dashboard_is_not_canceled(
    square_url: str,
) -> None:
    """Square's CancelSubscription cancels an active subscription at its paid period's
    end; a PAUSED one is refused alike at once or at period end (review h82re L2: one
    answered "send at_period_end true", the other invalid_state), saying what to do,
    nothing sent. The handler refuses it before any call (a paused record); this is
    one its record has not read paused yet."""
    gw = gateway_at(square_url)
    sub = await subscribe(gw)
    sid = sub.provider_subscription_id
    await pause_square_subscription(square_url, sid)
    assert (await read(gw, sub)).status is SubscriptionStatus.PAUSED
    messages = set()
    for at_period_end in (False, True):
        with pytest.raises(UnsupportedOperation) as info:
            await gw.cancel_subscription(
                CancelSubscription(provider_subscription_id=sid, at_period_end=at_period_end),
                idempotency_key=key(),
            )
        messages.add(info.value.message)
    (message,) = messages
    assert "Resume it in Square's dashboard" in message, message
    assert await effects_of(square_url, "subscription_cancel", sid) == []
    assert (await read(gw, sub)).status is SubscriptionStatus.PAUSED
    await gw.aclose()


async def test_a_cancel_whose_answer_was_lost_is_scheduled_once(
    wired: tuple[SquareGateway, Wire], square_url: str
) -> None:
    gw, wire = wired
    sub = await subscribe(gw)
    req = CancelSubscription(
        provider_subscription_id=sub.provider_subscription_id, at_period_end=True
    )
    wire.lose = "/cancel"
    with pytest.raises(GatewayError) as info:
        await gw.cancel_subscription(req, idempotency_key=key())
    assert info.value.retryable
    again = await gw.cancel_subscription(req, idempotency_key=key())
    assert again.cancel_at_period_end and again.status is SubscriptionStatus.ACTIVE
    assert again.current_period_end == sub.current_period_end
    assert (
        len(await effects_of(square_url, "subscription_cancel", sub.provider_subscription_id)) == 1
    )
    # At the period's end it is canceled, nothing billed past it; a cancel then, and an
    # update, are answered as it is, and refused.
    await advance_square_clock(square_url, 7 * DAY + 60)
    ended = await gw.cancel_subscription(req, idempotency_key=key())
    assert ended.status is SubscriptionStatus.CANCELED and not ended.cancel_at_period_end
    assert ended.canceled_at == sub.current_period_end and len(ended.invoices) == 1
    with pytest.raises(GatewayError) as refused:
        await gw.update_subscription(
            UpdateSubscription(
                provider_subscription_id=sub.provider_subscription_id, amount=usd(9)
            ),
            idempotency_key=key(),
        )
    assert refused.value.code is ErrorCode.INVALID_STATE


async def test_an_update_whose_answer_was_lost_is_applied_once(
    wired: tuple[SquareGateway, Wire], square_url: str
) -> None:
    gw, wire = wired
    customer, card = await card_of(gw)
    sub = await gw.create_subscription(plan(customer, card), idempotency_key=key())
    _, card2 = await card_of(gw, customer)
    sid = sub.provider_subscription_id
    req = UpdateSubscription(
        provider_subscription_id=sid, amount=usd(900), provider_payment_method_id=card2
    )
    wire.lose = f"PUT /v2/subscriptions/{sid}"
    with pytest.raises(GatewayError):
        await gw.update_subscription(req, idempotency_key=key())
    again = await gw.update_subscription(req, idempotency_key=key())
    assert (again.amount, again.provider_payment_method_id) == (usd(900), card2)
    assert len(await effects_of(square_url, "subscription_update", sid)) == 1
    # Billed from the next period on, nothing prorated now.
    assert [i.amount for i in again.invoices] == [usd(700)]
    await advance_square_clock(square_url, 7 * DAY + 60)
    newest, _ = (await read(gw, sub)).invoices
    assert newest.amount == usd(900) and newest.status is InvoiceStatus.PAID


async def test_a_resume_whose_answer_was_lost_deletes_the_cancel_once(
    wired: tuple[SquareGateway, Wire], square_url: str
) -> None:
    gw, wire = wired
    sub = await subscribe(gw)
    sid = sub.provider_subscription_id
    ends = UpdateSubscription(provider_subscription_id=sid, cancel_at_period_end=True)
    assert (await gw.update_subscription(ends, idempotency_key=key())).cancel_at_period_end
    resume = UpdateSubscription(provider_subscription_id=sid, cancel_at_period_end=False)
    wire.lose = "/actions/"
    with pytest.raises(GatewayError):
        await gw.update_subscription(resume, idempotency_key=key())
    again = await gw.update_subscription(resume, idempotency_key=key())
    assert not again.cancel_at_period_end
    assert len(await effects_of(square_url, "subscription_action_deleted", sid)) == 1
    await advance_square_clock(square_url, 7 * DAY + 60)
    renewed = await read(gw, sub)
    assert renewed.status is SubscriptionStatus.ACTIVE and len(renewed.invoices) == 2


async def test_a_declined_charge_leaves_the_invoice_open_and_the_subscription_past_due(
    square_url: str,
) -> None:
    gw = gateway_at(square_url)
    sub = await subscribe(gw)
    assert sub.provider_payment_method_id is not None
    await fake(square_url, "POST", f"/_fake/cards/{sub.provider_payment_method_id}/decline", {})
    await advance_square_clock(square_url, 7 * DAY + 60)
    renewed = await read(gw, sub)
    assert renewed.status is SubscriptionStatus.PAST_DUE
    newest, first = renewed.invoices
    assert (newest.status, first.status) == (InvoiceStatus.OPEN, InvoiceStatus.PAID)
    assert newest.failure_code == "card_declined" and newest.provider_payment_id is None
    await gw.aclose()


async def test_a_card_disabled_is_not_billed(square_url: str) -> None:
    gw = gateway_at(square_url)
    customer, card = await card_of(gw)
    await gw.detach_payment_method(
        DetachPaymentMethod(provider_payment_method_id=card), idempotency_key=key()
    )
    with pytest.raises(GatewayError) as info:
        await gw.create_subscription(plan(customer, card), idempotency_key=key())
    assert info.value.code is ErrorCode.INVALID_REQUEST and not info.value.retryable
    await gw.aclose()


async def test_invoices_are_listed_newest_first_at_most_the_most_listed(square_url: str) -> None:
    gw = gateway_at(square_url)
    sub = await subscribe(gw, interval="day", interval_count=1)
    await advance_square_clock(square_url, (INVOICES_LISTED_MAX + 3) * DAY)
    renewed = await read(gw, sub)
    assert len(renewed.invoices) == INVOICES_LISTED_MAX
    starts = [i.period_start for i in renewed.invoices]
    assert starts == sorted(starts, reverse=True)
    assert renewed.invoices[0].period_start == renewed.current_period_start
    assert all(i.provider_payment_id for i in renewed.invoices)
    await gw.aclose()


async def declining(gw: SquareGateway, square_url: str) -> tuple[str, str]:
    """(a customer, a card on file of it whose issuer declines its charges)."""
    customer, card = await card_of(gw)
    await fake(square_url, "POST", f"/_fake/cards/{card}/decline", {})
    return customer, card


async def test_a_declined_first_charge_is_incomplete_its_end_scheduled_once(
    wired: tuple[SquareGateway, Wire], square_url: str
) -> None:
    """Review h78f F4a: as on every provider, a declined first charge is `incomplete`
    (the handler's subscription.failed), not `past_due` behind a subscription.created;
    nothing more is billed: the create schedules its end (keyless: a replay of the
    create, and a lost answer's retry, schedule it once)."""
    gw, wire = wired
    customer, card = await declining(gw, square_url)
    k = key()
    wire.lose = "/cancel"
    with pytest.raises(GatewayError) as lost:
        await gw.create_subscription(plan(customer, card), idempotency_key=k)
    assert lost.value.retryable
    sub = await gw.create_subscription(plan(customer, card), idempotency_key=k)
    assert sub.status is SubscriptionStatus.INCOMPLETE and sub.cancel_at_period_end
    (first,) = sub.invoices
    assert (first.status, first.failure_code) == (InvoiceStatus.OPEN, "card_declined")
    again = await gw.create_subscription(plan(customer, card), idempotency_key=k)
    assert again.provider_subscription_id == sub.provider_subscription_id
    assert again.status is SubscriptionStatus.INCOMPLETE
    sid = sub.provider_subscription_id
    assert len(await effects_of(square_url, "subscription_cancel", sid)) == 1
    assert await effects_of(square_url, "payment", sid) == []
    # Its period over, unpaid: canceled, nothing billed, and its invoice canceled (an
    # incomplete's end paystream scheduled, as Stripe voids an expired incomplete's).
    await advance_square_clock(square_url, 7 * DAY + 60)
    ended = await read(gw, sub)
    assert ended.status is SubscriptionStatus.CANCELED
    assert ended.canceled_at == sub.current_period_end  # (Square's end, not the read's)
    assert [i.status for i in ended.invoices] == [InvoiceStatus.VOID]
    assert await effects_of(square_url, "payment", sid) == []
    assert len(await effects_of(square_url, "invoice_cancel", sid)) == 1


async def test_an_incomplete_paid_later_is_active_to_its_periods_end(square_url: str) -> None:
    """The customer pays the emailed invoice (as Stripe's incomplete, paid, is active):
    active, its end still scheduled (the create's), which an update may take back."""
    gw = gateway_at(square_url)
    customer, card = await declining(gw, square_url)
    sub = await gw.create_subscription(plan(customer, card), idempotency_key=key())
    assert sub.status is SubscriptionStatus.INCOMPLETE
    await pay_square_invoice(square_url, sub.invoices[0].provider_invoice_id)
    paid = await read(gw, sub)
    assert paid.status is SubscriptionStatus.ACTIVE and paid.cancel_at_period_end
    (invoice,) = paid.invoices
    assert invoice.status is InvoiceStatus.PAID and invoice.provider_payment_id
    assert invoice.failure_code is None
    await gw.aclose()


async def test_an_incomplete_canceled_now_bills_nothing_ever(
    wired: tuple[SquareGateway, Wire], square_url: str
) -> None:
    """Square has no cancel now, but one never paid, its end scheduled and its unpaid
    invoice canceled, is billed nothing ever: answered canceled (as the simulator's and
    Stripe's incomplete canceled), and read so to and past its scheduled end. Keyless
    CancelInvoice: a lost answer's retry cancels it once."""
    gw, wire = wired
    customer, card = await declining(gw, square_url)
    sub = await gw.create_subscription(plan(customer, card), idempotency_key=key())
    req = CancelSubscription(provider_subscription_id=sub.provider_subscription_id)
    wire.lose = "/cancel"
    with pytest.raises(GatewayError):
        await gw.cancel_subscription(req, idempotency_key=key())
    canceled = await gw.cancel_subscription(req, idempotency_key=key())
    assert canceled.status is SubscriptionStatus.CANCELED and canceled.canceled_at is not None
    assert not canceled.cancel_at_period_end
    assert [i.status for i in canceled.invoices] == [InvoiceStatus.VOID]
    sid = sub.provider_subscription_id
    assert len(await effects_of(square_url, "invoice_cancel", sid)) == 1
    assert len(await effects_of(square_url, "subscription_cancel", sid)) == 1
    # (never active again: the state machine moves no canceled record back)
    assert (await read(gw, sub)).model_dump() == canceled.model_dump()
    await advance_square_clock(square_url, 7 * DAY + 60)
    ended = await read(gw, sub)
    assert (ended.status, ended.canceled_at) == (SubscriptionStatus.CANCELED, canceled.canceled_at)
    assert await effects_of(square_url, "payment", sid) == []


async def test_a_subscription_ended_at_square_keeps_its_unpaid_invoice(square_url: str) -> None:
    """Review h78f F7: a read cancels no invoice of a subscription the seller ended at
    Square (its dashboard) after it was paid for: the seller may still collect it."""
    gw = gateway_at(square_url)
    sub = await subscribe(gw)
    sid = sub.provider_subscription_id
    await fake(square_url, "POST", f"/_fake/cards/{sub.provider_payment_method_id}/decline", {})
    await advance_square_clock(square_url, 7 * DAY + 60)
    assert (await read(gw, sub)).status is SubscriptionStatus.PAST_DUE
    await fake(square_url, "POST", f"/v2/subscriptions/{sid}/cancel", {})
    await advance_square_clock(square_url, 7 * DAY + 60)
    ended = await read(gw, sub)
    assert ended.status is SubscriptionStatus.CANCELED
    assert [i.status for i in ended.invoices] == [InvoiceStatus.OPEN, InvoiceStatus.PAID]
    assert await effects_of(square_url, "invoice_cancel", sid) == []
    await gw.aclose()


async def test_a_trial_is_a_later_start_date(square_url: str) -> None:
    """Review h78f F4b: a trial of ``trial_days`` is a start_date that far on and a day
    more (review h78l L4: never cut short by the time of day it was made), on Square's
    clock: PENDING, nothing invoiced or charged until then, `trialing` with its
    trial_end; from that date billed as any."""
    gw = gateway_at(square_url)
    gw.today = lambda: square_today(square_url)
    today = await square_today(square_url)
    sub = await subscribe(gw, trial_days=10)
    ends = datetime(today.year, today.month, today.day, tzinfo=UTC) + timedelta(days=11)
    assert sub.status is SubscriptionStatus.TRIALING and sub.invoices == ()
    assert (sub.trial_end, sub.current_period_end) == (ends, ends)
    assert sub.current_period_start < ends and not sub.cancel_at_period_end
    held = await fake(square_url, "GET", f"/v2/subscriptions/{sub.provider_subscription_id}")
    assert held["subscription"]["start_date"] == (today + timedelta(days=11)).isoformat()
    await advance_square_clock(square_url, 10 * DAY)
    assert (await read(gw, sub)).status is SubscriptionStatus.TRIALING
    await advance_square_clock(square_url, DAY)
    billed = await read(gw, sub)
    assert billed.status is SubscriptionStatus.ACTIVE and billed.trial_end == ends
    (first,) = billed.invoices
    assert (first.status, first.period_start) == (InvoiceStatus.PAID, ends)
    assert billed.current_period_start == ends
    await gw.aclose()


async def test_a_trial_canceled_at_its_end_is_never_billed(square_url: str) -> None:
    gw = gateway_at(square_url)
    gw.today = lambda: square_today(square_url)
    sub = await subscribe(gw, trial_days=3)
    req = CancelSubscription(
        provider_subscription_id=sub.provider_subscription_id, at_period_end=True
    )
    ends = await gw.cancel_subscription(req, idempotency_key=key())
    assert ends.status is SubscriptionStatus.TRIALING and ends.cancel_at_period_end
    await advance_square_clock(square_url, 4 * DAY + 60)
    ended = await read(gw, sub)
    assert ended.status is SubscriptionStatus.CANCELED and ended.invoices == ()
    assert ended.canceled_at == sub.trial_end
    assert await effects_of(square_url, "payment", sub.provider_subscription_id) == []
    await gw.aclose()

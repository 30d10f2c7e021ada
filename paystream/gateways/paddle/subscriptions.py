"""Paddle's subscriptions → paystream's: the checkout that makes one, its status, periods
and invoices (its transactions).

Paddle creates no subscription from the API: one is made when a customer pays, at
Paddle Checkout, a transaction whose items have a recurring price (``billing_cycle``);
the transaction then names it (``subscription_id``). So paystream's subscription is
named at Paddle by that checkout transaction's id (``txn_``), never changed: before it is
paid it is ``requires_action`` (its checkout URL the next action), after it the gateway
follows ``subscription_id`` to the subscription. References: Subscription
(https://developer.paddle.com/api-reference/subscriptions: ``status`` active, trialing,
past_due, paused, canceled; ``current_billing_period {starts_at, ends_at}``;
``scheduled_change {action: cancel | pause | resume, effective_at}``; ``billing_cycle
{interval, frequency}``), "Bill for non-catalog items" (a transaction's inline price may
carry ``billing_cycle``), Transaction (``billing_period``, ``origin``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from dateutil.relativedelta import relativedelta

from paystream.gateways.base import (
    INVOICES_LISTED_MAX,
    InvoiceResult,
    InvoiceStatus,
    SubscriptionResult,
    SubscriptionStatus,
)
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.paddle.errors import PROVIDER, unreadable
from paystream.gateways.paddle.mapping import amount, checkout_action
from paystream.money import Money

__all__ = [
    "INTERVALS",
    "billing_cycle",
    "checkout_subscription",
    "invoices",
    "price_of",
    "subscription",
    "trial_period",
]

# paystream's intervals are Paddle's billing_cycle intervals, one for one.
INTERVALS = frozenset({"day", "week", "month", "year"})
_STATUS = {
    "active": SubscriptionStatus.ACTIVE,
    "trialing": SubscriptionStatus.TRIALING,
    "past_due": SubscriptionStatus.PAST_DUE,
    # (subscription.pause's, ``effective_from: immediately``; or one paused at Paddle)
    "paused": SubscriptionStatus.PAUSED,
    "canceled": SubscriptionStatus.CANCELED,
}
# A checkout transaction not paid yet: its customer still to pay at checkout.
_UNPAID = frozenset({"draft", "ready", "billed"})
# A checkout transaction paid, Paddle still processing it (making its subscription).
_PROCESSING = frozenset({"paid", "completed"})
_INVOICE = {
    "completed": InvoiceStatus.PAID,
    "paid": InvoiceStatus.PAID,
    "billed": InvoiceStatus.OPEN,
    "ready": InvoiceStatus.OPEN,
    "past_due": InvoiceStatus.OPEN,
    "canceled": InvoiceStatus.VOID,
}


def billing_cycle(interval: str, interval_count: int) -> dict[str, Any]:
    return {"interval": interval, "frequency": interval_count}


def trial_period(days: int) -> dict[str, Any]:
    """A free trial of ``days`` as a price's ``trial_period`` (Paddle's price object:
    ``{interval, frequency}``, only with a ``billing_cycle``): Paddle Checkout saves the
    customer's payment method and charges nothing; the subscription is ``trialing``
    until its ``next_billed_at``, the trial's end, when the first period is billed."""
    return {"interval": "day", "frequency": days}


def _trial_end(price: Mapping[str, Any], begins: datetime) -> datetime | None:
    """When a trial of ``price`` begun at ``begins`` would end; None: the price has none."""
    trial = price.get("trial_period")
    if trial is None:
        return None
    if not isinstance(trial, Mapping) or trial.get("interval") not in INTERVALS:
        raise unreadable("a trial_period this version does not know")
    frequency = trial.get("frequency")
    if not isinstance(frequency, int) or frequency < 1:
        raise unreadable("a trial_period without a frequency")
    return begins + relativedelta(**{f"{trial['interval']}s": frequency})


def _time(text: Any) -> datetime:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        raise unreadable(f"a time this version cannot read ({str(text)[:40]!r})") from None


def _cycle(obj: Mapping[str, Any]) -> tuple[str, int]:
    cycle = obj.get("billing_cycle")
    if not isinstance(cycle, Mapping) or cycle.get("interval") not in INTERVALS:
        raise unreadable("a billing_cycle this version does not know")
    frequency = cycle.get("frequency")
    if not isinstance(frequency, int) or frequency < 1:
        raise unreadable("a billing_cycle without a frequency")
    return str(cycle["interval"]), frequency


def price_of(items: Any) -> tuple[Mapping[str, Any], Money]:
    """The one recurring item's price (as paystream's create and update make them) and
    what it bills a period (its unit price times its quantity)."""
    if not isinstance(items, list) or len(items) != 1 or not isinstance(items[0], Mapping):
        raise GatewayError(
            ErrorCode.INVALID_STATE,
            "the Paddle subscription has not one item (not made by paystream, or changed "
            "at Paddle): paystream bills one price a period",
            provider=PROVIDER,
            retryable=False,
        )
    item = items[0]
    price = item.get("price")
    unit = price.get("unit_price") if isinstance(price, Mapping) else None
    quantity = item.get("quantity", 1)
    if not isinstance(price, Mapping) or not isinstance(unit, Mapping):
        raise unreadable("a subscription item without a unit price")
    if not isinstance(quantity, int) or quantity < 1:
        raise unreadable("a subscription item without a quantity")
    money = Money(amount=amount(unit.get("amount")) * quantity, currency=str(unit["currency_code"]))
    return price, money


def checkout_subscription(txn: Mapping[str, Any]) -> SubscriptionResult:
    """The subscription a checkout transaction not yet paid stands for: ``requires_action``
    (its customer pays at the checkout URL: ``next_action``; paid, none, while Paddle
    makes the subscription), or ``canceled`` with it.
    Its period is the one it would bill paid at the transaction's making (Paddle starts
    it at payment, maybe later); with a free trial, that period is the trial, its end the
    ``trial_end`` (nothing charged at its checkout: the day's volume counts none of it)."""
    status = txn.get("status")
    price, money = price_of(txn.get("items"))
    interval, count = _cycle(price)
    made = _time(txn.get("created_at"))
    trial_end = _trial_end(price, made)
    ends = trial_end or made + relativedelta(**{f"{interval}s": count})

    def stage(
        as_status: SubscriptionStatus, period_end: datetime, **extra: Any
    ) -> SubscriptionResult:
        return SubscriptionResult(
            provider_subscription_id=str(txn["id"]),
            status=as_status,
            amount=money,
            interval=interval,
            interval_count=count,
            current_period_start=made,
            current_period_end=period_end,
            trial_end=trial_end if as_status is SubscriptionStatus.REQUIRES_ACTION else None,
            **extra,
        )

    if status == "canceled":
        return stage(
            SubscriptionStatus.CANCELED,
            made,
            canceled_at=_time(txn.get("updated_at") or txn.get("created_at")),
        )
    if status in _PROCESSING:
        # Paid, its subscription not named yet: Paddle makes it, then names it in the
        # transaction (``completed``) moments after; ``transaction.paid``,
        # ``subscription.created`` and ``.activated`` come before that. Not yet live, and
        # nothing left for the customer to do; no provider failure either: retried, each
        # such refresh counted against the tenant's circuit and was parked (review h79r_b
        # H1). The transaction's ``completed`` event reads it live.
        return stage(SubscriptionStatus.REQUIRES_ACTION, ends)
    if status not in _UNPAID:
        raise unreadable(f"checkout transaction status {str(status)[:32]!r}")
    return stage(SubscriptionStatus.REQUIRES_ACTION, ends, next_action=checkout_action(txn))


def invoices(transactions: Sequence[Mapping[str, Any]]) -> tuple[InvoiceResult, ...]:
    """A subscription's transactions (its checkout's and its renewals'), newest first, as
    its invoices: paid, open (a renewal's payment failed: ``past_due``) or void. A draft
    and a status this version does not know are left out."""
    found: list[InvoiceResult] = []
    for txn in transactions:
        status = _INVOICE.get(str(txn.get("status")))
        period = txn.get("billing_period")
        if status is None or not isinstance(period, Mapping):
            continue
        totals = (txn.get("details") or {}).get("totals") or {}
        attempts = txn.get("payments") or []
        latest = attempts[0] if attempts and isinstance(attempts[0], Mapping) else {}
        code = latest.get("error_code") if latest.get("status") == "error" else None
        found.append(
            InvoiceResult(
                provider_invoice_id=str(txn["id"]),
                status=status,
                amount=Money(
                    amount=amount(totals.get("grand_total") or totals.get("total") or "0"),
                    currency=str(txn.get("currency_code")),
                ),
                period_start=_time(period.get("starts_at")),
                period_end=_time(period.get("ends_at")),
                provider_payment_id=str(txn["id"]),
                failure_code=str(code) if status is InvoiceStatus.OPEN and code else None,
                failure_message=(
                    f"Paddle could not collect the renewal ({code})"
                    if status is InvoiceStatus.OPEN and code
                    else None
                ),
            )
        )
    return tuple(found[:INVOICES_LISTED_MAX])


def subscription(
    checkout_id: str, sub: Mapping[str, Any], billed: tuple[InvoiceResult, ...]
) -> SubscriptionResult:
    """Paddle's subscription ``sub`` (made by the checkout ``checkout_id``), its invoices
    newest first. A ``paused`` one's scheduled ``resume`` (its pause's ``resume_at``) is
    when it resumes by itself."""
    status = sub.get("status")
    if status not in _STATUS:
        raise unreadable(f"subscription status {str(status)[:32]!r}")
    price, money = price_of(sub.get("items"))
    interval, count = _cycle(sub if sub.get("billing_cycle") else price)
    period = sub.get("current_billing_period")
    if isinstance(period, Mapping):
        begins, ends = _time(period.get("starts_at")), _time(period.get("ends_at"))
    elif billed and billed[0].period_start and billed[0].period_end:
        # (canceled: Paddle names no current period; the last one billed)
        begins, ends = billed[0].period_start, billed[0].period_end
    else:
        begins = ends = _time(sub.get("started_at") or sub.get("created_at"))
    change = sub.get("scheduled_change")
    canceling = isinstance(change, Mapping) and change.get("action") == "cancel"
    resuming = isinstance(change, Mapping) and change.get("action") == "resume"
    ended = _STATUS[status] is SubscriptionStatus.CANCELED
    return SubscriptionResult(
        provider_subscription_id=checkout_id,
        status=_STATUS[status],
        amount=money,
        interval=interval,
        interval_count=count,
        current_period_start=begins,
        current_period_end=ends,
        trial_end=ends if status == "trialing" else None,
        cancel_at_period_end=canceling and not ended,
        canceled_at=_time(sub["canceled_at"]) if ended and sub.get("canceled_at") else None,
        invoices=billed,
        pause_resumes_at=_time(change["effective_at"])
        if resuming and status == "paused" and isinstance(change, Mapping)
        else None,
    )

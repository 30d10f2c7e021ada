"""Square's subscriptions → paystream's: cadences, billing periods, statuses, invoices.

Square bills a subscription by its plan variation's phase cadence (SubscriptionCadence),
one invoice per period from its ``start_date``, charged to its ``card_id``; a period's
end is its ``charged_through_date``. References: objects Subscription,
SubscriptionPhase, SubscriptionCadence, SubscriptionAction, Invoice, Order
(https://developer.squareup.com/reference/square), and the guide "Subscription Billing
and Invoices" (an invoice whose card charge failed is emailed, left UNPAID, and the
subscription stays ACTIVE). Square's dates are the last day billed: its
``charged_through_date`` ("May 1 billed: May 31") and the ``canceled_date`` a
CancelSubscription sets to it; a period ends, and a cancel takes effect, the day after."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from dateutil.relativedelta import relativedelta

from paystream.gateways.base import (
    InvoiceResult,
    InvoiceStatus,
    SubscriptionResult,
    SubscriptionStatus,
)
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.money import Money

__all__ = [
    "CADENCES",
    "cadence_for",
    "cancel_action",
    "invoice",
    "invoice_status",
    "money_of",
    "never_paid",
    "period_of",
    "phase_cadence",
    "start_of",
    "subscription",
    "was_trial",
]

PROVIDER = "square"

# paystream's (interval, interval_count) → Square's cadence: the combinations Square has
# one for (SubscriptionCadence). Any other is refused before a call.
CADENCES: dict[tuple[str, int], str] = {
    ("day", 1): "DAILY",
    ("day", 30): "THIRTY_DAYS",
    ("day", 60): "SIXTY_DAYS",
    ("day", 90): "NINETY_DAYS",
    ("week", 1): "WEEKLY",
    ("week", 2): "EVERY_TWO_WEEKS",
    ("month", 1): "MONTHLY",
    ("month", 2): "EVERY_TWO_MONTHS",
    ("month", 3): "QUARTERLY",
    ("month", 4): "EVERY_FOUR_MONTHS",
    ("month", 6): "EVERY_SIX_MONTHS",
    ("year", 1): "ANNUAL",
    ("year", 2): "EVERY_TWO_YEARS",
}
_INTERVALS = {cadence: pair for pair, cadence in CADENCES.items()}
_UNITS = {"day": "days", "week": "weeks", "month": "months", "year": "years"}
# A period's number searched for at most (a daily subscription billed for 30 years).
_PERIODS_MAX = 11_000
# A Square date names the last day billed (charged_through_date, canceled_date): the
# period ends the day after.
_DAY_AFTER = timedelta(days=1)

# Square's invoice statuses (InvoiceStatus) folded onto a subscription invoice's.
_INVOICE_STATUS = {
    "PAID": InvoiceStatus.PAID,
    "PARTIALLY_REFUNDED": InvoiceStatus.PAID,
    "REFUNDED": InvoiceStatus.PAID,
    "UNPAID": InvoiceStatus.OPEN,
    "SCHEDULED": InvoiceStatus.OPEN,
    "PARTIALLY_PAID": InvoiceStatus.OPEN,
    "PAYMENT_PENDING": InvoiceStatus.OPEN,
    # (Square canceled it for suspicious activity: not payable)
    "FAILED": InvoiceStatus.VOID,
    "CANCELED": InvoiceStatus.VOID,
}
# Open, but no charge was refused: not yet processed, or a payment under way.
_IN_FLIGHT = ("SCHEDULED", "PAYMENT_PENDING")


def cadence_for(interval: str, interval_count: int) -> str | None:
    """Square's cadence for billing every ``interval_count`` ``interval`` s, or None."""
    return CADENCES.get((interval, interval_count))


def phase_cadence(variation: Mapping[str, Any]) -> str:
    """The cadence of a plan variation of one endless phase (as paystream makes them)."""
    data = variation.get("subscription_plan_variation_data")
    phases = data.get("phases") if isinstance(data, Mapping) else None
    if not phases or len(phases) != 1 or not isinstance(phases[0], Mapping):
        raise GatewayError(
            ErrorCode.INVALID_STATE,
            "the subscription's plan variation has not one phase (not made by paystream)",
            provider=PROVIDER,
            retryable=False,
        )
    cadence = str(phases[0].get("cadence"))
    if cadence not in _INTERVALS:
        raise _unreadable(f"a cadence this version does not know ({cadence})")
    return cadence


def _step(cadence: str, n: int) -> relativedelta:
    interval, count = _INTERVALS[cadence]
    return relativedelta(**{_UNITS[interval]: count * n})


def _day(text: Any) -> date:
    try:
        return date.fromisoformat(str(text))
    except ValueError:
        raise _unreadable(f"a date this version cannot read ({text!r})") from None


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def period_of(start: date, cadence: str, ends: date) -> tuple[date, date]:
    """The billing period of a subscription starting ``start`` that ends ``ends`` (its
    charged_through_date): periods counted from the start, as Square bills them."""
    for n in range(_PERIODS_MAX):
        if start + _step(cadence, n + 1) >= ends:
            return start + _step(cadence, n), ends
    raise _unreadable("a charged_through_date past every period")


def _unreadable(what: str) -> GatewayError:
    error = GatewayError(
        ErrorCode.PROVIDER_UNAVAILABLE,
        f"Square's subscription holds {what}",
        provider=PROVIDER,
        retryable=True,
    )
    error.unreadable_answer = True
    return error


def cancel_action(sub: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The subscription's pending CANCEL action (read with ``include=actions``)."""
    for action in sub.get("actions") or []:
        if isinstance(action, Mapping) and action.get("type") == "CANCEL":
            return action
    return None


def start_of(sub: Mapping[str, Any]) -> date:
    """The subscription's start_date (its periods are counted from it)."""
    return _day(sub.get("start_date"))


def was_trial(sub: Mapping[str, Any]) -> bool:
    """The subscription started later than the day it was made: a trial's (paystream's
    create starts a trial's billing so). Its first charge comes after the create, which
    so never scheduled its end (an incomplete's: review h78l M2)."""
    start = _day(sub.get("start_date"))
    return start > _day(str(sub.get("created_at") or start.isoformat())[:10])


def money_of(obj: Any) -> Money | None:
    """A Money object's amount, or None where it holds none."""
    if not isinstance(obj, Mapping) or not isinstance(obj.get("amount"), int):
        return None
    return Money(amount=int(obj["amount"]), currency=str(obj.get("currency")))


def invoice_status(raw: Any) -> tuple[InvoiceStatus, bool] | None:
    """A Square invoice status as a subscription invoice's (its status, and whether an
    open one's charge was declined), as ``invoice`` reads it; None for a DRAFT or a
    status this version does not know."""
    status = _INVOICE_STATUS.get(str(raw))
    if status is None:
        return None
    return status, status is InvoiceStatus.OPEN and raw not in _IN_FLIGHT


def invoice(
    obj: Mapping[str, Any], start: date, cadence: str, payment_id: str | None
) -> InvoiceResult | None:
    """A subscription's invoice (None: a DRAFT, or one of a status this version does not
    know). Its period starts on its sale_or_service_date (the billing date: its payment
    request's due_date where that is not set) and lasts one cadence."""
    status = _INVOICE_STATUS.get(str(obj.get("status")))
    requests = obj.get("payment_requests") or [{}]
    request = requests[0] if isinstance(requests[0], Mapping) else {}
    amount = money_of(request.get("computed_amount_money"))
    billed = obj.get("sale_or_service_date") or request.get("due_date")
    if status is None or amount is None or billed is None:
        return None
    begins = _day(billed)
    _, ends = period_of(start, cadence, begins + _step(cadence, 1))
    declined = status is InvoiceStatus.OPEN and obj.get("status") not in _IN_FLIGHT
    return InvoiceResult(
        provider_invoice_id=str(obj["id"]),
        status=status,
        amount=amount,
        period_start=_midnight(begins),
        period_end=_midnight(ends),
        provider_payment_id=payment_id,
        # (Square tells no decline on an invoice: the charge failed, it was emailed)
        failure_code="card_declined" if declined else None,
        failure_message=(
            "Square could not charge the card on file: the invoice was emailed to the customer"
            if declined
            else None
        ),
    )


_PAID = ("PAID", "PARTIALLY_REFUNDED", "REFUNDED", "PARTIALLY_PAID", "PAYMENT_PENDING")


def never_paid(raw_invoices: Sequence[Mapping[str, Any]]) -> bool:
    """Nothing of the subscription was paid or is being paid: its invoices (Square's, as
    searched) at most unpaid, scheduled or canceled."""
    return not any(i.get("status") in _PAID for i in raw_invoices)


def _status(
    sub: Mapping[str, Any], invoices: tuple[InvoiceResult, ...], never_paid: bool, trial: bool
) -> SubscriptionStatus:
    """ACTIVE (or PENDING) is active, past due when its newest
    invoice is open with a decline. Its first charge declined, with its end scheduled
    (paystream's create does so: nothing more billed), it is incomplete; that invoice
    canceled too (paystream's cancel of it), canceled: nothing was billed, nor will be.
    A trial's first charge comes after the create, which scheduled no end: declined, it
    is past due, and stays so once canceled at its period's end (never past_due ->
    incomplete, a move back: review h78l M2).
    PENDING before its first invoice, a trial's (a later start_date), is trialing. PAUSED
    (by the seller, in Square's dashboard) is paused. CANCELED,
    DEACTIVATED (a billing issue Square stopped it for) and COMPLETED are canceled."""
    status = sub.get("status")
    if status in ("CANCELED", "DEACTIVATED", "COMPLETED"):
        return SubscriptionStatus.CANCELED
    if status not in ("ACTIVE", "PENDING", "PAUSED"):
        raise _unreadable(f"a status this version does not know ({status})")
    if status == "PENDING" and trial and not invoices:
        return SubscriptionStatus.TRIALING
    if status == "PAUSED":  # (by the seller, at Square: nothing billed until resumed)
        return SubscriptionStatus.PAUSED
    # (an open invoice whose charge is still to come, or under way, is not past due)
    declined = bool(invoices) and invoices[0].status is InvoiceStatus.OPEN
    declined = declined and invoices[0].failure_code is not None
    if never_paid and sub.get("canceled_date") and invoices:
        if declined and not trial:
            return SubscriptionStatus.INCOMPLETE
        if all(i.status is InvoiceStatus.VOID for i in invoices):
            return SubscriptionStatus.CANCELED
    return SubscriptionStatus.PAST_DUE if declined else SubscriptionStatus.ACTIVE


def _instant(text: Any) -> datetime | None:
    """An RFC 3339 UTC time of Square's, to the second (None: none, or unreadable)."""
    try:
        return datetime.fromisoformat(str(text)[:19]).replace(tzinfo=UTC)
    except ValueError:
        return None


def subscription(
    sub: Mapping[str, Any],
    cadence: str,
    base_price: Money | None,
    invoices: tuple[InvoiceResult, ...] = (),
    raw_invoices: Sequence[Mapping[str, Any]] | None = None,
) -> SubscriptionResult:
    """The subscription (read with its actions), its invoices newest first (and as
    Square has them: ``raw_invoices``). Its period: the one whose last day is its
    charged_through_date (the first, before any is billed; in a trial, from the day it
    was made to its start_date). A start_date later than the day it was made was a
    trial's (paystream's create starts a trial's billing so): its ``trial_end``."""
    raw = raw_invoices or []
    start = _day(sub.get("start_date"))
    made = _day(str(sub.get("created_at") or start.isoformat())[:10])
    through = sub.get("charged_through_date")
    never = never_paid(raw)
    status = _status(sub, invoices, never, was_trial(sub))
    if through:
        begins, ends = period_of(start, cadence, _day(through) + _DAY_AFTER)
    elif status is SubscriptionStatus.TRIALING:
        begins, ends = min(made, start), start
    else:
        begins, ends = start, start + _step(cadence, 1)
    amount = money_of(sub.get("price_override_money")) or base_price
    if amount is None:
        raise _unreadable("no price")
    canceled = sub.get("canceled_date")
    ended = status is SubscriptionStatus.CANCELED
    canceled_at = _midnight(_day(canceled) + _DAY_AFTER) if ended and canceled else None
    voided = _instant(raw[0].get("updated_at")) if raw else None
    if ended and never and voided is not None and raw[0].get("status") == "CANCELED":
        # (paystream's cancel now of one never paid: when its invoice was canceled, if
        # before Square's end of it)
        canceled_at = min(voided, canceled_at or voided)
    interval, count = _INTERVALS[cadence]
    return SubscriptionResult(
        provider_subscription_id=str(sub["id"]),
        status=status,
        amount=amount,
        interval=interval,
        interval_count=count,
        current_period_start=_midnight(begins),
        current_period_end=_midnight(ends),
        trial_end=_midnight(start) if start > made else None,
        cancel_at_period_end=not ended and bool(canceled),
        canceled_at=canceled_at,
        invoices=invoices,
        provider_payment_method_id=str(sub["card_id"]) if sub.get("card_id") else None,
    )

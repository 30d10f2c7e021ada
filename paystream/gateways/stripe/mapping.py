"""Stripe API objects → provider-neutral results (statuses folded onto ours)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from paystream.gateways.base import (
    AccountLinkResult,
    BalanceAmount,
    BalanceResult,
    ConnectedAccountResult,
    CustomerDetails,
    CustomerResult,
    DisputeResult,
    DisputeStatus,
    InvoiceLine,
    InvoiceResult,
    InvoiceStatus,
    PaymentMethodResult,
    PaymentResult,
    PaymentStatus,
    PayoutResult,
    PayoutStatus,
    ProrationLineResult,
    RefundResult,
    RefundStatus,
    SubscriptionResult,
    SubscriptionStatus,
    TaxRateResult,
    TransferResult,
)
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.stripe_rules import from_stripe_units
from paystream.money import Money

__all__ = [
    "account_link",
    "balance",
    "connected_account",
    "customer",
    "dispute",
    "dispute_fee",
    "dispute_status",
    "evidence_due_by",
    "invoice",
    "invoice_payment_intent",
    "invoice_status",
    "latest_charge_id",
    "payment",
    "payment_method",
    "payment_status",
    "payout",
    "payout_status",
    "refund",
    "refund_status",
    "subscription",
    "subscription_amount",
    "subscription_method",
    "subscription_period_end",
    "subscription_status",
    "tax_rate",
    "transfer",
]

_PAYMENT_STATUS = {
    "requires_action": PaymentStatus.REQUIRES_ACTION,
    # Only seen if confirmation was deferred; the merchant still has to act.
    "requires_confirmation": PaymentStatus.REQUIRES_ACTION,
    "processing": PaymentStatus.PROCESSING,
    "requires_capture": PaymentStatus.AUTHORIZED,
    "succeeded": PaymentStatus.SUCCEEDED,
    "canceled": PaymentStatus.CANCELED,
    # After a failed attempt Stripe waits for a new payment method: for us the attempt failed.
    "requires_payment_method": PaymentStatus.FAILED,
}


def payment_status(status: Any) -> PaymentStatus | None:
    """Ours for a PaymentIntent status; None for one this version does not know."""
    return _PAYMENT_STATUS.get(status) if isinstance(status, str) else None


_REFUND_STATUS = {
    "pending": RefundStatus.PENDING,
    "requires_action": RefundStatus.PENDING,
    "succeeded": RefundStatus.SUCCEEDED,
    "failed": RefundStatus.FAILED,
    "canceled": RefundStatus.FAILED,
}


def refund_status(status: Any) -> RefundStatus:
    """Ours for a Refund status: one this version does not know is pending (never
    assumed to have succeeded)."""
    known = _REFUND_STATUS.get(status) if isinstance(status, str) else None
    return RefundStatus.PENDING if known is None else known


_DISPUTE_STATUS = {
    "warning_needs_response": DisputeStatus.NEEDS_RESPONSE,
    "needs_response": DisputeStatus.NEEDS_RESPONSE,
    "warning_under_review": DisputeStatus.UNDER_REVIEW,
    "under_review": DisputeStatus.UNDER_REVIEW,
    "won": DisputeStatus.WON,
    # An inquiry closed (answered, refunded or conceded) without a chargeback: no money
    # left or came back, so not `won` (review h69c: a dispute.accept of an inquiry was
    # recorded won, and a ledger booked a reinstatement of money never withdrawn).
    "warning_closed": DisputeStatus.INQUIRY_CLOSED,
    "lost": DisputeStatus.LOST,
    "charge_refunded": DisputeStatus.LOST,
    # The card network's appeal of a decision: the tenant may answer again.
    "appeal_needs_response": DisputeStatus.NEEDS_RESPONSE,
    "appeal_under_review": DisputeStatus.UNDER_REVIEW,
    # Stopped before it became a chargeback (Visa's Rapid Dispute Resolution): the
    # cardholder was refunded from the merchant's balance, with no chargeback fee. The
    # money went back, as with charge_refunded: not a dispute the merchant won.
    "prevented": DisputeStatus.LOST,
}


def dispute_status(status: Any) -> DisputeStatus | None:
    """Ours for a Dispute status; None for one this version does not know."""
    return _DISPUTE_STATUS.get(status) if isinstance(status, str) else None


def _unknown(kind: str, value: Any) -> GatewayError:
    """A status this version does not know, in an answer to a request Stripe ran: never
    "refused", and not retried (Stripe replays the answer for the key, and each retry
    would count against the tenant's circuit breaker): parked until a version that
    knows it."""
    error = GatewayError(
        ErrorCode.PROVIDER_UNAVAILABLE,
        f"unknown Stripe {kind} status {str(value)[:64]!r}",
        provider="stripe",
        retryable=True,
    )
    error.unreadable_answer = True
    return error


def _id(value: Any) -> str | None:
    if isinstance(value, Mapping):
        return str(value["id"])
    return None if value is None else str(value)


def _money(obj: Mapping[str, Any]) -> Money:
    return Money(amount=int(obj["amount"]), currency=str(obj["currency"]))


def customer(obj: Mapping[str, Any]) -> CustomerResult:
    return CustomerResult(provider_customer_id=obj["id"], deleted=bool(obj.get("deleted")))


def customer_details(obj: Mapping[str, Any]) -> CustomerDetails:
    return CustomerDetails(
        provider_customer_id=obj["id"],
        deleted=bool(obj.get("deleted")),
        email=obj.get("email"),
        name=obj.get("name"),
        description=obj.get("description"),
        metadata={str(k): str(v) for k, v in (obj.get("metadata") or {}).items()},
    )


def payment_method(obj: Mapping[str, Any]) -> PaymentMethodResult:
    card = obj.get("card") or {}
    return PaymentMethodResult(
        provider_payment_method_id=obj["id"],
        provider_customer_id=_id(obj.get("customer")),
        brand=card.get("brand"),
        last4=card.get("last4"),
        exp_month=card.get("exp_month"),
        exp_year=card.get("exp_year"),
        fingerprint=card.get("fingerprint"),
    )


def _captured(pi: Mapping[str, Any], charge: Mapping[str, Any]) -> int:
    if pi.get("amount_received") is not None:
        return int(pi["amount_received"])
    if charge.get("status") == "failed":
        # Took nothing. (localstripe, which reports no amount_received, marks a declined
        # charge of an automatic-capture payment `captured`: read as taken, a payment
        # declined after its 3-D Secure step showed its whole amount captured.)
        return 0
    if charge.get("amount_captured") is not None:
        return int(charge["amount_captured"])
    return int(charge.get("amount", 0)) if charge.get("captured") else 0


# The API version from which a charge's ``amount_refunded`` counts refunds only.
REFUNDS_ONLY_SINCE = "2025-03-31"


def counts_refunds_only(api_version: str | None) -> bool:
    """Does an answer of ``api_version`` (its ``Stripe-Version`` header) count refunds
    alone in ``amount_refunded``? Stripe sends the header on every answer; none (as
    localstripe, which keeps the older rule) reads as an older version."""
    return api_version is not None and api_version[:10] >= REFUNDS_ONLY_SINCE


def _refunded(charge: Mapping[str, Any], captured: int, refunds_only: bool) -> int:
    """What went back to the cardholder. Before API version 2025-03-31.basil (and in
    localstripe) Stripe counts in the charge's ``amount_refunded`` what was authorised
    and never taken: the rest of a partial capture and a canceled hold. Counted as
    refunds, those left a partially captured payment nothing to refund (captured 10.00,
    "refunded" 20.00). Since basil (``refunds_only``: the SDK's own version is later
    still) it counts refunds only: taken less the release there, a refund of a partially
    captured charge read as none (review finding)."""
    reported = int(charge.get("amount_refunded") or 0)
    if charge.get("captured") is False:
        return 0  # nothing was taken: whatever it reports is the released hold
    if refunds_only:
        return min(reported, captured)
    released = max(0, int(charge.get("amount") or captured) - captured)
    return max(0, reported - released)


def payment(pi: Mapping[str, Any], *, api_version: str | None = None) -> PaymentResult:
    """``api_version``: the answer's ``Stripe-Version`` header (see counts_refunds_only)."""
    latest = pi.get("latest_charge")
    charge: Mapping[str, Any] = latest if isinstance(latest, Mapping) else {}
    error = pi.get("last_payment_error") or {}
    status = _PAYMENT_STATUS.get(str(pi["status"]))
    if status is None:
        raise _unknown("PaymentIntent", pi["status"])
    next_action = dict(pi["next_action"]) if pi.get("next_action") else None
    if next_action is not None and next_action.get("type") == "use_stripe_sdk":
        # Stripe's answer to a payment made without a return_url: only Stripe.js takes
        # this step, and only with the PaymentIntent's client secret
        # (stripe.handleNextAction); without it nobody could, and the payment stayed
        # requires_action for good (review finding). Sealed at rest as a redirect's URL,
        # which holds the same secret (tables/next_action.py).
        secret = pi.get("client_secret")
        if isinstance(secret, str) and secret:
            next_action["client_secret"] = secret
    captured = _captured(pi, charge)
    return PaymentResult(
        provider_payment_id=pi["id"],
        status=status,
        amount=_money(pi),
        amount_captured=captured,
        amount_refunded=_refunded(charge, captured, counts_refunds_only(api_version)),
        failure_code=error.get("decline_code") or error.get("code"),
        failure_message=error.get("message"),
        next_action=next_action,
        provider_charge_id=_id(latest),
        application_fee_amount=_int_or_none(pi.get("application_fee_amount")),
    )


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def refund(obj: Mapping[str, Any]) -> RefundResult:
    return RefundResult(
        provider_refund_id=obj["id"],
        provider_payment_id=_id(obj.get("payment_intent")) or "",
        status=refund_status(obj.get("status")),
        amount=_money(obj),
        failure_code=obj.get("failure_reason"),
    )


def dispute(obj: Mapping[str, Any]) -> DisputeResult:
    status = _DISPUTE_STATUS.get(str(obj["status"]))
    if status is None:
        raise _unknown("dispute", obj["status"])
    return DisputeResult(
        provider_dispute_id=obj["id"],
        status=status,
        amount=_money(obj),
        reason=obj.get("reason"),
        # (Epoch seconds; None once the dispute is closed, or never answerable: 0.)
        evidence_due_by=evidence_due_by(obj),
        fee=dispute_fee(obj),
    )


def dispute_fee(obj: Mapping[str, Any]) -> Money | None:
    """What a Dispute's balance transactions charged in fees (the withdrawal's dispute
    fee, less any a reinstatement gave back), in their currency (the account's, which
    may not be the dispute's). None with none (an inquiry: no money withdrawn), or any
    not as Stripe's reference gives them (an object with an integer ``fee``)."""
    txns = obj.get("balance_transactions")
    if not isinstance(txns, list) or not txns:
        return None
    total, currencies = 0, set()
    for txn in txns:
        fee = txn.get("fee") if isinstance(txn, Mapping) else None
        if not isinstance(fee, int) or isinstance(fee, bool):
            return None
        total += fee
        currencies.add(str(txn.get("currency", "")).upper())
    if len(currencies) != 1:
        return None
    currency = currencies.pop()
    minor = from_stripe_units(total, currency)
    if minor is None or minor < 0:
        return None
    try:
        return Money(amount=minor, currency=currency)
    except ValueError:  # (a currency paystream does not know: no fee told, not an error)
        return None


# Evidence deadlines read at most (exclusive): past it pydantic takes an int for
# milliseconds, not seconds.
_DUE_BY_MAX = 20_000_000_000


def evidence_due_by(obj: Mapping[str, Any]) -> int | None:
    """A Dispute's ``evidence_details.due_by`` (epoch seconds), None when it has none: 0
    when the cardholder's bank allows no response (Stripe's API reference), no deadline,
    not 1970-01-01 (review h69c); anything but a plain integer in a range a date can hold
    (an event's is read as sent, before any answer of Stripe's) is none either. Below
    2e10 (the year 2603): pydantic reads a larger integer as milliseconds, so the
    record's datetime would be another instant than the webhook's seconds (review h72e)."""
    details = obj.get("evidence_details")
    due_by = details.get("due_by") if isinstance(details, Mapping) else None
    if not isinstance(due_by, int) or isinstance(due_by, bool) or not 0 < due_by < _DUE_BY_MAX:
        return None
    return due_by


# ---- subscriptions -------------------------------------------------------------------

_SUBSCRIPTION_STATUS = {
    "trialing": SubscriptionStatus.TRIALING,
    "active": SubscriptionStatus.ACTIVE,
    "past_due": SubscriptionStatus.PAST_DUE,
    # Its invoice's retries ran out and Stripe left it unpaid (the account's setting):
    # still owed, not being paid, as past_due is for paystream.
    "unpaid": SubscriptionStatus.PAST_DUE,
    # A trial ended without a payment method (trial_settings' missing_payment_method:
    # pause): nothing is billed until it resumes. paystream always sets one, so only a
    # change made in Stripe's dashboard gets here: read as past_due (not being paid; it
    # may resume to active), never active.
    "paused": SubscriptionStatus.PAST_DUE,
    "canceled": SubscriptionStatus.CANCELED,
    # Its first invoice was never paid within 23 hours: Stripe ends it for good.
    "incomplete_expired": SubscriptionStatus.CANCELED,
    "incomplete": SubscriptionStatus.INCOMPLETE,
}


def subscription_status(status: Any) -> SubscriptionStatus | None:
    """Ours for a Subscription status; None for one this version does not know."""
    return _SUBSCRIPTION_STATUS.get(status) if isinstance(status, str) else None


_INVOICE_STATUS = {
    "paid": InvoiceStatus.PAID,
    "open": InvoiceStatus.OPEN,
    "void": InvoiceStatus.VOID,
    # Written off by the merchant's (or Stripe's) collection settings, yet still payable
    # at Stripe (and then paid): unpaid here, open, so that a later payment moves it on
    # (void is final here, and a paid void invoice would never read as paid).
    "uncollectible": InvoiceStatus.OPEN,
}
# Not yet finalized (a renewal's invoice waits about an hour): no payment asked for yet,
# not listed until it is.
_DRAFT = "draft"


def invoice_status(status: Any) -> InvoiceStatus | None:
    """Ours for an Invoice status; None for a draft (not listed) or one this version does
    not know."""
    return _INVOICE_STATUS.get(status) if isinstance(status, str) else None


def one_off_invoice_status(status: Any) -> InvoiceStatus | None:
    """Ours for a one-off Invoice's status: as a subscription's, but ``uncollectible`` is
    its own (invoice.mark_uncollectible; a one-off invoice's void is its own command, so
    one written off and then paid or voided moves on from it all the same)."""
    if status == "uncollectible":
        return InvoiceStatus.UNCOLLECTIBLE
    return invoice_status(status)


def _epoch(value: Any) -> datetime:
    return datetime.fromtimestamp(int(value), tz=UTC)


def invoice_payment_intent(obj: Mapping[str, Any]) -> str | None:
    """The PaymentIntent that paid (or last tried to pay) an invoice: its
    ``payment_intent`` before API version 2025-03-31.basil, since then the invoice's
    ``payments`` (expanded: the paid one, else the default, else the newest)."""
    direct = obj.get("payment_intent")
    if direct:
        return _id(direct)
    payments = obj.get("payments")
    data = payments.get("data") if isinstance(payments, Mapping) else None
    entries = [p for p in data or () if isinstance(p, Mapping)]
    chosen = next(
        (p for p in entries if p.get("status") == "paid"),
        next((p for p in entries if p.get("is_default")), entries[0] if entries else None),
    )
    payment = chosen.get("payment") if chosen is not None else None
    return _id(payment.get("payment_intent")) if isinstance(payment, Mapping) else None


def _line_period(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """The subscription's period an invoice bills: its subscription line's (the
    invoice's own period_start/end are its pending items' usage period, which for a
    subscription's first invoice is the instant it was made); a proration line's only
    where no other line has one (a proration invoice: from the change to the period's
    end)."""
    lines = obj.get("lines")
    data = lines.get("data") if isinstance(lines, Mapping) else None
    found = None
    for line in data or ():
        period = line.get("period") if isinstance(line, Mapping) else None
        if isinstance(period, Mapping) and period.get("start") and period.get("end"):
            if not _proration(line):
                return period
            found = found or period
    return found or {"start": obj.get("period_start"), "end": obj.get("period_end")}


def _proration(line: Mapping[str, Any]) -> bool:
    """Is this invoice line (or invoice item) a proration? ``proration`` on it before
    API version 2025-03-31.basil; since, on its ``parent``'s details."""
    if line.get("proration") is True:
        return True
    parent = line.get("parent")
    if not isinstance(parent, Mapping):
        return False
    for details in ("invoice_item_details", "subscription_item_details"):
        found = parent.get(details)
        if isinstance(found, Mapping) and found.get("proration") is True:
            return True
    return False


def _line_subscription(line: Mapping[str, Any]) -> str | None:
    """The subscription an invoice item is for (``subscription`` before basil, its
    ``parent.subscription_details.subscription`` since)."""
    found = line.get("subscription")
    parent = line.get("parent")
    if found is None and isinstance(parent, Mapping):
        details = parent.get("subscription_details")
        found = details.get("subscription") if isinstance(details, Mapping) else None
    return _id(found)


def proration_line(
    line: Mapping[str, Any], subscription_id: str | None = None
) -> ProrationLineResult | None:
    """A proration invoice line or pending invoice item as paystream's; None for any
    other line, or (``subscription_id`` given) an item of another subscription."""
    if not _proration(line):
        return None
    if subscription_id is not None and _line_subscription(line) != subscription_id:
        return None
    period = line.get("period")
    if not isinstance(period, Mapping) or not period.get("start") or not period.get("end"):
        return None
    return ProrationLineResult(
        description=str(line.get("description") or ""),
        amount=int(line.get("amount") or 0),
        period_start=_epoch(period["start"]),
        period_end=_epoch(period["end"]),
    )


def _proration_lines(obj: Mapping[str, Any]) -> tuple[ProrationLineResult, ...]:
    lines = obj.get("lines")
    data = lines.get("data") if isinstance(lines, Mapping) else None
    return tuple(
        line
        for raw in data or ()
        if isinstance(raw, Mapping) and (line := proration_line(raw)) is not None
    )


def invoice(
    obj: Mapping[str, Any], payment_intent: Mapping[str, Any] | None = None
) -> InvoiceResult | None:
    """An Invoice, None for a draft; ``payment_intent``: its PaymentIntent as read (for
    an open one, whose last payment error is the decline)."""
    raw = obj.get("status")
    if raw == _DRAFT:
        return None
    status = _INVOICE_STATUS.get(raw) if isinstance(raw, str) else None
    if status is None:
        raise _unknown("invoice", raw)
    error = (payment_intent or {}).get("last_payment_error") or {}
    if not error and (payment_intent or {}).get("status") == "requires_action":
        # (Stripe: incomplete when the payment "requires action, like customer
        # authentication": no decline, the customer's 3-D Secure step awaited.)
        error = {
            "code": "authentication_required",
            "message": "the payment awaits the customer's authentication (3-D Secure)",
        }
    if status is not InvoiceStatus.OPEN:
        error = {}
    period = _line_period(obj)
    amount = obj.get("amount_paid") if status is InvoiceStatus.PAID else obj.get("amount_due")
    return InvoiceResult(
        provider_invoice_id=str(obj["id"]),
        status=status,
        amount=Money(amount=int(amount or 0), currency=str(obj["currency"])),
        period_start=_epoch(period["start"]),
        period_end=_epoch(period["end"]),
        provider_payment_id=invoice_payment_intent(obj),
        failure_code=error.get("decline_code") or error.get("code"),
        failure_message=error.get("message"),
        proration_lines=_proration_lines(obj),
        **_invoice_tax(obj),
    )


def one_off_invoice(obj: Mapping[str, Any], *, as_made: bool = False) -> InvoiceResult:
    """A one-off Invoice (paystream's invoice.*): a draft too, with no period; a sent
    one's ``due_date`` once finalized. (A decline is the pay call's card error, not
    read here.) ``as_made``: the create's answer, the draft as it was made whatever has
    become of it since: read back after its lines (a GET: no key), a create re-driven
    after its invoice was finalized and paid (a crash lost both answers) reported it
    paid, and the re-driven finalize and pay were refused instead of answered from
    their keys."""
    raw = obj.get("status")
    status = InvoiceStatus.DRAFT if raw == _DRAFT or as_made else one_off_invoice_status(raw)
    if status is None:
        raise _unknown("invoice", raw)
    amount = obj.get("amount_paid") if status is InvoiceStatus.PAID else obj.get("amount_due")
    due = obj.get("due_date")
    return InvoiceResult(
        provider_invoice_id=str(obj["id"]),
        status=status,
        amount=Money(amount=int(amount or 0), currency=str(obj["currency"])),
        due_date=_epoch(due) if due and not as_made else None,
        provider_payment_id=None if as_made else invoice_payment_intent(obj),
        **_invoice_tax(obj),
    )


def invoice_lines(lines: Iterable[Mapping[str, Any]]) -> tuple[InvoiceLine, ...]:
    """A one-off invoice's lines (Stripe's InvoiceLineItems, in Stripe's order) as
    paystream's: the unit amount as sent (``unit_amount_decimal``: its ``pricing`` since
    API version 2025-03-31.basil, its ``price`` before; neither in localstripe's: the
    line's ``amount`` over its ``quantity``), the quantity, the description ("" where it
    has none). A line made elsewhere is a line too. One whose unit is not a whole minor
    unit reads as one unit of its ``amount``: the total holds (finalize's check of the
    draft's items still tells it apart: see the gateway's ``_item_line``)."""
    return tuple(_invoice_line(line) for line in lines)


def _invoice_line(line: Mapping[str, Any]) -> InvoiceLine:
    amount = int(line.get("amount") or 0)
    quantity = int(line.get("quantity") or 1)
    unit: Decimal | None = None
    for holder in (line.get("pricing"), line.get("price")):
        raw = holder.get("unit_amount_decimal") if isinstance(holder, Mapping) else None
        if raw is not None:
            try:
                unit = Decimal(str(raw))
            except InvalidOperation:
                unit = None
            break
    if unit is None and quantity and amount % quantity == 0:
        unit = Decimal(amount // quantity)
    if unit is None or unit != unit.to_integral_value():
        unit, quantity = Decimal(amount), 1
    return InvoiceLine(
        description=str(line.get("description") or ""), unit_amount=int(unit), quantity=quantity
    )


def _invoice_tax(obj: Mapping[str, Any]) -> dict[str, Any]:
    """An invoice's subtotal, tax and total, when TaxRates taxed it: its tax amounts
    (``total_tax_amounts`` before API version 2025-03-31.basil, ``total_taxes`` since),
    summed, and its ``subtotal`` and ``total`` as Stripe reports them (its ``total``, not
    amount_paid / amount_due, which a credit balance lowers); nothing when it lists no
    tax."""
    listed = obj.get("total_taxes")
    if not isinstance(listed, list) or not listed:
        listed = obj.get("total_tax_amounts")
    if not isinstance(listed, list) or not listed:
        return {}
    tax = sum(int(t.get("amount") or 0) for t in listed if isinstance(t, Mapping))
    total = obj.get("total")
    return {
        "subtotal": int(obj.get("subtotal") or 0),
        "tax": tax,
        "total": int(total) if isinstance(total, int) and not isinstance(total, bool) else None,
    }


def tax_rate(obj: Mapping[str, Any]) -> TaxRateResult:
    # (form-encoded by an update, a fake may hand the flag back as text)
    return TaxRateResult(
        provider_tax_rate_id=str(obj["id"]), active=obj.get("active") not in (False, "false")
    )


def _item(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    items = obj.get("items")
    data = items.get("data") if isinstance(items, Mapping) else None
    first = data[0] if data else None
    return first if isinstance(first, Mapping) else {}


def _pricing(obj: Mapping[str, Any], item: Mapping[str, Any]) -> tuple[Money, str, int]:
    """(amount, interval, interval count) of the subscription's one item: its Plan (as
    paystream creates them), or a Price."""
    plan = item.get("plan") or obj.get("plan")
    if isinstance(plan, Mapping) and plan.get("interval"):
        return (
            Money(amount=int(plan["amount"]), currency=str(plan["currency"])),
            str(plan["interval"]),
            int(plan.get("interval_count") or 1),
        )
    price = item.get("price")
    recurring = price.get("recurring") if isinstance(price, Mapping) else None
    if not isinstance(price, Mapping) or not isinstance(recurring, Mapping):
        raise _unknown("subscription item", "without a recurring price")
    return (
        Money(amount=int(price["unit_amount"]), currency=str(price["currency"])),
        str(recurring["interval"]),
        int(recurring.get("interval_count") or 1),
    )


def _period(obj: Mapping[str, Any], item: Mapping[str, Any], end: str) -> Any:
    """The subscription's current period's ``start`` or ``end`` (``end``): on the
    subscription before API version 2025-03-31.basil, on its item since."""
    name = f"current_period_{end}"
    return obj.get(name) or item.get(name)


def subscription_period_end(obj: Mapping[str, Any]) -> int | None:
    """A Subscription's current period end (epoch seconds), as subscription() reads it;
    None when it has none readable."""
    end = _period(obj, _item(obj), "end")
    return end if isinstance(end, int) and not isinstance(end, bool) else None


def subscription_amount(obj: Mapping[str, Any]) -> int | None:
    """A Subscription's price (its one item's Plan ``amount``, or its recurring Price's
    ``unit_amount``), as subscription() reads it; None when it has none readable."""
    item = _item(obj)
    plan = item.get("plan") or obj.get("plan")
    if isinstance(plan, Mapping) and plan.get("interval"):
        amount = plan.get("amount")
    else:
        price = item.get("price")
        price = price if isinstance(price, Mapping) else {}
        amount = price.get("unit_amount") if isinstance(price.get("recurring"), Mapping) else None
    return amount if isinstance(amount, int) and not isinstance(amount, bool) else None


def subscription_method(obj: Mapping[str, Any]) -> str | None:
    """The PaymentMethod a Subscription bills (its ``default_payment_method``: an id, or
    the PaymentMethod expanded), as subscription() reads it; None when it names none
    (the customer's default is billed) or none readable."""
    method = obj.get("default_payment_method")
    if isinstance(method, Mapping):
        method = method.get("id")
    return method if isinstance(method, str) and method else None


def paused_collection(
    obj: Mapping[str, Any], status: SubscriptionStatus | None
) -> Mapping[str, Any] | None:
    """A Subscription's ``pause_collection`` when it makes it paystream's paused (for
    ``status``, ours for its Stripe status), else None. Its collection paused
    (subscription.pause, or Stripe's dashboard): Stripe keeps it active, billing nothing
    while ``pause_collection`` is set; a canceled one stays canceled. A read
    (subscription()) and a webhook's notice both map it so."""
    paused = obj.get("pause_collection")
    if isinstance(paused, Mapping) and status is not SubscriptionStatus.CANCELED:
        return paused
    return None


def subscription(
    obj: Mapping[str, Any], invoices: tuple[InvoiceResult, ...] = ()
) -> SubscriptionResult:
    """A Subscription (its period on the subscription before API version
    2025-03-31.basil, on its item since), with its invoices as read (newest first)."""
    status = subscription_status(obj.get("status"))
    if status is None:
        raise _unknown("subscription", obj.get("status"))
    item = _item(obj)
    amount, interval, count = _pricing(obj, item)
    start, end = _period(obj, item, "start"), _period(obj, item, "end")
    ended = obj.get("ended_at") or obj.get("canceled_at")
    trial_end = obj.get("trial_end")
    paused = paused_collection(obj, status)
    resumes_at = None
    if paused is not None:
        status = SubscriptionStatus.PAUSED
        resumes_at = _epoch(paused["resumes_at"]) if paused.get("resumes_at") else None
    return SubscriptionResult(
        provider_subscription_id=str(obj["id"]),
        status=status,
        amount=amount,
        interval=interval,
        interval_count=count,
        current_period_start=_epoch(start),
        current_period_end=_epoch(end),
        trial_end=_epoch(trial_end) if trial_end else None,
        cancel_at_period_end=bool(obj.get("cancel_at_period_end")),
        # (Stripe sets canceled_at when a cancel at period end is asked for too: only
        # an ended subscription's is when it was canceled.)
        canceled_at=_epoch(ended) if status is SubscriptionStatus.CANCELED and ended else None,
        invoices=invoices,
        # (an id, or the PaymentMethod where the request expanded it)
        provider_payment_method_id=_id(obj.get("default_payment_method")),
        pause_resumes_at=resumes_at,
    )


# ---- payouts and balances -----------------------------------------------------------

# Stripe's five payout statuses are paystream's, by name.
_PAYOUT_STATUS = {s.value: s for s in PayoutStatus}


def payout_status(status: Any) -> PayoutStatus | None:
    """Ours for a Payout status; None for one this version does not know."""
    return _PAYOUT_STATUS.get(status) if isinstance(status, str) else None


def payout(obj: Mapping[str, Any]) -> PayoutResult:
    """A Payout: its status (one this version does not know is never read as paid or
    failed: parked, as any unknown status), its arrival date (epoch seconds: expected,
    or when it arrived), and a failed one's code and message as Stripe gives them
    (account_closed, no_account, insufficient_funds, ...)."""
    status = payout_status(obj.get("status"))
    if status is None:
        raise _unknown("payout", obj.get("status"))
    arrival = obj.get("arrival_date")
    if not isinstance(arrival, int) or isinstance(arrival, bool):
        raise _unknown("payout arrival date", arrival)
    failed = status is PayoutStatus.FAILED
    return PayoutResult(
        provider_payout_id=str(obj["id"]),
        status=status,
        amount=_money(obj),
        method=str(obj.get("method") or "standard"),
        arrival_date=_epoch(arrival),
        failure_code=obj.get("failure_code") if failed else None,
        failure_message=obj.get("failure_message") if failed else None,
    )


def _per_currency(entries: Any, kind: str) -> dict[str, int]:
    """A Balance's ``available`` or ``pending``: one entry per currency (summed, should
    Stripe list one twice), currency codes upper-cased, amounts in paystream's minor
    units (Stripe's hundredths of UGX in whole shillings: from_stripe_units; read as
    they stood, a UGX balance was a hundred times the money, review h74m)."""
    if not isinstance(entries, list):
        raise _unknown("balance", f"{kind} that is not a list")
    out: dict[str, int] = {}
    for entry in entries:
        amount = entry.get("amount") if isinstance(entry, Mapping) else None
        currency = entry.get("currency") if isinstance(entry, Mapping) else None
        if not isinstance(amount, int) or isinstance(amount, bool) or not isinstance(currency, str):
            raise _unknown("balance", f"{kind} entry without an amount and a currency")
        code = currency.upper()
        minor = from_stripe_units(amount, code)
        if minor is None:
            raise _unknown("balance", f"{kind} {code} amount {amount} not in whole units")
        out[code] = out.get(code, 0) + minor
    return out


def balance(obj: Mapping[str, Any]) -> BalanceResult:
    """The Balance: ``available`` and ``pending`` (arrays, one entry per currency) as one
    entry per currency, sorted by code; a currency in one of them only has 0 in the
    other. (``instant_available``, ``connect_reserved`` and ``issuing`` are not read.)"""
    available = _per_currency(obj.get("available"), "available")
    pending = _per_currency(obj.get("pending"), "pending")
    return BalanceResult(
        balances=tuple(
            BalanceAmount(
                currency=code, available=available.get(code, 0), pending=pending.get(code, 0)
            )
            for code in sorted(set(available) | set(pending))
        )
    )


def connected_account(obj: Mapping[str, Any]) -> ConnectedAccountResult:
    """An Account (https://docs.stripe.com/api/accounts/object): what it may do, and the
    names of its requirements due now (``requirements.currently_due``; never values)."""
    requirements = obj.get("requirements")
    reqs: Mapping[str, Any] = requirements if isinstance(requirements, Mapping) else {}
    due = reqs.get("currently_due")
    reason = reqs.get("disabled_reason")
    return ConnectedAccountResult(
        provider_account_id=str(obj["id"]),
        type=str(obj.get("type") or "express"),
        country=str(obj.get("country") or ""),
        charges_enabled=bool(obj.get("charges_enabled")),
        payouts_enabled=bool(obj.get("payouts_enabled")),
        details_submitted=bool(obj.get("details_submitted")),
        currently_due=tuple(str(d) for d in due) if isinstance(due, list) else (),
        disabled_reason=str(reason) if isinstance(reason, str) and reason else None,
    )


def account_link(obj: Mapping[str, Any]) -> AccountLinkResult:
    """An AccountLink: its url and when it expires (epoch seconds)."""
    expires = obj.get("expires_at")
    if not isinstance(expires, int) or isinstance(expires, bool):
        raise _unknown("account link expiry", expires)
    return AccountLinkResult(url=str(obj["url"]), expires_at=_epoch(expires))


def latest_charge_id(pi: Mapping[str, Any]) -> str | None:
    """A PaymentIntent's latest charge's id (``latest_charge``: an id, or the Charge
    where expanded)."""
    charge = pi.get("latest_charge")
    if isinstance(charge, Mapping):
        charge = charge.get("id")
    return charge if isinstance(charge, str) and charge else None


def transfer(obj: Mapping[str, Any]) -> TransferResult:
    """A Transfer (https://docs.stripe.com/api/transfers/object): its amount, what was
    reversed of it, its destination account and source charge."""
    destination = obj.get("destination")
    if isinstance(destination, Mapping):
        destination = destination.get("id")
    source = obj.get("source_transaction")
    if isinstance(source, Mapping):
        source = source.get("id")
    group = obj.get("transfer_group")
    return TransferResult(
        provider_transfer_id=str(obj["id"]),
        amount=_money(obj),
        amount_reversed=int(obj.get("amount_reversed") or 0),
        destination_account=str(destination or ""),
        source_transaction=str(source) if source else None,
        transfer_group=str(group) if group else None,
    )

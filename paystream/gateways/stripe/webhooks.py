"""Stripe webhook events: their signature checked, and read for the payment (or refund,
or dispute) they concern.

A webhook is a hint, not a record to apply: paystream reads the payment back from
Stripe (``payment.refresh``; a refund, ``refund.refresh``) rather than trusting the
event's copy of it, as Stripe advises (events can arrive late, twice and out of order).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import replace
from enum import StrEnum
from typing import Any, TypeVar

import stripe

from paystream.gateways.base import (
    SubscriptionStatus,
    read_connected_account_ref,
    read_invoice_ref,
    read_payment_ref,
    read_payout_ref,
    read_refund_ref,
    read_subscription_ref,
    read_transfer_ref,
)
from paystream.gateways.stripe.mapping import (
    dispute_status,
    evidence_due_by,
    invoice_status,
    one_off_invoice_status,
    paused_collection,
    payment_status,
    payout_status,
    refund_status,
    subscription_amount,
    subscription_method,
    subscription_period_end,
    subscription_status,
)
from paystream.gateways.webhook_notices import (
    BadWebhook,
    ConnectedAccountNotice,
    DisputeNotice,
    InvoiceNotice,
    PaymentNotice,
    PayoutNotice,
    RefundNotice,
    SubscriptionNotice,
    TransferNotice,
    disputed_payment,
    plain_id,
    signed_event,
)

__all__ = [
    "BODY_READ_SECONDS",
    "EVERY_FOLLOWED_EVENT",
    "FOLLOWED_ACCOUNT_EVENTS",
    "FOLLOWED_DISPUTE_EVENTS",
    "FOLLOWED_EVENTS",
    "FOLLOWED_INVOICE_EVENTS",
    "FOLLOWED_PAYOUT_EVENTS",
    "FOLLOWED_REFUND_EVENTS",
    "FOLLOWED_SUBSCRIPTION_EVENTS",
    "FOLLOWED_TRANSFER_EVENTS",
    "MAX_BODY_BYTES",
    "SIGNATURE_HEADER",
    "TOLERANCE_SECONDS",
    "BadWebhook",
    "ConnectedAccountNotice",
    "DisputeNotice",
    "InvoiceNotice",
    "PaymentNotice",
    "PayoutNotice",
    "RefundNotice",
    "SubscriptionNotice",
    "connected_account_notice",
    "dispute_notice",
    "disputed_payment_notice",
    "invoice_notice",
    "payment_notice",
    "payout_notice",
    "refund_notice",
    "subscription_notice",
    "transfer_notice",
    "verified_event",
]

SIGNATURE_HEADER = "Stripe-Signature"
# Stripe's events are a few KB; a body far larger is not one.
MAX_BODY_BYTES = 256 * 1024
# A provider sends its event whole at once; a body trickled in only holds a handler.
BODY_READ_SECONDS = 10.0
# How old a signed timestamp may be (Stripe's libraries' default): an event captured
# once cannot be sent again days later.
TOLERANCE_SECONDS = 300
# PaymentIntent events that can bring news paystream has not read: a customer's 3-D
# Secure step, a bank debit settling, an authorisation Stripe let lapse, a cancel or a
# capture made in Stripe's dashboard.
FOLLOWED_EVENTS = frozenset(
    {
        "payment_intent.succeeded",
        "payment_intent.payment_failed",
        "payment_intent.canceled",
        "payment_intent.amount_capturable_updated",
        "payment_intent.processing",
        "payment_intent.requires_action",
    }
)


# Refund events that can bring news: a refund failed after it succeeded (the card closed),
# or one left pending settled. (`charge.refund.updated` is the older name of the same.)
FOLLOWED_REFUND_EVENTS = frozenset({"refund.failed", "refund.updated", "charge.refund.updated"})


# Dispute events: a cardholder's dispute opens days after the charge, and moves on (its
# evidence submitted, the network's decision, the funds withdrawn or reinstated) with no
# request of paystream's. Their object is the Dispute, which carries no metadata of
# paystream's: its PaymentIntent, read back from Stripe, names the payment.
FOLLOWED_DISPUTE_EVENTS = frozenset(
    {
        "charge.dispute.created",
        "charge.dispute.updated",
        "charge.dispute.closed",
        "charge.dispute.funds_withdrawn",
        "charge.dispute.funds_reinstated",
    }
)


# Subscription events that bring news paystream has not read: a renewal paid or declined
# (Stripe bills on its own clock, with no request of paystream's), a status moved (past
# due, unpaid, a cancel at period end taken effect), a cancel made in the dashboard.
FOLLOWED_SUBSCRIPTION_EVENTS = frozenset(
    {
        "invoice.paid",
        "invoice.payment_failed",
        "customer.subscription.updated",
        "customer.subscription.deleted",
    }
)
# Payout events: a payout moves on at the bank (in transit, paid on arrival, failed:
# returned, even days after it was paid) with no request of paystream's. (Not
# `payout.created`: paystream made it, and read it then.)
FOLLOWED_PAYOUT_EVENTS = frozenset(
    {"payout.paid", "payout.failed", "payout.canceled", "payout.updated"}
)
# A one-off invoice's events (paystream's invoice.*, its metadata naming the invoice):
# paid by its customer on Stripe's page (a sent one), a payment of it failed, voided,
# written off or finalized in Stripe's dashboard. (Not `invoice.created`: paystream made
# it; not `invoice.updated`: its status moves are these. A subscription's invoices'
# events are its subscription's: FOLLOWED_SUBSCRIPTION_EVENTS.)
FOLLOWED_INVOICE_EVENTS = frozenset(
    {
        "invoice.paid",
        "invoice.payment_failed",
        "invoice.voided",
        "invoice.marked_uncollectible",
        "invoice.finalized",
    }
)
# A connected account's event on the platform's Connect endpoint: its holder onboarded,
# a requirement came due or was met, Stripe enabled, restricted or rejected it.
FOLLOWED_ACCOUNT_EVENTS = frozenset({"account.updated"})
# A transfer's: reversed (in the Dashboard, or by Stripe recovering a connected account's
# negative balance) or its metadata or description edited, with no request of
# paystream's. (Not `transfer.created`: paystream made it, and read it then.)
FOLLOWED_TRANSFER_EVENTS = frozenset({"transfer.reversed", "transfer.updated"})
# Every event followed (the generated API docs list these: one source, tested).
EVERY_FOLLOWED_EVENT: frozenset[str] = (
    FOLLOWED_EVENTS
    | FOLLOWED_REFUND_EVENTS
    | FOLLOWED_DISPUTE_EVENTS
    | FOLLOWED_SUBSCRIPTION_EVENTS
    | FOLLOWED_PAYOUT_EVENTS
    | FOLLOWED_ACCOUNT_EVENTS
    | FOLLOWED_TRANSFER_EVENTS
    | FOLLOWED_INVOICE_EVENTS
)
_SUBSCRIPTION_OBJECT = {
    "invoice.paid": "invoice",
    "invoice.payment_failed": "invoice",
    "customer.subscription.updated": "subscription",
    "customer.subscription.deleted": "subscription",
}


def verified_event(payload: bytes, signature: str | None, secret: str) -> dict[str, Any]:
    """The event, if ``signature`` (the Stripe-Signature header) signs ``payload`` with
    ``secret`` within the tolerance; BadWebhook otherwise (its message names no secret)."""
    if signature is not None and not signature.isascii():
        # (stripe compares it with hmac.compare_digest, which takes no other str)
        raise BadWebhook("signature not verified: the header is not ASCII")
    try:
        stripe.WebhookSignature.verify_header(payload, signature, secret, TOLERANCE_SECONDS)
    except stripe.SignatureVerificationError as exc:
        raise BadWebhook(f"signature not verified: {exc.user_message or exc}") from None
    except UnicodeDecodeError:
        raise BadWebhook("the body is not UTF-8") from None
    if _signed_at(signature) > time.time() + TOLERANCE_SECONDS:
        # Stripe's check bounds a signature's age only: one dated ahead would be
        # replayable until that date (a signing clock years fast).
        raise BadWebhook("signature not verified: its timestamp is in the future")
    return signed_event(payload)


def _signed_at(signature: str | None) -> int:
    """The time a Stripe-Signature header the SDK has verified was signed at, read as the
    SDK reads it (the first item named exactly ``t``, through ``int``: "+1", "1_000"
    and all), since that is the time it signed (review finding: read otherwise, an
    edited header passed as signed long ago). One it cannot read counts as the future."""
    items = [item.split("=", 2) for item in (signature or "").split(",")]
    try:
        return int(next(item[1] for item in items if item[0] == "t"))
    except (StopIteration, IndexError, ValueError):
        return sys.maxsize


def payment_notice(event: dict[str, Any]) -> PaymentNotice | None:
    """What a followed PaymentIntent event says of paystream's payment; None for another
    event, or a PaymentIntent paystream did not make (created elsewhere on the account)."""
    return _notice(
        PaymentNotice, event, FOLLOWED_EVENTS, "payment_intent", read_payment_ref, payment_status
    )


def refund_notice(event: dict[str, Any]) -> RefundNotice | None:
    """What a followed refund event says of paystream's refund; None for another event,
    or a refund paystream did not make (or made before it named its refunds)."""
    return _notice(
        RefundNotice, event, FOLLOWED_REFUND_EVENTS, "refund", read_refund_ref, refund_status
    )


def payout_notice(event: dict[str, Any]) -> PayoutNotice | None:
    """What a followed payout event says of paystream's payout; None for another event,
    or a payout paystream did not make (an automatic one, one made in the dashboard)."""
    return _notice(
        PayoutNotice, event, FOLLOWED_PAYOUT_EVENTS, "payout", read_payout_ref, payout_status
    )


def invoice_notice(event: dict[str, Any]) -> InvoiceNotice | None:
    """What a followed invoice event says of paystream's one-off invoice; None for
    another event, or an invoice paystream did not make (one made in the dashboard, or a
    subscription's: named by its subscription, subscription_notice)."""
    found = _notice(
        InvoiceNotice,
        event,
        FOLLOWED_INVOICE_EVENTS,
        "invoice",
        read_invoice_ref,
        one_off_invoice_status,
    )
    if found is None:
        return None
    obj = event["data"]["object"]
    parent = obj.get("parent")
    if obj.get("subscription") or (isinstance(parent, dict) and parent.get("subscription_details")):
        return None  # (a subscription's: its metadata is never paystream_invoice's)
    return found


_Notice = TypeVar("_Notice", PaymentNotice, RefundNotice, PayoutNotice, InvoiceNotice)


def _notice(
    notice: type[_Notice],
    event: dict[str, Any],
    followed: frozenset[str],
    kind: str,
    read_ref: Callable[[Any], tuple[str, str] | None],
    status_of: Callable[[Any], StrEnum | None],
) -> _Notice | None:
    """The ``notice`` of a followed event about a ``kind`` object naming paystream's in
    its metadata (its tenant and id, the provider's id, ``status_of`` its status: None
    for one this version does not know, the account, when it was made); None otherwise."""
    found = _followed(event, followed, kind, read_ref)
    if found is None:
        return None
    event_id, event_type, obj, ref, account = found
    status = status_of(obj.get("status"))
    return notice(
        event_id,
        event_type,
        ref[0],
        ref[1],
        obj["id"],
        None if status is None else status.value,
        account,
        _created(event),
    )


def transfer_notice(event: dict[str, Any]) -> TransferNotice | None:
    """What a followed transfer event says of paystream's transfer; None for another
    event, or a transfer paystream did not make (or made before it named its transfers:
    read back by ``transfer.refresh``)."""
    found = _followed(event, FOLLOWED_TRANSFER_EVENTS, "transfer", read_transfer_ref)
    if found is None:
        return None
    event_id, event_type, obj, ref, account = found
    reversed_ = obj.get("amount_reversed")
    return TransferNotice(
        event_id,
        event_type,
        ref[0],
        ref[1],
        obj["id"],
        reversed_ if isinstance(reversed_, int) and not isinstance(reversed_, bool) else None,
        account,
        _created(event),
    )


def connected_account_notice(event: dict[str, Any]) -> ConnectedAccountNotice | None:
    """What an ``account.updated`` says of paystream's connected account; None for
    another event, or an account paystream did not make. The event a Connect endpoint
    hears names the account it happened on: the account itself is the platform's own
    business (no other account), any other is not."""
    found = _followed(event, FOLLOWED_ACCOUNT_EVENTS, "account", read_connected_account_ref)
    if found is None:
        return None
    event_id, event_type, obj, ref, account = found
    flags = tuple(obj.get(k) for k in ("charges_enabled", "payouts_enabled", "details_submitted"))
    requirements = obj.get("requirements")
    reqs: dict[str, Any] = requirements if isinstance(requirements, dict) else {}
    due = reqs.get("currently_due")
    reason = reqs.get("disabled_reason")
    return ConnectedAccountNotice(
        event_id,
        event_type,
        ref[0],
        ref[1],
        obj["id"],
        (bool(flags[0]), bool(flags[1]), bool(flags[2]))
        if all(isinstance(f, bool) for f in flags)
        else None,
        tuple(str(d) for d in due) if isinstance(due, list) else None,
        reason if isinstance(reason, str) and reason else None,
        None if account == obj["id"] else account,
        _created(event),
    )


def subscription_notice(event: dict[str, Any]) -> SubscriptionNotice | None:
    """What a followed subscription or invoice event says of paystream's subscription;
    None for another event, or a subscription paystream did not make. An invoice names
    its subscription, and carries a copy of its metadata as it was when the invoice was
    finalized: ``parent.subscription_details`` since API version 2025-03-31.basil,
    ``subscription_details`` (and ``subscription``) before."""
    event_type = event.get("type")
    kind = _SUBSCRIPTION_OBJECT.get(event_type) if isinstance(event_type, str) else None
    if kind is None:
        return None
    found = _event_object(event, FOLLOWED_SUBSCRIPTION_EVENTS, kind)
    if found is None:
        return None
    event_id, event_type, obj, account = found
    if kind == "subscription":
        metadata, provider_id = obj.get("metadata"), obj.get("id")
    else:
        parent = obj.get("parent")
        details = parent.get("subscription_details") if isinstance(parent, dict) else None
        if not isinstance(details, dict):
            details = obj.get("subscription_details")
        details = details if isinstance(details, dict) else {}
        metadata = details.get("metadata")
        provider_id = details.get("subscription") or obj.get("subscription")
        if isinstance(provider_id, dict):
            provider_id = provider_id.get("id")
    ref = read_subscription_ref(metadata)
    if ref is None or not plain_id(provider_id):
        return None
    notice = SubscriptionNotice(
        event_id, event_type, ref[0], ref[1], provider_id, account, _created(event)
    )
    # What the event says, for the endpoint to drop one at what paystream holds (the echo
    # of its own create's first invoice, of its own cancel at period end or update).
    if kind == "subscription":
        status = subscription_status(obj.get("status"))
        if paused_collection(obj, status) is not None:
            # (active at Stripe, its collection paused: paystream's paused, as a read
            # has it; one paused in the dashboard is read, not dropped as an echo)
            status = SubscriptionStatus.PAUSED
        cancel = obj.get("cancel_at_period_end")
        return replace(
            notice,
            status=None if status is None else status.value,
            cancel_at_period_end=cancel if isinstance(cancel, bool) else None,
            current_period_end=subscription_period_end(obj),
            amount=subscription_amount(obj),
            provider_payment_method_id=subscription_method(obj),
        )
    invoice = obj.get("id")
    if not plain_id(invoice):
        return notice
    held = invoice_status(obj.get("status"))
    return replace(
        notice,
        provider_invoice_id=invoice,
        invoice_status=None if held is None else held.value,
    )


def dispute_notice(event: dict[str, Any]) -> DisputeNotice | None:
    """What a followed dispute event says; None for another event, or a dispute of a
    charge made without a PaymentIntent (not paystream's: it charges by PaymentIntent)."""
    found = _event_object(event, FOLLOWED_DISPUTE_EVENTS, "dispute")
    if found is None:
        return None
    event_id, event_type, obj, account = found
    payment_intent = obj.get("payment_intent")
    if not plain_id(obj.get("id")) or not plain_id(payment_intent):
        return None
    status = dispute_status(obj.get("status"))
    return DisputeNotice(
        event_id,
        event_type,
        obj["id"],
        payment_intent,
        None if status is None else status.value,
        account,
        _created(event),
        evidence_due_by(obj),
    )


def disputed_payment_notice(
    notice: DisputeNotice, payment_intent: dict[str, Any]
) -> PaymentNotice | None:
    """The dispute event as one about paystream's payment, named by its PaymentIntent
    (as Stripe answers it now); None for a PaymentIntent paystream did not make."""
    ref = read_payment_ref(payment_intent.get("metadata"))
    if ref is None or payment_intent.get("id") != notice.provider_payment_id:
        return None
    return disputed_payment(notice, ref, payment_status(payment_intent.get("status")))


def _created(event: dict[str, Any]) -> int | None:
    created = event.get("created")
    return created if isinstance(created, int) and not isinstance(created, bool) else None


def _followed(
    event: dict[str, Any],
    followed: frozenset[str],
    kind: str,
    read_ref: Callable[[Any], tuple[str, str] | None],
) -> tuple[str, str, dict[str, Any], tuple[str, str], str | None] | None:
    """(event id, type, object, paystream's reference, account) of a followed event
    about a ``kind`` object naming paystream's in its metadata; None otherwise."""
    found = _event_object(event, followed, kind)
    if found is None:
        return None
    event_id, event_type, obj, account = found
    ref = read_ref(obj.get("metadata"))
    own_id = obj.get("id")
    if ref is None or not plain_id(own_id):
        return None
    return event_id, event_type, obj, ref, account


def _event_object(
    event: dict[str, Any], followed: frozenset[str], kind: str
) -> tuple[str, str, dict[str, Any], str | None] | None:
    """(event id, type, object, account) of a followed event about a ``kind`` object;
    None otherwise."""
    event_type = event.get("type")
    event_id = event.get("id")
    if not isinstance(event_type, str) or event_type not in followed:
        return None
    if not plain_id(event_id):
        return None
    data = event.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(obj, dict) or obj.get("object") != kind:
        return None
    account = event.get("account")
    if not (isinstance(account, str) and account):
        return event_id, event_type, obj, None
    if not plain_id(account):
        return None  # (not read as no account: a Connect event is checked against it)
    return event_id, event_type, obj, account

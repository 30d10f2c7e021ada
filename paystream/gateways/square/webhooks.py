"""Square webhook events: their signature checked, and read for the payment (or refund,
or dispute) they concern.

Square signs each notification with the subscription's signature key: the
``x-square-hmacsha256-signature`` header is base64(HMAC-SHA256(key, notification URL +
raw body)), the URL being the one the subscription was configured with in Square's
Developer Console, as Square posts to it (not the URL the worker sees behind a proxy:
web/webhooks.py takes it from configuration). Checked with the SDK's own helper
(``square.utils.webhooks_helper.verify_signature``). Reference:
https://developer.squareup.com/docs/webhooks/step3validate

The signature covers no timestamp (Stripe's does): the event's own ``created_at``, inside
the signed body, bounds how long a captured notification can be replayed. Square retries
an unacknowledged notification for up to 72 hours after the event
(https://developer.squareup.com/docs/webhooks-api/delivery-sla), so an older one is not
Square's; and a replay within it is the same ``event_id``, answered once.

A Square object carries no metadata. paystream names its payment in the payment's
``reference_id`` (at most 40 characters: ``<tenant tag>:<payment id>``, the tag 8 hex
digits of a SHA-256 over the tenant id, so that a payment id of up to 31 characters fits
whatever the tenant's id) and its refund at the end of the refund's ``reason`` (Square's
refund has no reference: ``... [ps:<tenant tag>:<refund id>]``, up to Square's 192
characters). A dispute names its payment (``disputed_payment.payment_id``), whose
reference names paystream's: it is read from Square (web/webhooks.py), as a Stripe
dispute's PaymentIntent is. A subscription is named in its ``source.name``
(CreateSubscription's SubscriptionSource, "the place that a subscription originates", up
to 255 characters; Square's default the application's name): ``paystream [ps:<tenant
tag>:<subscription id>]``. An invoice it billed names Square's subscription only
(``subscription_id``): web/webhooks.py finds paystream's subscription by that Square id
(one a subscription event of the tenant's named, else the Square subscription read with
the tenant's key for its source name), and only where paystream's record holds it.

A webhook is a hint, not a record to apply: paystream reads the object back from Square
(``payment.refresh``, ``refund.refresh``) rather than trusting the event's copy.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from paystream.gateways.base import DisputeStatus
from paystream.gateways.square.mapping import dispute_status, payment_status, refund_status
from paystream.gateways.square.subscriptions import invoice_status
from paystream.gateways.webhook_notices import (
    BadWebhook,
    DisputeNotice,
    PaymentNotice,
    RefundNotice,
    SubscriptionInvoiceNotice,
    SubscriptionNotice,
    disputed_payment,
    plain_id,
    signed_event,
)

__all__ = [
    "EVERY_FOLLOWED_EVENT",
    "FOLLOWED_DISPUTE_EVENTS",
    "FOLLOWED_INVOICE_EVENTS",
    "FOLLOWED_PAYMENT_EVENTS",
    "FOLLOWED_REFUND_EVENTS",
    "FOLLOWED_SUBSCRIPTION_EVENTS",
    "MAX_AGE_SECONDS",
    "REFERENCE_ID_MAX",
    "SECRET_NAME",
    "SIGNATURE_HEADER",
    "dispute_notice",
    "disputed_payment_notice",
    "invoice_notice",
    "invoiced_subscription_notice",
    "payment_notice",
    "payment_reference",
    "refund_notice",
    "refund_reason",
    "signature",
    "subscription_notice",
    "subscription_reference",
    "subscription_source",
    "tenant_tag",
    "verified_event",
]

SIGNATURE_HEADER = "x-square-hmacsha256-signature"
# The tenant secret holding the subscription's signature key.
SECRET_NAME = "webhook_signature_key"  # noqa: S105 - the secret's name
# Square retries a notification for 72 hours after its event; an hour's margin for its
# clock and queues. An older one is a replay.
MAX_AGE_SECONDS = 73 * 3600
# A signed event dated ahead of this machine by more than this is refused (a clock years
# fast would make its notifications replayable until then).
FUTURE_SECONDS = 300
# Square's limits: Payment.reference_id, PaymentRefund's (RefundPayment's) reason.
REFERENCE_ID_MAX = 40
REASON_MAX = 192
# SubscriptionSource.name's.
SOURCE_NAME_MAX = 255

# Payment events that can bring news paystream has not read: an authorisation Square
# voided when its delay passed (CANCELED), one completed or canceled in Square's
# dashboard, a payment that failed later. (``payment.created`` brings nothing the
# create's own answer did not.)
FOLLOWED_PAYMENT_EVENTS = frozenset({"payment.updated"})
# A refund that completed, failed or was rejected after Square answered it PENDING.
FOLLOWED_REFUND_EVENTS = frozenset({"refund.updated"})
# A cardholder's dispute opened, and its state moving on (evidence required, processing,
# won, lost, accepted). Square's reference lists the state event under both names
# (``dispute.state.changed``, and ``dispute.state.updated`` of older API versions): both
# are followed, whichever the subscription's version sends.
FOLLOWED_DISPUTE_EVENTS = frozenset(
    {"dispute.created", "dispute.state.changed", "dispute.state.updated"}
)
# A subscription's own events: made, and moved (Square's reference: "published when a
# Subscription is updated": its status, its cancel scheduled or deleted, its price or
# card). Each is read back by subscription.refresh.
FOLLOWED_SUBSCRIPTION_EVENTS = frozenset({"subscription.created", "subscription.updated"})
# A subscription's invoice paid (a renewal charged, or paid by the customer from Square's
# email), its automatic charge failed (a renewal declined: the subscription stays ACTIVE
# at Square, with no subscription.updated), changed, or canceled (in the Dashboard).
# Each is its subscription's refresh unless the invoice is recorded as the event has it.
FOLLOWED_INVOICE_EVENTS = frozenset(
    {
        "invoice.payment_made",
        "invoice.scheduled_charge_failed",
        "invoice.updated",
        "invoice.canceled",
    }
)
# Every event followed (the generated API docs list these: one source, tested).
EVERY_FOLLOWED_EVENT: frozenset[str] = (
    FOLLOWED_PAYMENT_EVENTS
    | FOLLOWED_REFUND_EVENTS
    | FOLLOWED_DISPUTE_EVENTS
    | FOLLOWED_SUBSCRIPTION_EVENTS
    | FOLLOWED_INVOICE_EVENTS
)

_TAG = re.compile(r"[0-9a-f]{4}")
_TAG_LEN = 4
_OWN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_REASON_REF = re.compile(r"\[ps:([0-9a-f]{4}):([A-Za-z0-9_-]{1,64})\]\Z")


def tenant_tag(tenant_id: str) -> str:
    """The 4 hex digits naming a tenant in a Square reference: two tenants on one Square
    location (one subscription's events reach both endpoints) tell theirs apart. (A
    collision is harmless: the row's provider id check ignores the other's events.)"""
    return hashlib.sha256(tenant_id.encode()).hexdigest()[:_TAG_LEN]


def payment_reference(tenant_id: str, payment_id: str) -> str | None:
    """The ``reference_id`` naming paystream's payment, or None when it does not fit in
    Square's 40 characters (a payment id over 31 characters: not found from webhooks,
    read back by ``payment.refresh``; docs/square.md)."""
    ref = f"{tenant_tag(tenant_id)}{payment_id}"  # (fixed-length tag: a UUID fits)
    return ref if len(ref) <= REFERENCE_ID_MAX else None


def refund_reason(reason: str | None, tenant_id: str, refund_id: str) -> str:
    """The refund's ``reason`` with paystream's refund named at its end."""
    ref = f"[ps:{tenant_tag(tenant_id)}:{refund_id}]"
    return ref if not reason else f"{reason} {ref}"[-REASON_MAX:]


def subscription_source(tenant_id: str, subscription_id: str) -> str | None:
    """The ``source.name`` naming paystream's subscription (None for an id no reference
    holds: that subscription is read by ``subscription.refresh`` only)."""
    if _OWN_ID.fullmatch(subscription_id) is None:
        return None
    return f"paystream [ps:{tenant_tag(tenant_id)}:{subscription_id}]"


def _read_payment_reference(value: Any, tenant_id: str) -> tuple[str, str] | None:
    """(tenant, payment id) a reference_id names: ``tenant_id`` when its tag is the
    tenant's, else the tag (another tenant's); None for a reference not paystream's."""
    if not isinstance(value, str):
        return None
    tag, own_id = value[:_TAG_LEN], value[_TAG_LEN:]
    if _TAG.fullmatch(tag) is None or _OWN_ID.fullmatch(own_id) is None:
        return None
    return (tenant_id if tag == tenant_tag(tenant_id) else f"({tag})", own_id)


def _read_refund_reason(value: Any, tenant_id: str) -> tuple[str, str] | None:
    """(tenant, id) a refund's reason (or a subscription's source name) ends with."""
    if not isinstance(value, str):
        return None
    found = _REASON_REF.search(value)
    if found is None:
        return None
    tag, own_id = found.groups()
    return (tenant_id if tag == tenant_tag(tenant_id) else f"({tag})", own_id)


def signature(notification_url: str, body: bytes, key: str) -> str:
    """The header Square sends for ``body`` posted to ``notification_url`` (the tests' fake
    signs with it; verified_event checks with the SDK's helper)."""
    digest = hmac.new(key.encode(), notification_url.encode() + body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def verified_event(
    payload: bytes, header: str | None, key: str, notification_url: str
) -> dict[str, Any]:
    """The event, if ``header`` signs ``payload`` posted to ``notification_url`` with
    ``key`` and the event is recent; BadWebhook otherwise (its message names no key)."""
    from square.utils.webhooks_helper import verify_signature

    if not header:
        raise BadWebhook(f"signature not verified: no {SIGNATURE_HEADER} header")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise BadWebhook("the body is not UTF-8") from None
    try:
        good = verify_signature(
            request_body=text,
            signature_header=header,
            signature_key=key,
            notification_url=notification_url,
        )
    except (ValueError, UnicodeEncodeError):
        good = False  # (an empty key; a header or body no UTF-8 spells)
    if not good:
        raise BadWebhook(
            "signature not verified: not signed with the tenant's signature key for its "
            "notification URL (is the URL configured here the subscription's, exactly?)"
        )
    event = signed_event(payload)
    created = _epoch(event.get("created_at"))
    if created is None:
        raise BadWebhook("the event has no created_at: its age cannot be bounded")
    age = time.time() - created
    if age > MAX_AGE_SECONDS:
        raise BadWebhook("the event is older than Square sends one again (72 hours): a replay")
    if age < -FUTURE_SECONDS:
        raise BadWebhook("the event is dated in the future")
    return event


def _epoch(value: Any) -> int | None:
    """An RFC 3339 time (Square's ``created_at``, ``due_at``) in epoch seconds."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if at.tzinfo is None:
        return None
    try:
        return int(at.timestamp())
    except (OverflowError, OSError, ValueError):
        return None


def _event_object(
    event: dict[str, Any], followed: frozenset[str], kind: str
) -> tuple[str, str, dict[str, Any]] | None:
    """(event id, type, object) of a followed event about a ``kind`` object (Square's
    envelope: ``data.type`` names it, ``data.object.<kind>`` holds it)."""
    event_type = event.get("type")
    event_id = event.get("event_id")
    if not isinstance(event_type, str) or event_type not in followed:
        return None
    if not plain_id(event_id):
        return None
    data = event.get("data")
    if not isinstance(data, dict) or data.get("type") != kind:
        return None
    holder = data.get("object")
    obj = holder.get(kind) if isinstance(holder, dict) else None
    if not isinstance(obj, dict):
        return None
    return event_id, event_type, obj


def _location(obj: Mapping[str, Any], event: Mapping[str, Any]) -> str:
    """The location the object is at (its own, else the event's): compared with the
    tenant's. One that names none is no tenant's ("")."""
    for value in (obj.get("location_id"), event.get("location_id")):
        if plain_id(value):
            return value
    return ""


def _named(
    event: dict[str, Any],
    followed: frozenset[str],
    kind: str,
    read_ref: Callable[[dict[str, Any]], tuple[str, str] | None],
) -> tuple[str, str, dict[str, Any], tuple[str, str]] | None:
    """(event id, type, object, paystream's reference) of a followed event about a
    ``kind`` object with an id, which ``read_ref`` finds paystream's name in; None
    otherwise."""
    found = _event_object(event, followed, kind)
    if found is None:
        return None
    event_id, event_type, obj = found
    ref = read_ref(obj)
    if ref is None or not plain_id(obj.get("id")):
        return None
    return event_id, event_type, obj, ref


def payment_notice(event: dict[str, Any], tenant_id: str) -> PaymentNotice | None:
    """What a followed payment event says of paystream's payment; None for another event,
    or a payment paystream did not name (made elsewhere on the seller's account)."""
    found = _named(
        event,
        FOLLOWED_PAYMENT_EVENTS,
        "payment",
        lambda obj: _read_payment_reference(obj.get("reference_id"), tenant_id),
    )
    if found is None:
        return None
    event_id, event_type, obj, ref = found
    status = payment_status(obj.get("status"))
    return PaymentNotice(
        event_id,
        event_type,
        ref[0],
        ref[1],
        obj["id"],
        None if status is None else status.value,
        _location(obj, event),
        _epoch(event.get("created_at")),
    )


def refund_notice(event: dict[str, Any], tenant_id: str) -> RefundNotice | None:
    """What a followed refund event says of paystream's refund; None for another event,
    or a refund paystream did not name."""
    found = _named(
        event,
        FOLLOWED_REFUND_EVENTS,
        "refund",
        lambda obj: _read_refund_reason(obj.get("reason"), tenant_id),
    )
    if found is None:
        return None
    event_id, event_type, obj, ref = found
    status = refund_status(obj.get("status"))
    return RefundNotice(
        event_id,
        event_type,
        ref[0],
        ref[1],
        obj["id"],
        None if status is None else status.value,
        _location(obj, event),
        _epoch(event.get("created_at")),
    )


def subscription_notice(event: dict[str, Any], tenant_id: str) -> SubscriptionNotice | None:
    """What a followed subscription event says of paystream's subscription (named in its
    source's name); None for another event, or a subscription paystream did not make.
    What it says of the subscription (its status where the subscription alone tells
    it, period end, cancel, price, card) lets the endpoint drop an event saying what is
    recorded; it checks that paystream's record holds this Square subscription."""

    found = _named(
        event,
        FOLLOWED_SUBSCRIPTION_EVENTS,
        "subscription",
        lambda obj: subscription_reference(obj, tenant_id),
    )
    if found is None:
        return None
    event_id, event_type, obj, ref = found
    price = obj.get("price_override_money")
    amount = price.get("amount") if isinstance(price, dict) else None
    card = obj.get("card_id")
    return SubscriptionNotice(
        event_id,
        event_type,
        ref[0],
        ref[1],
        obj["id"],
        _location(obj, event),
        _epoch(event.get("created_at")),
        status=_subscription_status(obj),
        cancel_at_period_end=bool(obj.get("canceled_date")),
        current_period_end=_period_end(obj.get("charged_through_date")),
        amount=amount if isinstance(amount, int) and not isinstance(amount, bool) else None,
        provider_payment_method_id=card if plain_id(card) else None,
    )


def _subscription_status(obj: Mapping[str, Any]) -> str | None:
    """The status paystream records for the subscription as the event shows it, where
    the subscription alone says it: ACTIVE is ``active`` (or ``past_due``, which its
    invoices say: never taken as the same), PENDING before any invoice ``trialing``, an
    ended one ``canceled``; None (read) for any other."""
    status = obj.get("status")
    if status == "ACTIVE":
        return "active"
    if status == "PENDING" and not obj.get("invoice_ids"):
        return "trialing"
    if status in ("CANCELED", "DEACTIVATED", "COMPLETED"):
        return "canceled"
    return None


def _period_end(charged_through: Any) -> int | None:
    """The current period's end (epoch seconds): the day after ``charged_through_date``,
    the billed period's last day, at midnight UTC (as the gateway reads it); None for
    none, or one not read."""
    if not isinstance(charged_through, str) or len(charged_through) != 10:
        return None
    try:
        day = date.fromisoformat(charged_through) + timedelta(days=1)
    except ValueError:
        return None
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())


def dispute_notice(event: dict[str, Any]) -> DisputeNotice | None:
    """What a followed dispute event says; None for another event, or a dispute naming
    no payment (one of a payment made before Square's Payments API: not paystream's)."""
    found = _event_object(event, FOLLOWED_DISPUTE_EVENTS, "dispute")
    if found is None:
        return None
    event_id, event_type, obj = found
    dispute_id = obj.get("id") or obj.get("dispute_id")  # (older versions: dispute_id)
    disputed = obj.get("disputed_payment")
    payment_id = disputed.get("payment_id") if isinstance(disputed, dict) else None
    if not plain_id(dispute_id) or not plain_id(payment_id):
        return None
    status = dispute_status(obj.get("state"))
    # The deadline as the gateway reads it (mapping.dispute: only while evidence is due),
    # so that one held here compares equal.
    due = _epoch(obj.get("due_at")) if status is DisputeStatus.NEEDS_RESPONSE else None
    return DisputeNotice(
        event_id,
        event_type,
        dispute_id,
        payment_id,
        None if status is None else status.value,
        _location(obj, event),
        _epoch(event.get("created_at")),
        due,
    )


def disputed_payment_notice(
    notice: DisputeNotice, payment: dict[str, Any], tenant_id: str
) -> PaymentNotice | None:
    """The dispute event as one about paystream's payment, named by the disputed Square
    payment's reference_id (as Square answers it now); None for one paystream did not
    name."""
    ref = _read_payment_reference(payment.get("reference_id"), tenant_id)
    if ref is None or payment.get("id") != notice.provider_payment_id:
        return None
    return disputed_payment(notice, ref, payment_status(payment.get("status")))


def invoice_notice(event: dict[str, Any]) -> SubscriptionInvoiceNotice | None:
    """What a followed invoice event says of a Square subscription's invoice; None for
    another event, or an invoice no subscription billed (not paystream's: one-off
    invoices are not made on Square). Whose subscription it is, the invoice does not
    say: web/webhooks.py finds it."""
    found = _event_object(event, FOLLOWED_INVOICE_EVENTS, "invoice")
    if found is None:
        return None
    event_id, event_type, obj = found
    subscription_id, invoice_id = obj.get("subscription_id"), obj.get("id")
    if not plain_id(subscription_id) or not plain_id(invoice_id):
        return None
    read = invoice_status(obj.get("status"))
    return SubscriptionInvoiceNotice(
        event_id,
        event_type,
        subscription_id,
        invoice_id,
        None if read is None else read[0].value,
        _location(obj, event),
        _epoch(event.get("created_at")),
        None if read is None else read[1],
    )


def subscription_reference(obj: Mapping[str, Any], tenant_id: str) -> tuple[str, str] | None:
    """(tenant, subscription id) a Square subscription's source name names: ``tenant_id``
    when its tag is the tenant's, else the tag (another tenant's); None for one
    paystream did not make."""
    source = obj.get("source")
    return _read_refund_reason(source.get("name") if isinstance(source, dict) else None, tenant_id)


def invoiced_subscription_notice(
    notice: SubscriptionInvoiceNotice, subscription: Mapping[str, Any], tenant_id: str
) -> SubscriptionNotice | None:
    """The invoice event as one about paystream's subscription, named by the Square
    subscription's source name (as Square answers it now); None for one paystream did
    not make."""
    ref = subscription_reference(subscription, tenant_id)
    if ref is None or subscription.get("id") != notice.provider_subscription_id:
        return None
    return notice.as_subscription(ref[0], ref[1])

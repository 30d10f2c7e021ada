"""Paddle webhook events: their signature checked, and read for the payment or refund
they concern.

Paddle signs each notification with its notification destination's secret key: the
``Paddle-Signature`` header is ``ts=<unix seconds>;h1=<hex HMAC-SHA256(secret key,
"<ts>:<raw body>")>`` (more than one ``h1`` while a key is rotated). Checked with the
SDK's own ``PaddleSignature`` (paddle-python-sdk), the timestamp within
TOLERANCE_SECONDS of this machine's clock, as Stripe's (Paddle signs each delivery when
it sends it, retries included). The SDK's ``Verifier`` is not used: an environment
variable (``TEST_MODE``) turns its time check off. Reference:
https://developer.paddle.com/webhooks/about/signature-verification

The event (``event_id``, ``event_type``, ``occurred_at``, ``data``: the entity as it is
now) names paystream's payment in the transaction's ``custom_data`` (base.PAYMENT_REF_KEY,
as Stripe's metadata) and its refund at the end of the adjustment's ``reason``
(references.py: an adjustment has no custom_data). A webhook is a hint, not a record to
apply: paystream reads the transaction or adjustment back (``payment.refresh``,
``refund.refresh``). A chargeback (an adjustment of action ``chargeback``) is not
followed: paystream holds no disputes for Paddle (docs/paddle.md).
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from paystream.gateways.base import read_payment_ref, read_subscription_ref
from paystream.gateways.paddle.mapping import payment_status, refund_status
from paystream.gateways.paddle.references import read_refund_reason
from paystream.gateways.webhook_notices import (
    BadWebhook,
    PaymentNotice,
    RefundNotice,
    SubscriptionNotice,
    plain_id,
    signed_event,
)

__all__ = [
    "EVERY_FOLLOWED_EVENT",
    "FOLLOWED_PAYMENT_EVENTS",
    "FOLLOWED_REFUND_EVENTS",
    "FOLLOWED_SUBSCRIPTION_EVENTS",
    "SECRET_NAME",
    "SIGNATURE_HEADER",
    "TOLERANCE_SECONDS",
    "payment_notice",
    "refund_notice",
    "signature",
    "subscription_notice",
    "verified_event",
]

SIGNATURE_HEADER = "Paddle-Signature"
# The tenant secret holding its notification destination's secret key.
SECRET_NAME = "webhook_secret_key"  # noqa: S105 - the secret's name
# How far a signature's timestamp may be from this machine's clock (Stripe's tolerance;
# Paddle's SDKs default to 5 seconds, which a worker's clock a little off would fail).
TOLERANCE_SECONDS = 300

# A transaction's events that can bring news paystream has not read: paid at checkout
# (paid, completed), a customer's card declined there (payment_failed), canceled in
# Paddle's dashboard, past due; ``transaction.updated`` for anything else (a new payment
# attempt). (``created`` and ``ready`` bring nothing the create's answer did not.)
FOLLOWED_PAYMENT_EVENTS = frozenset(
    {
        "transaction.paid",
        "transaction.completed",
        "transaction.payment_failed",
        "transaction.canceled",
        "transaction.past_due",
        "transaction.updated",
    }
)
# A subscription's own events (made when its checkout is paid, activated after a trial,
# renewed or declined, a change scheduled or made, paused or resumed, canceled). A
# subscription's transactions (its checkout's, its renewals') come in the transaction
# events above.
FOLLOWED_SUBSCRIPTION_EVENTS = frozenset(
    {
        "subscription.created",
        "subscription.activated",
        "subscription.trialing",
        "subscription.updated",
        "subscription.past_due",
        "subscription.paused",
        "subscription.resumed",
        "subscription.canceled",
    }
)
# A subscription's transactions' events followed (its checkout's, its renewals'): the
# ones that end a step. ``transaction.paid`` and ``.updated`` come before (or beside) one
# of these saying the same, and each was one more refresh of three Paddle calls (review
# h79r_b M1); the checkout's subscription is named only once it is ``completed``.
_SUBSCRIPTION_TRANSACTION_EVENTS = frozenset(
    {
        "transaction.completed",
        "transaction.payment_failed",
        "transaction.canceled",
        "transaction.past_due",
    }
)
# Paddle's subscription statuses paystream has.
_SUBSCRIPTION_STATUS = {
    "active": "active",
    "trialing": "trialing",
    "past_due": "past_due",
    "paused": "paused",
    "canceled": "canceled",
}
# A refund Paddle approved or rejected after paystream made it pending.
FOLLOWED_REFUND_EVENTS = frozenset({"adjustment.created", "adjustment.updated"})
# Every event followed (the generated API docs list these: one source, tested).
EVERY_FOLLOWED_EVENT: frozenset[str] = (
    FOLLOWED_PAYMENT_EVENTS | FOLLOWED_SUBSCRIPTION_EVENTS | FOLLOWED_REFUND_EVENTS
)


def signature(body: bytes, secret_key: str, ts: int | None = None) -> str:
    """The header Paddle sends for ``body`` (verified_event checks with the SDK's code)."""
    from paddle_billing.Notifications.PaddleSignature import PaddleSignature

    ts = int(time.time()) if ts is None else ts
    mac = PaddleSignature.calculate_hmac(secret_key, f"{ts}:".encode() + body)
    return f"ts={ts};h1={mac.hexdigest()}"


def verified_event(payload: bytes, header: str | None, secret_key: str) -> dict[str, Any]:
    """The event, if ``header`` signs ``payload`` with ``secret_key`` within the tolerance;
    BadWebhook otherwise (its message names no key)."""
    from paddle_billing.Notifications.PaddleSignature import PaddleSignature
    from paddle_billing.Notifications.Secret import Secret

    if not header:
        raise BadWebhook(f"signature not verified: no {SIGNATURE_HEADER} header")
    if len(header) > 2048 or not header.isascii():
        raise BadWebhook("signature not verified: an unreadable Paddle-Signature header")
    try:
        ts, hashes = PaddleSignature.parse(header)
    except (ValueError, TypeError):
        raise BadWebhook("signature not verified: an unreadable Paddle-Signature header") from None
    if not ts or not hashes.get("h1"):
        raise BadWebhook("signature not verified: no ts or h1 in the Paddle-Signature header")
    # (compared as integers: a 400-digit ts is no float, review h75r1 F6)
    if abs(int(time.time()) - ts) > TOLERANCE_SECONDS:
        raise BadWebhook("the signature's timestamp is outside the tolerance (a replay?)")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise BadWebhook("the body is not UTF-8") from None
    try:
        good = bool(secret_key) and PaddleSignature().verify(header, text, Secret(secret_key))
    except (ValueError, UnicodeEncodeError):
        good = False
    if not good:
        raise BadWebhook(
            "signature not verified: not signed with the tenant's notification destination's "
            "secret key"
        )
    return signed_event(payload)


def _epoch(value: Any) -> int | None:
    """An RFC 3339 time (``occurred_at``) in epoch seconds."""
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


def _event_entity(event: dict[str, Any], followed: frozenset[str]) -> tuple[str, str, dict] | None:
    event_type = event.get("event_type")
    event_id = event.get("event_id")
    data = event.get("data")
    if not isinstance(event_type, str) or event_type not in followed:
        return None
    if not plain_id(event_id) or not isinstance(data, dict) or not plain_id(data.get("id")):
        return None
    return event_id, event_type, data


def payment_notice(event: dict[str, Any]) -> PaymentNotice | None:
    """What a followed transaction event says of paystream's payment; None for another
    event, or a transaction paystream did not name (made at checkout, or elsewhere)."""
    found = _event_entity(event, FOLLOWED_PAYMENT_EVENTS)
    if found is None:
        return None
    event_id, event_type, txn = found
    ref = read_payment_ref(txn.get("custom_data"))
    if ref is None:
        return None
    status = payment_status(txn)
    return PaymentNotice(
        event_id,
        event_type,
        ref[0],
        ref[1],
        txn["id"],
        None if status is None else status.value,
        None,  # (one seller per API key: no account to tell apart)
        _epoch(event.get("occurred_at")),
    )


def refund_notice(event: dict[str, Any], tenant_id: str) -> RefundNotice | None:
    """What a followed adjustment event says of paystream's refund; None for another
    event, a chargeback or credit, or a refund paystream did not name."""
    found = _event_entity(event, FOLLOWED_REFUND_EVENTS)
    if found is None:
        return None
    event_id, event_type, adj = found
    if adj.get("action") != "refund":
        return None
    _, _, tenant, refund_id = read_refund_reason(adj.get("reason"), tenant_id)
    if tenant is None or refund_id is None:
        return None
    status = refund_status(adj.get("status"))
    return RefundNotice(
        event_id,
        event_type,
        tenant,
        refund_id,
        adj["id"],
        None if status is None else status.value,
        None,
        _epoch(event.get("occurred_at")),
    )


def subscription_notice(event: dict[str, Any]) -> SubscriptionNotice | None:
    """What a followed subscription event, or a transaction event of a subscription's,
    says of paystream's subscription: named in ``custom_data`` (base.SUBSCRIPTION_REF_KEY),
    which Paddle copies from the checkout transaction to the subscription it makes and
    from it to each renewal's transaction. None for another event, or a subscription
    paystream did not name.

    paystream names the subscription at Paddle by its checkout transaction's id: the
    notice carries it where the event tells it (the checkout transaction's own events;
    ``subscription.created``'s ``transaction_id``), else "" (a renewal's transaction, the
    subscription's other events), which the endpoint takes as "not told": each is a
    refresh, which reads the recorded checkout's subscription."""
    found = _event_entity(event, FOLLOWED_SUBSCRIPTION_EVENTS | _SUBSCRIPTION_TRANSACTION_EVENTS)
    if found is None:
        return None
    event_id, event_type, obj = found
    custom = obj.get("custom_data")
    ref = read_subscription_ref(custom)
    if ref is None or read_payment_ref(custom) is not None:
        return None
    if event_type.startswith("transaction."):
        checkout = obj["id"] if obj.get("origin") == "api" else ""
        return SubscriptionNotice(
            event_id,
            event_type,
            ref[0],
            ref[1],
            str(checkout),
            None,  # (one seller per API key: no account to tell apart)
            _epoch(event.get("occurred_at")),
        )
    made_by = obj.get("transaction_id")
    checkout = made_by if event_type == "subscription.created" and plain_id(made_by) else ""
    status, canceling, ends, amount = _subscription_state(obj)
    return SubscriptionNotice(
        event_id,
        event_type,
        ref[0],
        ref[1],
        str(checkout),
        None,
        _epoch(event.get("occurred_at")),
        # What it says of the subscription, for the endpoint to drop one saying what is
        # recorded (the echo of paystream's own cancel or price change): each is a refresh
        # of three Paddle calls (review h79r_b M1). None where it is not read.
        status=status,
        cancel_at_period_end=canceling,
        current_period_end=ends,
        amount=amount,
    )


def _subscription_state(
    obj: dict[str, Any],
) -> tuple[str | None, bool | None, int | None, int | None]:
    """A subscription entity's status (paystream's name; None for one paystream has
    not), whether a cancel is scheduled, its current period's end (epoch seconds)
    and what its one item bills a period (None: not one item, or unreadable)."""
    status = _SUBSCRIPTION_STATUS.get(str(obj.get("status")))
    change = obj.get("scheduled_change")
    canceling = isinstance(change, dict) and change.get("action") == "cancel"
    period = obj.get("current_billing_period")
    ends = _epoch(period.get("ends_at")) if isinstance(period, dict) else None
    amount = None
    items = obj.get("items")
    if isinstance(items, list) and len(items) == 1 and isinstance(items[0], dict):
        price = items[0].get("price")
        unit = price.get("unit_price") if isinstance(price, dict) else None
        quantity = items[0].get("quantity", 1)
        raw = unit.get("amount") if isinstance(unit, dict) else None
        if isinstance(raw, str) and raw.isdigit() and len(raw) <= 15 and isinstance(quantity, int):
            amount = int(raw) * quantity
    return status, canceling and status != "canceled", ends, amount

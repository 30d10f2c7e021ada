"""What a provider's verified webhook event says, in paystream's terms (Stripe's and
Square's alike: paystream/gateways/stripe/webhooks.py, paystream/gateways/square/webhooks.py):
the payment, refund or dispute it is about, for the webhook endpoint (web/webhooks.py) to
refresh. A webhook is a hint, never a record to apply: the refresh reads the provider."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeGuard

from paystream.errors import PaystreamError
from paystream.streams.codec import valid_unicode

__all__ = [
    "BadWebhook",
    "ConnectedAccountNotice",
    "DisputeNotice",
    "InvoiceNotice",
    "PaymentNotice",
    "PayoutNotice",
    "RefundNotice",
    "SubscriptionInvoiceNotice",
    "SubscriptionNotice",
    "TransferNotice",
    "disputed_payment",
    "plain_id",
    "signed_event",
]

# A provider's ids are short ASCII; one signed otherwise (a lone surrogate, which JSON can
# spell) went on into a command id whose encode raised: a 500 (review h59h).
ID_MAX = 255


def plain_id(value: Any) -> TypeGuard[str]:
    """Whether ``value`` can be a provider's id in an event: 1 to ``ID_MAX`` characters
    of valid Unicode."""
    return isinstance(value, str) and 0 < len(value) <= ID_MAX and valid_unicode(value)


def signed_event(payload: bytes) -> dict[str, Any]:
    """The event a webhook's body (its signature verified) holds: a JSON object, else
    refused as no provider's."""
    try:
        event = json.loads(payload)
    except (ValueError, RecursionError):
        raise BadWebhook("the body is not JSON") from None
    if not isinstance(event, dict):
        raise BadWebhook("the body is not a JSON object")
    return event


class BadWebhook(PaystreamError):
    """Not a webhook its provider signed with the tenant's secret (or not a JSON object)."""


@dataclass(frozen=True, slots=True)
class PaymentNotice:
    """A followed event about a payment that names paystream's payment (in its metadata at
    Stripe, its reference_id at Square)."""

    event_id: str
    event_type: str
    tenant_id: str  # as the payment's metadata names them
    payment_id: str
    provider_payment_id: str
    status: str | None  # paystream's name for the PaymentIntent's status in the event
    # The connected account it happened on (a Stripe Connect endpoint's); at Square, the
    # location (each tenant takes one location's payments).
    account: str | None
    created: int | None = None  # when the provider made the event (unix seconds), if it says
    # A dispute event's (disputed_payment_notice): the dispute it is about, its status
    # in the event (paystream's name; None for one this version does not know) and its
    # evidence deadline there (epoch seconds; None for none).
    provider_dispute_id: str | None = None
    dispute_status: str | None = None
    dispute_due_by: int | None = None


@dataclass(frozen=True, slots=True)
class DisputeNotice:
    """A followed event about a dispute of a PaymentIntent's charge: whose payment it is
    only that PaymentIntent's metadata says (disputed_payment_notice)."""

    event_id: str
    event_type: str
    provider_dispute_id: str
    provider_payment_id: str  # the disputed charge's PaymentIntent
    status: str | None  # paystream's name for the dispute's status in the event
    # The connected account it happened on (a Stripe Connect endpoint's); at Square, the
    # location (each tenant takes one location's payments).
    account: str | None
    created: int | None = None  # when the provider made the event (unix seconds), if it says
    # Its ``evidence_details.due_by`` (epoch seconds; None for none, or one not read as a
    # date): a later one than paystream holds is a new response window (an inquiry
    # escalated to a chargeback, a decision appealed), never the same news again.
    evidence_due_by: int | None = None


@dataclass(frozen=True, slots=True)
class RefundNotice:
    """A followed event about a refund that names paystream's refund in its metadata."""

    event_id: str
    event_type: str
    tenant_id: str  # as the refund's metadata names them
    refund_id: str
    provider_refund_id: str
    status: str | None  # paystream's name for the refund's status in the event
    # The connected account it happened on (a Stripe Connect endpoint's); at Square, the
    # location (each tenant takes one location's payments).
    account: str | None
    created: int | None = None  # when the provider made the event (unix seconds), if it says


@dataclass(frozen=True, slots=True)
class SubscriptionNotice:
    """A followed event about a subscription (its own, or one of its invoices') that
    names paystream's subscription (in its metadata, or the invoice's copy of it)."""

    event_id: str
    event_type: str
    tenant_id: str  # as the subscription's metadata names them
    subscription_id: str
    provider_subscription_id: str
    account: str | None  # the connected account it happened on (a Connect endpoint's)
    created: int | None = None  # when the provider made the event (unix seconds), if it says
    # What a subscription's own event says of it: its status (paystream's name; None for
    # one this version does not know), whether it is to be canceled at its period's end,
    # and that period's end (epoch seconds); each None when not read.
    status: str | None = None
    cancel_at_period_end: bool | None = None
    current_period_end: int | None = None
    # Its price (its one item's amount, minor units) and the card it bills (the
    # provider's payment method id; None where it names none: the customer's default),
    # either changed in the provider's dashboard too; each None when not read.
    amount: int | None = None
    provider_payment_method_id: str | None = None
    # What an invoice's event says of the invoice: its id at the provider and its status
    # (paystream's name; None for a draft or one this version does not know).
    provider_invoice_id: str | None = None
    invoice_status: str | None = None
    # Whether that open invoice's charge was declined (Square's UNPAID, against SCHEDULED
    # or PAYMENT_PENDING: both open here, told apart by the record's failure_code); None
    # where the provider's status says no more than ``invoice_status``.
    invoice_declined: bool | None = None


@dataclass(frozen=True, slots=True)
class SubscriptionInvoiceNotice:
    """A followed event about an invoice a provider subscription billed, which names only
    that provider subscription (a Square invoice's ``subscription_id``): whose it is only
    paystream's record of that subscription says (web/webhooks.py finds it)."""

    event_id: str
    event_type: str
    provider_subscription_id: str
    provider_invoice_id: str
    invoice_status: str | None  # paystream's name (None: one this version does not know)
    account: str | None  # at Square, the invoice's location
    created: int | None = None  # when the provider made the event (unix seconds), if it says
    invoice_declined: bool | None = None  # (as SubscriptionNotice's)

    def as_subscription(self, tenant_id: str, subscription_id: str) -> SubscriptionNotice:
        """The event as one about paystream's subscription ``subscription_id``."""
        return SubscriptionNotice(
            self.event_id,
            self.event_type,
            tenant_id,
            subscription_id,
            self.provider_subscription_id,
            self.account,
            self.created,
            provider_invoice_id=self.provider_invoice_id,
            invoice_status=self.invoice_status,
            invoice_declined=self.invoice_declined,
        )


@dataclass(frozen=True, slots=True)
class PayoutNotice:
    """A followed event about a payout that names paystream's payout in its metadata."""

    event_id: str
    event_type: str
    tenant_id: str  # as the payout's metadata names them
    payout_id: str
    provider_payout_id: str
    status: str | None  # the payout's status in the event (None: one not known here)
    account: str | None  # the connected account it happened on (a Connect endpoint's)
    created: int | None = None  # when the provider made the event (unix seconds), if it says


@dataclass(frozen=True, slots=True)
class TransferNotice:
    """A followed event about a transfer that names paystream's transfer in its metadata
    (a reversal made outside paystream: the provider's dashboard, or its recoveries)."""

    event_id: str
    event_type: str
    tenant_id: str  # as the transfer's metadata names them
    transfer_id: str
    provider_transfer_id: str
    amount_reversed: int | None  # what the event says is reversed of it (None: unsaid)
    account: str | None  # the connected account it happened on (a Connect endpoint's)
    created: int | None = None  # when the provider made the event (unix seconds), if it says


@dataclass(frozen=True, slots=True)
class InvoiceNotice:
    """A followed event about a one-off invoice that names paystream's invoice in its
    metadata (a subscription's invoice names its subscription: a SubscriptionNotice)."""

    event_id: str
    event_type: str
    tenant_id: str  # as the invoice's metadata names them
    invoice_id: str
    provider_invoice_id: str
    status: str | None  # the invoice's status in the event (None: one not known here)
    account: str | None  # the connected account it happened on (a Connect endpoint's)
    created: int | None = None  # when the provider made the event (unix seconds), if it says


@dataclass(frozen=True, slots=True)
class ConnectedAccountNotice:
    """An ``account.updated`` about a connected account that names paystream's in its
    metadata, heard on the platform's Connect endpoint."""

    event_id: str
    event_type: str
    tenant_id: str  # as the account's metadata names them
    connected_account_id: str
    provider_account_id: str
    # What the event says of it (compared with what paystream holds: an event bringing
    # nothing new is dropped): its flags, requirements due now and disabled reason.
    flags: tuple[bool, bool, bool] | None  # charges, payouts enabled; details submitted
    currently_due: tuple[str, ...] | None
    disabled_reason: str | None
    # The connected account it happened on, other than the account itself (None: the
    # platform's own, or the account's own event on the platform's Connect endpoint).
    account: str | None
    created: int | None = None  # when the provider made the event (unix seconds), if it says


def disputed_payment(
    notice: DisputeNotice, ref: tuple[str, str], status: StrEnum | None
) -> PaymentNotice:
    """The dispute event ``notice`` as one about paystream's payment ``ref`` (tenant id,
    payment id), the disputed payment's status at the provider now being ``status``
    (paystream's; None for one this version does not know)."""
    return PaymentNotice(
        notice.event_id,
        notice.event_type,
        ref[0],
        ref[1],
        notice.provider_payment_id,
        None if status is None else status.value,
        notice.account,
        notice.created,
        notice.provider_dispute_id,
        notice.status,
        notice.evidence_due_by,
    )

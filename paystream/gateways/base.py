"""The PaymentGateway protocol: provider-neutral requests, results and capabilities.

A gateway instance serves exactly one tenant (its credentials are bound at
construction, like one ``StripeClient`` per tenant). Every mutating call takes an
``idempotency_key`` derived from (tenant, command id), so a redelivered command
makes the same provider call and the provider answers with the original result.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from paystream.gateways.errors import UnsupportedOperation
from paystream.money import Money

__all__ = [
    "CONNECTED_ACCOUNT_REF_KEY",
    "INVOICE_REF_KEY",
    "METADATA_KEYS_MAX",
    "OPERATION_CAPABILITY",
    "PAYMENT_REF_KEY",
    "PAYOUT_REF_KEY",
    "PRORATIONS",
    "REFUND_REF_KEY",
    "REQUEST_SENT_SINCE",
    "REQUEST_TRIED_BEFORE",
    "SUBSCRIPTION_REF_KEY",
    "TRANSFER_REF_KEY",
    "UNNARROWED_OPERATIONS",
    "AcceptDispute",
    "AccountLinkResult",
    "ArchiveTaxRate",
    "AttachPaymentMethod",
    "BalanceAmount",
    "BalanceResult",
    "CancelPayment",
    "CancelPayout",
    "CancelSubscription",
    "Capability",
    "CaptureMethod",
    "CapturePayment",
    "ConnectedAccountResult",
    "ConnectedAccountStatus",
    "ConnectedAccountType",
    "CreateAccountLink",
    "CreateConnectedAccount",
    "CreateCustomer",
    "CreateInvoice",
    "CreatePayment",
    "CreatePayout",
    "CreateRefund",
    "CreateSubscription",
    "CreateTaxRate",
    "CreateTransfer",
    "CustomerDetails",
    "CustomerResult",
    "DeleteCustomer",
    "DetachPaymentMethod",
    "DisputeResult",
    "DisputeStatus",
    "FinalizeInvoice",
    "GatewayContext",
    "InvoiceLine",
    "InvoiceResult",
    "InvoiceStatus",
    "MarkInvoiceUncollectible",
    "PauseSubscription",
    "PayInvoice",
    "PaymentGateway",
    "PaymentMethodResult",
    "PaymentResult",
    "PaymentStatus",
    "PayoutResult",
    "PayoutStatus",
    "ProrationLineResult",
    "RefundResult",
    "RefundStatus",
    "ResumeSubscription",
    "RetrieveBalance",
    "RetrieveConnectedAccount",
    "RetrieveCustomer",
    "RetrieveInvoice",
    "RetrievePayment",
    "RetrievePayout",
    "RetrieveRefund",
    "RetrieveSubscription",
    "RetrieveTransfer",
    "ReverseTransfer",
    "SubmitDisputeEvidence",
    "SubscriptionResult",
    "SubscriptionStatus",
    "TaxRateRef",
    "TaxRateResult",
    "TransferResult",
    "TransferStatus",
    "UpdateCustomer",
    "UpdateInvoice",
    "UpdateSubscription",
    "VoidInvoice",
    "connected_account_ref",
    "invoice_ref",
    "merged_metadata",
    "payment_ref",
    "payout_ref",
    "read_connected_account_ref",
    "read_invoice_ref",
    "read_payment_ref",
    "read_payout_ref",
    "read_refund_ref",
    "read_subscription_ref",
    "read_transfer_ref",
    "refund_ref",
    "require_capability",
    "require_operation",
    "subscription_ref",
    "supports",
    "transfer_ref",
    "unnarrowed",
]


class Capability(StrEnum):
    """What a provider can do; operations outside these answer `unsupported`."""

    CUSTOMERS = "customers"
    PAYMENT_METHODS = "payment_methods"
    PAYMENTS = "payments"
    MANUAL_CAPTURE = "manual_capture"
    PARTIAL_CAPTURE = "partial_capture"
    REFUNDS = "refunds"
    DISPUTES = "disputes"
    SUBSCRIPTIONS = "subscriptions"
    INVOICES = "invoices"
    TAX = "tax"
    CONNECTED_ACCOUNTS = "connected_accounts"
    PAYOUTS = "payouts"
    # The provider reports a payment's later changes (a customer's 3-D Secure step, a
    # lapsed authorisation) and a refund's (one failed after it succeeded) by signed
    # webhook: its payments carry PAYMENT_REF_KEY, its refunds REFUND_REF_KEY.
    WEBHOOKS = "webhooks"


# The metadata keys under which paystream names a payment, and a refund, at a provider
# that sends webhooks: "<tenant>:<id>", so that a webhook about the provider's object
# finds paystream's (a tenant id has no colon). The provider's id alone would need an index.
PAYMENT_REF_KEY = "paystream_payment"
REFUND_REF_KEY = "paystream_refund"
# A subscription's (its invoices' events carry a copy of it at Stripe: subscription_details).
SUBSCRIPTION_REF_KEY = "paystream_subscription"
# A payout's (Stripe's payout.* events carry the Payout with its metadata).
PAYOUT_REF_KEY = "paystream_payout"
# A connected account's (Stripe's account.updated events carry the Account, metadata too).
CONNECTED_ACCOUNT_REF_KEY = "paystream_connected_account"
# A transfer's (Stripe's transfer.* events carry the Transfer with its metadata).
TRANSFER_REF_KEY = "paystream_transfer"
# A one-off invoice's (Stripe's invoice.* events carry the Invoice with its metadata; a
# subscription's invoices are named by their subscription's, in subscription_details).
INVOICE_REF_KEY = "paystream_invoice"
METADATA_KEYS_MAX = 50  # Stripe's limit, and the command's


# The earliest time (unix seconds) the request about to be sent under its idempotency key
# can first have reached its provider: the command's record time (never later than now),
# or its key's, or its chosen id's first let-through if earlier. A provider that keeps no
# idempotency keys (Paddle) looks for what an earlier try made only among objects made
# since. Set around a command's provider calls by the handlers (HandlerContext.sent_since_ms,
# from the pipeline) for a gateway whose ``finds_earlier_attempts`` is true; None: not
# known (such a gateway then looks back over the whole key window).
REQUEST_SENT_SINCE: ContextVar[float | None] = ContextVar("request_sent_since", default=None)
# Whether a try of the request about to be sent may have reached its provider before (a
# command let through: parked, or in flight when its worker stopped). A provider that
# keeps no keys, and whose request cannot be told apart from a later one of the same kind
# (Paddle's resume: no custom_data), looks for an earlier try's effect since
# REQUEST_SENT_SINCE only then. Set by the handlers with REQUEST_SENT_SINCE.
REQUEST_TRIED_BEFORE: ContextVar[bool] = ContextVar("request_tried_before", default=False)


def payment_ref(metadata: Mapping[str, str], tenant_id: str, payment_id: str) -> dict[str, str]:
    """``metadata`` with the payment's reference added (replacing a producer's own value
    under the key), unless it already holds as many keys as a provider takes: such a
    payment is not found from a webhook, and is read back by ``payment.refresh``."""
    return _with_ref(PAYMENT_REF_KEY, metadata, tenant_id, payment_id)


def refund_ref(metadata: Mapping[str, str], tenant_id: str, refund_id: str) -> dict[str, str]:
    """As ``payment_ref``, for a refund (one not found from a webhook is read back by
    ``refund.refresh``)."""
    return _with_ref(REFUND_REF_KEY, metadata, tenant_id, refund_id)


def subscription_ref(
    metadata: Mapping[str, str], tenant_id: str, subscription_id: str
) -> dict[str, str]:
    """As ``payment_ref``, for a subscription (one not found from a webhook is read back
    by ``subscription.refresh``)."""
    return _with_ref(SUBSCRIPTION_REF_KEY, metadata, tenant_id, subscription_id)


def payout_ref(metadata: Mapping[str, str], tenant_id: str, payout_id: str) -> dict[str, str]:
    """As ``payment_ref``, for a payout (one not found from a webhook is read back by
    ``payout.refresh``)."""
    return _with_ref(PAYOUT_REF_KEY, metadata, tenant_id, payout_id)


def transfer_ref(metadata: Mapping[str, str], tenant_id: str, transfer_id: str) -> dict[str, str]:
    """As ``payment_ref``, for a transfer (one not found from a webhook is read back by
    ``transfer.refresh``)."""
    return _with_ref(TRANSFER_REF_KEY, metadata, tenant_id, transfer_id)


def read_transfer_ref(metadata: Any) -> tuple[str, str] | None:
    """(tenant id, transfer id) from a Transfer's metadata, if it names them."""
    return _read_ref(TRANSFER_REF_KEY, metadata)


def connected_account_ref(
    metadata: Mapping[str, str], tenant_id: str, account_id: str
) -> dict[str, str]:
    """As ``payment_ref``, for a connected account (one not found from a webhook is read
    back by ``connected_account.refresh``)."""
    return _with_ref(CONNECTED_ACCOUNT_REF_KEY, metadata, tenant_id, account_id)


def invoice_ref(metadata: Mapping[str, str], tenant_id: str, invoice_id: str) -> dict[str, str]:
    """As ``payment_ref``, for a one-off invoice (one not found from a webhook is read
    back by ``invoice.refresh``)."""
    return _with_ref(INVOICE_REF_KEY, metadata, tenant_id, invoice_id)


def read_invoice_ref(metadata: Any) -> tuple[str, str] | None:
    """(tenant id, invoice id) from an Invoice's metadata, if it names them."""
    return _read_ref(INVOICE_REF_KEY, metadata)


def read_connected_account_ref(metadata: Any) -> tuple[str, str] | None:
    """(tenant id, connected account id) from an Account's metadata, if it names them."""
    return _read_ref(CONNECTED_ACCOUNT_REF_KEY, metadata)


def _with_ref(key: str, metadata: Mapping[str, str], tenant_id: str, own_id: str) -> dict[str, str]:
    if key not in metadata and len(metadata) >= METADATA_KEYS_MAX:
        return dict(metadata)
    return {**metadata, key: f"{tenant_id}:{own_id}"}


def read_payment_ref(metadata: Any) -> tuple[str, str] | None:
    """(tenant id, payment id) from a provider object's metadata, if it names them."""
    return _read_ref(PAYMENT_REF_KEY, metadata)


def read_refund_ref(metadata: Any) -> tuple[str, str] | None:
    """(tenant id, refund id) from a provider object's metadata, if it names them."""
    return _read_ref(REFUND_REF_KEY, metadata)


def read_subscription_ref(metadata: Any) -> tuple[str, str] | None:
    """(tenant id, subscription id) from a provider object's metadata, if it names them."""
    return _read_ref(SUBSCRIPTION_REF_KEY, metadata)


def read_payout_ref(metadata: Any) -> tuple[str, str] | None:
    """(tenant id, payout id) from a provider object's metadata, if it names them."""
    return _read_ref(PAYOUT_REF_KEY, metadata)


def _read_ref(key: str, metadata: Any) -> tuple[str, str] | None:
    ref = metadata.get(key) if isinstance(metadata, Mapping) else None
    if not isinstance(ref, str):
        return None
    tenant_id, sep, own_id = ref.partition(":")
    return (tenant_id, own_id) if sep and tenant_id and own_id else None


class CaptureMethod(StrEnum):
    AUTOMATIC = "automatic"
    MANUAL = "manual"


class PaymentStatus(StrEnum):
    """Provider-neutral payment status (Stripe PaymentIntent statuses folded)."""

    REQUIRES_ACTION = "requires_action"
    PROCESSING = "processing"  # accepted, result pending (async methods); a webhook settles it
    AUTHORIZED = "authorized"  # requires_capture
    SUCCEEDED = "succeeded"
    CANCELED = "canceled"
    FAILED = "failed"


class RefundStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class DisputeStatus(StrEnum):
    NEEDS_RESPONSE = "needs_response"
    UNDER_REVIEW = "under_review"
    WON = "won"
    LOST = "lost"
    # An inquiry (Stripe's "warning" disputes: a question before any chargeback, no funds
    # withdrawn) that closed without one: neither won nor lost, no money moved.
    INQUIRY_CLOSED = "inquiry_closed"


class SubscriptionStatus(StrEnum):
    """Provider-neutral subscription status (Stripe's, folded: incomplete_expired is
    canceled, unpaid is past_due)."""

    TRIALING = "trialing"
    ACTIVE = "active"
    PAST_DUE = "past_due"  # a renewal's invoice is open: its payment declined
    CANCELED = "canceled"
    # The first invoice's payment was declined at create: never active (subscription.failed).
    INCOMPLETE = "incomplete"
    # Made, its first period not paid yet: its customer pays at the provider's checkout
    # (``next_action``; Paddle's, whose subscriptions start so). Never billed until then.
    REQUIRES_ACTION = "requires_action"
    # Its billing paused (subscription.pause): nothing billed until it is resumed, by
    # subscription.resume or at its ``pause_resumes_at`` (Stripe keeps ``active`` with
    # ``pause_collection`` set: read as paused; Paddle's ``paused``).
    PAUSED = "paused"


class InvoiceStatus(StrEnum):
    DRAFT = "draft"  # a one-off invoice not finalized yet (its lines may change)
    PAID = "paid"
    # Finalized, not paid: a subscription's whose payment failed (the provider may retry
    # it), or a one-off invoice finalized, charged or sent for payment.
    OPEN = "open"
    VOID = "void"  # never to be paid (its subscription canceled, or voided)
    # A one-off invoice written off (Stripe's mark_uncollectible): still payable, or
    # voidable, at its provider. (A subscription's reads open: see stripe/mapping.py.)
    UNCOLLECTIBLE = "uncollectible"


# The invoices a subscription read lists at most (newest first).
INVOICES_LISTED_MAX = 24


class _Req(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # Fields added since the request's first release, left out of the simulator's
    # fingerprint while None (as commands' HASH_OMITS_NONE): a key a worker of the release
    # before used, re-sent after the upgrade, matches its parameters (Stripe's SDK sends
    # no None parameter: Stripe's comparison is unchanged by them anyway).
    FINGERPRINT_OMITS_NONE: ClassVar[tuple[str, ...]] = ()


# ---- requests ---------------------------------------------------------------------


class CreateCustomer(_Req):
    email: str | None = None
    name: str | None = None
    description: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)


class UpdateCustomer(_Req):
    provider_customer_id: str
    email: str | None = None
    name: str | None = None
    description: str | None = None
    metadata: dict[str, str] | None = None  # merged key by key: see merged_metadata


class RetrieveCustomer(_Req):
    """Read a customer back as the provider holds it now (a re-driven update found it
    changed since: see handlers.update_customer): a read, with no effect and no key."""

    provider_customer_id: str


def merged_metadata(current: dict[str, str], update: dict[str, str] | None) -> dict[str, str]:
    """Metadata after an update, as Stripe applies one: the given keys are set, a key
    given as "" is removed, the others stay (so an empty update changes nothing). Every
    provider and paystream's own records follow it, or the two drift apart."""
    if not update:
        return current
    merged = {**current, **update}
    return {k: v for k, v in merged.items() if v != ""}


class DeleteCustomer(_Req):
    provider_customer_id: str


class AttachPaymentMethod(_Req):
    provider_customer_id: str
    token: str  # provider token (e.g. Stripe `pm_card_visa`); never a card number


class DetachPaymentMethod(_Req):
    provider_payment_method_id: str


class CreatePayment(_Req):
    amount: Money
    provider_customer_id: str | None = None
    provider_payment_method_id: str
    capture_method: CaptureMethod = CaptureMethod.AUTOMATIC
    description: str | None = None
    statement_descriptor: str | None = None
    return_url: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    # A destination charge (Stripe Connect): the amount less the fee goes to this
    # connected account of the platform's (the provider's id); the fee (minor units of
    # ``amount``'s currency) stays with the platform. Both None for any other payment.
    destination_account: str | None = None
    application_fee_amount: int | None = None

    FINGERPRINT_OMITS_NONE: ClassVar[tuple[str, ...]] = (
        "destination_account",
        "application_fee_amount",
    )


class CapturePayment(_Req):
    provider_payment_id: str
    amount: int | None = None  # minor units; None captures the full authorised amount
    # A destination charge captured in part: the fee to collect (at most the amount
    # captured, Stripe's cap); None keeps the fee the payment was created with.
    application_fee_amount: int | None = None

    FINGERPRINT_OMITS_NONE: ClassVar[tuple[str, ...]] = ("application_fee_amount",)


class CancelPayment(_Req):
    provider_payment_id: str
    reason: str | None = None


class RetrievePayment(_Req):
    """Read a payment back as the provider holds it now (after the customer's 3-D Secure
    step or a bank debit settled there): a read, with no effect and no key of its own."""

    provider_payment_id: str


class RetrieveRefund(_Req):
    """Read a refund back as the provider holds it now: one left pending settles there,
    and one that succeeded can fail later (the card closed meanwhile: Stripe's
    ``refund.failed``). A read, with no effect and no key of its own."""

    provider_refund_id: str


class CreateRefund(_Req):
    provider_payment_id: str
    amount: int | None = None  # minor units; None refunds what remains
    reason: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    # A destination charge's refund: the transfer to the connected account reversed by
    # the refunded share, and the application fee refunded pro rata (Stripe's options).
    reverse_transfer: bool | None = None
    refund_application_fee: bool | None = None

    FINGERPRINT_OMITS_NONE: ClassVar[tuple[str, ...]] = (
        "reverse_transfer",
        "refund_application_fee",
    )


class SubmitDisputeEvidence(_Req):
    provider_dispute_id: str
    evidence: dict[str, str]
    submit: bool = True


class AcceptDispute(_Req):
    provider_dispute_id: str


class TaxRateRef(_Req):
    """A tax rate as made at the provider (create_tax_rate), for what it is applied to."""

    provider_tax_rate_id: str
    percentage: str  # a decimal string (paystream.tax.parse_percentage)
    inclusive: bool


class CreateSubscription(_Req):
    """Bill ``amount`` every ``interval_count`` ``interval`` s to a saved payment method.
    Money-moving: the first period's invoice is charged at once (none during a trial)."""

    provider_customer_id: str
    provider_payment_method_id: str
    amount: Money
    interval: str  # day | week | month | year
    interval_count: int = 1
    trial_days: int = 0
    description: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    # Tax rates applied to every invoice (Stripe: default_tax_rates): exclusive ones
    # added to ``amount``, inclusive ones contained in it (paystream.tax's arithmetic).
    tax_rates: tuple[TaxRateRef, ...] = ()


class CreateTaxRate(_Req):
    """A tax rate, as Stripe's TaxRate: never changed once made, only archived."""

    display_name: str
    percentage: str  # a decimal string, 0 to 100, at most 4 decimal places
    inclusive: bool
    country: str  # ISO 3166-1 alpha-2
    state: str | None = None
    jurisdiction: str | None = None
    tax_type: str | None = None
    description: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)


class ArchiveTaxRate(_Req):
    provider_tax_rate_id: str


class CancelSubscription(_Req):
    provider_subscription_id: str
    at_period_end: bool = False


class PauseSubscription(_Req):
    """Stop billing a subscription now: nothing is billed while it is paused (Stripe's
    ``pause_collection`` with ``behavior: void``; Paddle's pause, ``effective_from:
    immediately``). ``resumes_at``: when its provider resumes it by itself, unix
    seconds (as Stripe's; None: only a resume does)."""

    provider_subscription_id: str
    resumes_at: int | None = None


class ResumeSubscription(_Req):
    """Bill a paused subscription again, now (each provider's rule for its period: see
    the gateways' resume_subscription)."""

    provider_subscription_id: str


class UpdateSubscription(_Req):
    """Change a live subscription: its price per period (``amount``, in its own
    currency), the customer's payment method it bills, its cancel at period end. None:
    left as it is. A new amount is billed from the next period on (a trial's first
    invoice included); ``proration`` (Stripe's proration_behavior, with an amount only)
    settles the period under way: ``none`` not at all, ``create_prorations`` by two
    proration lines on the next invoice, ``always_invoice`` by those lines invoiced and
    charged now (paystream.proration)."""

    provider_subscription_id: str
    amount: Money | None = None
    provider_payment_method_id: str | None = None
    cancel_at_period_end: bool | None = None
    # None: ``none`` (and left out of the simulator's request fingerprint, so an update
    # asked before this field answers its replay alike); else "create_prorations" or
    # "always_invoice" (PRORATIONS).
    proration: str | None = None
    # A trialing subscription's trial: "now" ends it (the first period invoiced and
    # charged now, under the update's key), unix seconds ahead move its end (nothing
    # charged now). None: left as it is (and out of the simulator's fingerprint).
    trial_end: Literal["now"] | int | None = None

    FINGERPRINT_OMITS_NONE: ClassVar[tuple[str, ...]] = ("proration", "trial_end")


# UpdateSubscription.proration's values (None: none).
PRORATIONS = frozenset({"create_prorations", "always_invoice"})


class PayoutStatus(StrEnum):
    """Stripe's payout statuses: pending → in_transit → paid; pending → canceled;
    pending or in_transit → failed, and paid → failed (the bank returns it, up to a few
    business days after)."""

    PENDING = "pending"
    IN_TRANSIT = "in_transit"
    PAID = "paid"
    FAILED = "failed"
    CANCELED = "canceled"


class CreatePayout(_Req):
    """Send ``amount`` of the available balance to the account's default destination for
    its currency (a money-moving create: keyed)."""

    amount: Money
    method: str = "standard"  # standard | instant
    description: str | None = None
    statement_descriptor: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)


class CancelPayout(_Req):
    provider_payout_id: str


class RetrievePayout(_Req):
    """Read a payout back (a read: no key of its own)."""

    provider_payout_id: str


class RetrieveBalance(_Req):
    """Read the account's balance (a read: no key of its own)."""


class TransferStatus(StrEnum):
    """paystream's statuses of a transfer (Stripe's Transfer has none: it is made whole,
    then reversed in parts): created → partially_reversed → reversed (final)."""

    CREATED = "created"
    PARTIALLY_REVERSED = "partially_reversed"
    REVERSED = "reversed"


class CreateTransfer(_Req):
    """Move ``amount`` of the platform's balance to a connected account (Stripe's
    separate charges and transfers: a money-moving create, keyed). With
    ``source_payment_id`` (the provider's payment: Stripe's source_transaction is its
    charge) the funds are that charge's, at most what is left of it."""

    amount: Money
    destination_account: str
    source_payment_id: str | None = None
    transfer_group: str | None = None
    description: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)


class ReverseTransfer(_Req):
    """Take back ``amount`` (None: all that is left) of a transfer (keyed)."""

    provider_transfer_id: str
    amount: int | None = None
    metadata: dict[str, str] = Field(default_factory=dict)


class RetrieveTransfer(_Req):
    """Read a transfer back: what is reversed of it now, by paystream's commands or
    outside them (the provider's dashboard, its own recoveries). A read: no key."""

    provider_transfer_id: str


class ConnectedAccountStatus(StrEnum):
    """paystream's statuses of a connected account, derived from its provider's flags
    (tables/state_machines.connected_account_status): pending → enabled | restricted |
    rejected; enabled ↔ restricted; rejected is final."""

    PENDING = "pending"
    ENABLED = "enabled"
    RESTRICTED = "restricted"
    REJECTED = "rejected"


class ConnectedAccountType(StrEnum):
    """Stripe Connect's account types paystream makes: ``express`` (onboarded and managed
    in Stripe's own pages) or ``custom`` (the platform collects everything)."""

    EXPRESS = "express"
    CUSTOM = "custom"


class CreateConnectedAccount(_Req):
    """A merchant's account under the tenant's platform account (Stripe: POST
    /v1/accounts, on the platform's own key; never under a connected account)."""

    type: ConnectedAccountType = ConnectedAccountType.EXPRESS
    country: str  # ISO 3166-1 alpha-2
    email: str | None = None
    business_type: str | None = None  # individual | company | non_profit | government_entity
    # Capabilities requested: card_payments, transfers.
    capabilities: tuple[str, ...] = ()
    metadata: dict[str, str] = Field(default_factory=dict)


class CreateAccountLink(_Req):
    """A short-lived onboarding URL for the account's holder (Stripe: POST
    /v1/account_links, type account_onboarding). A bearer credential: never logged."""

    provider_account_id: str
    refresh_url: str
    return_url: str


class RetrieveConnectedAccount(_Req):
    """Read a connected account back (a read: no key of its own)."""

    provider_account_id: str


class InvoiceLine(_Req):
    description: str
    unit_amount: int  # minor units, in the invoice's currency
    quantity: int = 1


class CreateInvoice(_Req):
    """A draft one-off invoice of ``lines`` to a customer (not charged: see
    pay_invoice). ``provider_payment_method_id``: the saved method it is to be charged
    to (Stripe's default_payment_method); ``days_until_due``: a sent invoice's."""

    provider_customer_id: str
    currency: str
    lines: tuple[InvoiceLine, ...]
    tax_rates: tuple[TaxRateRef, ...] = ()
    collection_method: str = "charge_automatically"  # | send_invoice
    days_until_due: int | None = None
    provider_payment_method_id: str | None = None
    description: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)


class UpdateInvoice(_Req):
    """Change a draft invoice (Stripe: POST /v1/invoices/{id}, and its invoice items
    deleted and added): ``lines`` replace its lines whole (None: kept), a sent invoice's
    ``days_until_due``, its ``description``, its ``metadata`` (merged as
    :func:`merged_metadata`). Sent again under its key it sets the same lines: none added
    twice, however the call before was cut."""

    provider_invoice_id: str
    # The invoice's, as made (its new total is checked before any call: see
    # CreateInvoice; a provider reads its own).
    currency: str
    tax_rates: tuple[TaxRateRef, ...] = ()
    lines: tuple[InvoiceLine, ...] | None = None
    description: str | None = None
    days_until_due: int | None = None
    metadata: dict[str, str] | None = None


class FinalizeInvoice(_Req):
    provider_invoice_id: str
    # The draft's lines as paystream recorded them: a provider that replaces a draft's
    # lines in several calls (Stripe's invoice items) refuses, ``invalid_state`` before it
    # is finalized, a draft still holding others (an update of its lines unfinished, or
    # changed elsewhere). A precondition, never sent: None (not checked) in the
    # simulator's fingerprint, so a key the release before used matches.
    lines: tuple[InvoiceLine, ...] | None = None

    FINGERPRINT_OMITS_NONE: ClassVar[tuple[str, ...]] = ("lines",)


class PayInvoice(_Req):
    """Charge an open invoice (off-session) to ``provider_payment_method_id``, else the
    method it names (a money-moving call: keyed). A decline is raised as the card's
    error (402), the invoice left open."""

    provider_invoice_id: str
    provider_payment_method_id: str | None = None


class VoidInvoice(_Req):
    provider_invoice_id: str
    # The invoice as recorded, when a draft: a provider that deletes a draft instead of
    # voiding it (Stripe) answers a void sent again, the draft gone, as void with it.
    draft_amount: Money | None = None


class MarkInvoiceUncollectible(_Req):
    """Write an open invoice off (Stripe: POST /v1/invoices/{id}/mark_uncollectible): no
    longer collected, yet still payable, or voidable, at its provider."""

    provider_invoice_id: str


class RetrieveInvoice(_Req):
    """Read an invoice back (a read: no key of its own)."""

    provider_invoice_id: str


class RetrieveSubscription(_Req):
    """Read a subscription back with its invoices (renewals made since): a read, with no
    effect of paystream's and no key of its own (the provider bills renewals on its own
    clock, whether read or not)."""

    provider_subscription_id: str


# ---- results ----------------------------------------------------------------------


class _Res(BaseModel):
    model_config = ConfigDict(frozen=True)


class CustomerResult(_Res):
    provider_customer_id: str
    deleted: bool = False


class CustomerDetails(CustomerResult):
    """A customer as the provider holds it: the fields paystream writes there."""

    email: str | None = None
    name: str | None = None
    description: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)


class PaymentMethodResult(_Res):
    """What paystream may keep of a card: token, brand, last4, expiry, fingerprint."""

    provider_payment_method_id: str
    provider_customer_id: str | None = None
    brand: str | None = None
    last4: str | None = None
    exp_month: int | None = None
    exp_year: int | None = None
    fingerprint: str | None = None


class DisputeResult(_Res):
    provider_dispute_id: str
    status: DisputeStatus
    amount: Money | None = None
    # The cardholder's bank's reason (Stripe's: fraudulent, product_not_received, ...) and
    # when evidence is due: past it the dispute is lost unanswered.
    reason: str | None = None
    evidence_due_by: datetime | None = None
    # The provider's fee for the dispute, withdrawn with the disputed amount as it opened
    # (Stripe's dispute balance transactions' ``fee``; the simulator's, README "Payouts
    # and balances"). None where the provider tells none (Square's, an inquiry's).
    fee: Money | None = None


class PaymentResult(_Res):
    provider_payment_id: str
    status: PaymentStatus
    amount: Money
    amount_captured: int = 0
    amount_refunded: int = 0
    failure_code: str | None = None
    failure_message: str | None = None
    next_action: dict[str, Any] | None = None  # e.g. redirect URL for 3DS
    provider_charge_id: str | None = None
    # A dispute the provider opened on this payment (e.g. simulator token pm_card_createDispute):
    # the newest, where it lists more than one.
    dispute: DisputeResult | None = None
    # Every dispute the provider lists for the payment, newest first (``dispute`` is the
    # first): a charge disputed again (an inquiry closed, then a chargeback) has more
    # than one, and the one paystream recorded is read back from its own entry.
    disputes: tuple[DisputeResult, ...] = ()
    # A destination charge's application fee as the provider holds it (Stripe's
    # PaymentIntent; None where it tells none): a payment declined, then paid, takes
    # it again.
    application_fee_amount: int | None = None


class RefundResult(_Res):
    provider_refund_id: str
    provider_payment_id: str
    status: RefundStatus
    amount: Money
    failure_code: str | None = None


class ProrationLineResult(_Res):
    """A proration line of a subscription's price change (Stripe's invoice line with
    ``proration: true``): ``amount`` negative for the unused time's credit."""

    description: str
    amount: int
    period_start: datetime
    period_end: datetime


class InvoiceResult(_Res):
    """One period's invoice of a subscription, or a one-off invoice (no period)."""

    provider_invoice_id: str
    status: InvoiceStatus
    amount: Money
    period_start: datetime | None = None
    period_end: datetime | None = None
    # A sent one-off invoice's, once finalized.
    due_date: datetime | None = None
    # The provider's payment for it (its last attempt), where it names one.
    provider_payment_id: str | None = None
    failure_code: str | None = None
    failure_message: str | None = None
    # With tax: ``subtotal``, ``tax`` and ``total`` as the provider reports them (None:
    # it reports none, an invoice without tax rates). ``total`` is the subtotal plus
    # exclusive tax; ``amount`` is what was paid or is due, which a customer's credit
    # balance (or a coupon added at the provider) makes less than it (Stripe's
    # amount_paid / amount_due beside its total; review h74h).
    subtotal: int | None = None
    tax: int | None = None
    total: int | None = None
    # A subscription's invoice: the proration lines on it (a price change's, made with
    # ``always_invoice``: its own invoice; with ``create_prorations``: the next one's).
    proration_lines: tuple[ProrationLineResult, ...] = ()
    # A one-off draft's lines as the provider holds them now (every one, made by
    # paystream or not, in its order), read with it: the total's lines, recorded with it
    # (an update whose answer was lost may have replaced them). None where the provider
    # cannot say, or did not read them (not a draft: its lines can change no more), or
    # cannot tell them whole (at Stripe: an update's replacement parked part way).
    line_items: tuple[InvoiceLine, ...] | None = None


class TaxRateResult(_Res):
    provider_tax_rate_id: str
    active: bool


class SubscriptionResult(_Res):
    provider_subscription_id: str
    status: SubscriptionStatus
    amount: Money
    interval: str
    interval_count: int
    current_period_start: datetime
    current_period_end: datetime
    trial_end: datetime | None = None
    cancel_at_period_end: bool = False
    canceled_at: datetime | None = None
    # Its invoices, newest first, at most INVOICES_LISTED_MAX.
    invoices: tuple[InvoiceResult, ...] = ()
    # The payment method it bills (Stripe: its default_payment_method); None when the
    # provider names none (Stripe then bills the customer's default).
    provider_payment_method_id: str | None = None
    # ``requires_action``: where its customer pays the first period (a checkout URL, as
    # a payment's next_action).
    next_action: dict[str, Any] | None = None
    # Proration lines made with ``create_prorations`` and not invoiced yet (Stripe's
    # pending invoice items): on its next invoice.
    pending_prorations: tuple[ProrationLineResult, ...] = ()
    # ``paused``: when its provider resumes it by itself (None: only a resume does).
    pause_resumes_at: datetime | None = None


class PayoutResult(_Res):
    provider_payout_id: str
    status: PayoutStatus
    amount: Money
    method: str = "standard"
    # When it is expected to arrive (Stripe's arrival_date); paid: when it did.
    arrival_date: datetime
    # Failed: Stripe's payout failure code (account_closed, no_account, ...), and message.
    failure_code: str | None = None
    failure_message: str | None = None


class ConnectedAccountResult(_Res):
    """A connected account as its provider holds it: what it may do now, and what its
    holder still has to give (requirements' names only, never their values)."""

    provider_account_id: str
    type: str
    country: str
    charges_enabled: bool
    payouts_enabled: bool
    details_submitted: bool
    # requirements.currently_due: the names of what is due now (Stripe's field paths).
    currently_due: tuple[str, ...] = ()
    # requirements.disabled_reason (requirements.past_due, rejected.fraud, ...): None
    # while nothing disables it.
    disabled_reason: str | None = None


class AccountLinkResult(_Res):
    """An onboarding link: ``url`` is a bearer credential for the account's onboarding,
    valid until ``expires_at`` (Stripe: minutes) and for one visit."""

    url: str
    expires_at: datetime


class TransferResult(_Res):
    """A transfer to a connected account as its provider holds it: what was sent, and
    how much of it has been reversed since (Stripe's amount_reversed, reversed)."""

    provider_transfer_id: str
    amount: Money
    amount_reversed: int = 0
    destination_account: str
    # The provider's charge the funds came from (Stripe's source_transaction), if any.
    source_transaction: str | None = None
    transfer_group: str | None = None


class BalanceAmount(_Res):
    """One currency's balance: minor units, either may be negative (refunds, and disputes'
    amounts and fees as they open, taken from an available balance that held less)."""

    currency: str
    available: int
    pending: int


class BalanceResult(_Res):
    """The account's balance, one entry per currency it holds any in (sorted by code)."""

    balances: tuple[BalanceAmount, ...] = ()


# ---- the protocol -----------------------------------------------------------------

# The capability each protocol operation needs; a gateway checks it before calling out, so
# an operation the tenant's provider lacks fails fast with `unsupported` and no side effect.
# Operations providers take no idempotency key for (Stripe's DELETE): a retry runs afresh.
# A read takes none either (Stripe ignores a key on GET): asked again, it answers afresh.
KEYLESS_OPERATIONS = frozenset(
    {
        "delete_customer",
        "retrieve_customer",
        "retrieve_payment",
        "retrieve_refund",
        "retrieve_subscription",
        "retrieve_payout",
        "retrieve_balance",
        "retrieve_connected_account",
        "retrieve_invoice",
        "retrieve_transfer",
    }
)

# Operations that move money: run twice under a key the provider has forgotten, they move
# it twice (what a customer record or a dispute's evidence sent again does not).
# (A subscription's create charges its first invoice.)
MONEY_MOVING_OPERATIONS = frozenset(
    {
        "create_payment",
        "capture_payment",
        "create_refund",
        "create_subscription",
        "create_payout",
        "pay_invoice",
        "create_transfer",
        "reverse_transfer",
    }
)

OPERATION_CAPABILITY: dict[str, Capability] = {
    "create_customer": Capability.CUSTOMERS,
    "update_customer": Capability.CUSTOMERS,
    "delete_customer": Capability.CUSTOMERS,
    "retrieve_customer": Capability.CUSTOMERS,
    "attach_payment_method": Capability.PAYMENT_METHODS,
    "detach_payment_method": Capability.PAYMENT_METHODS,
    "create_payment": Capability.PAYMENTS,
    "capture_payment": Capability.MANUAL_CAPTURE,
    "cancel_payment": Capability.PAYMENTS,
    "retrieve_payment": Capability.PAYMENTS,
    "create_refund": Capability.REFUNDS,
    "retrieve_refund": Capability.REFUNDS,
    "submit_dispute_evidence": Capability.DISPUTES,
    "accept_dispute": Capability.DISPUTES,
    "create_subscription": Capability.SUBSCRIPTIONS,
    "cancel_subscription": Capability.SUBSCRIPTIONS,
    # (a tenant's own: a new price or card bills more, as a create's; narrowed out, a
    # cancel at period end alone is still scheduled or resumed: unnarrowed)
    "update_subscription": Capability.SUBSCRIPTIONS,
    # (a pause stops billing: unnarrowed, as a cancel; a resume bills again: the tenant's)
    "pause_subscription": Capability.SUBSCRIPTIONS,
    "resume_subscription": Capability.SUBSCRIPTIONS,
    "retrieve_subscription": Capability.SUBSCRIPTIONS,
    "create_payout": Capability.PAYOUTS,
    "cancel_payout": Capability.PAYOUTS,
    "retrieve_payout": Capability.PAYOUTS,
    "retrieve_balance": Capability.PAYOUTS,
    "create_tax_rate": Capability.TAX,
    "archive_tax_rate": Capability.TAX,
    "create_connected_account": Capability.CONNECTED_ACCOUNTS,
    "create_account_link": Capability.CONNECTED_ACCOUNTS,
    "retrieve_connected_account": Capability.CONNECTED_ACCOUNTS,
    # (a transfer's reversal moves money back: the tenant's to be given, as a refund)
    "create_transfer": Capability.CONNECTED_ACCOUNTS,
    "reverse_transfer": Capability.CONNECTED_ACCOUNTS,
    "retrieve_transfer": Capability.CONNECTED_ACCOUNTS,
    "create_invoice": Capability.INVOICES,
    "update_invoice": Capability.INVOICES,
    "finalize_invoice": Capability.INVOICES,
    "pay_invoice": Capability.INVOICES,
    "void_invoice": Capability.INVOICES,
    "mark_invoice_uncollectible": Capability.INVOICES,
    "retrieve_invoice": Capability.INVOICES,
}

# Operations that stop, or read back, what the provider already holds for the tenant:
# they need only the provider's capability, never the tenant's. A tenant's
# ``capabilities`` option narrows what it may start; narrowed out, a live subscription
# kept billing with its cancel (and its webhooks' refreshes) refused `unsupported`, and
# an authorization could not be released (review h73u). (A capture or a refund moves
# money: it stays the tenant's to be given.)
UNNARROWED_OPERATIONS = frozenset(
    {
        "cancel_subscription",
        "pause_subscription",
        "retrieve_subscription",
        # (an archived rate is applied to nothing new: a stop, as a cancel is)
        "archive_tax_rate",
        "cancel_payment",
        "retrieve_payment",
        "retrieve_refund",
        # A payout made stays the tenant's to stop or read back (its money is on its way).
        "cancel_payout",
        "retrieve_payout",
        # A connected account made stays the tenant's to read back (its merchant onboards
        # whatever the tenant's options say now).
        "retrieve_connected_account",
        # A transfer made stays the tenant's to read back (a reversal made outside
        # paystream changes what its payment may still refund).
        "retrieve_transfer",
        # An invoice made stays the tenant's to void or read back (its customer has it).
        "void_invoice",
        # (a write-off stops collecting, as a void does: it starts nothing)
        "mark_invoice_uncollectible",
        "retrieve_invoice",
    }
)


def unnarrowed(operation: str, req: BaseModel | None = None) -> bool:
    """Does ``operation`` (asked ``req``, where that tells) need only its provider's
    capability (UNNARROWED_OPERATIONS)? An update_subscription that only schedules or
    resumes a cancel at period end bills nothing new: a cancel's, open to a tenant whose
    capabilities leave subscriptions out; a new price or payment method bills more: the
    tenant's, as a create's, and so does a trial ended now or moved (its billing)."""
    if isinstance(req, UpdateSubscription) and operation == "update_subscription":
        return (
            req.amount is None and req.provider_payment_method_id is None and req.trial_end is None
        )
    return operation in UNNARROWED_OPERATIONS


def supports(
    operation: str, capabilities: frozenset[Capability], offered: frozenset[Capability]
) -> bool:
    """May a gateway make ``operation`` for a tenant given ``capabilities`` of the
    ``offered`` (its provider's, in full)? See UNNARROWED_OPERATIONS."""
    held = offered if unnarrowed(operation) else capabilities
    return OPERATION_CAPABILITY[operation] in held


def require_capability(
    capability: Capability,
    what: str,
    capabilities: frozenset[Capability],
    offered: frozenset[Capability],
    provider: str,
) -> None:
    """UnsupportedOperation for ``what`` unless ``capability`` is in ``capabilities``
    (the tenant's): worded as the provider's lack when ``offered`` (the provider's, in
    full) lacks it too, else as the tenant's ``capabilities`` option leaving it out.
    Every provider's gateway, and the handlers' checks before a call, answer by it."""
    if capability in capabilities:
        return
    raise UnsupportedOperation(
        provider, what, left_out=capability.value if capability in offered else None
    )


def require_operation(
    operation: str,
    capabilities: frozenset[Capability],
    offered: frozenset[Capability],
    provider: str,
    req: BaseModel | None = None,
) -> None:
    """``require_capability`` for a gateway ``operation`` asked ``req`` (a stop or a read
    of what the provider holds needs only ``offered``: unnarrowed)."""
    held = offered if unnarrowed(operation, req) else capabilities
    require_capability(OPERATION_CAPABILITY[operation], operation, held, offered, provider)


@dataclass(frozen=True)
class GatewayContext:
    """What a gateway factory needs to build a gateway for one tenant."""

    tenant_id: str
    provider: str
    credentials: Mapping[str, SecretStr] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    connected_account: str | None = None


@runtime_checkable
class PaymentGateway(Protocol):
    """One provider, bound to one tenant. Errors are raised as ``GatewayError``."""

    provider: str
    # What this tenant may do: its provider's, or as its ``capabilities`` option narrows
    # them; ``offered``: its provider's in full (an `unsupported` answer says which of
    # the two left an operation out: require_capability).
    capabilities: frozenset[Capability]
    offered: frozenset[Capability]

    async def create_customer(
        self, req: CreateCustomer, *, idempotency_key: str
    ) -> CustomerResult: ...

    async def update_customer(
        self, req: UpdateCustomer, *, idempotency_key: str
    ) -> CustomerResult: ...

    async def delete_customer(
        self, req: DeleteCustomer, *, idempotency_key: str
    ) -> CustomerResult: ...

    async def retrieve_customer(
        self, req: RetrieveCustomer, *, idempotency_key: str
    ) -> CustomerDetails:
        """The customer as the provider holds it now (a read: see retrieve_payment)."""
        ...

    async def attach_payment_method(
        self, req: AttachPaymentMethod, *, idempotency_key: str
    ) -> PaymentMethodResult: ...

    async def detach_payment_method(
        self, req: DetachPaymentMethod, *, idempotency_key: str
    ) -> PaymentMethodResult: ...

    async def create_payment(
        self, req: CreatePayment, *, idempotency_key: str
    ) -> PaymentResult: ...

    async def capture_payment(
        self, req: CapturePayment, *, idempotency_key: str
    ) -> PaymentResult: ...

    async def cancel_payment(
        self, req: CancelPayment, *, idempotency_key: str
    ) -> PaymentResult: ...

    async def retrieve_payment(
        self, req: RetrievePayment, *, idempotency_key: str
    ) -> PaymentResult:
        """The payment as the provider holds it now. ``idempotency_key`` names the call
        (the simulator's failure injection counts by it); no provider keys a read."""
        ...

    async def create_refund(self, req: CreateRefund, *, idempotency_key: str) -> RefundResult: ...

    async def retrieve_refund(self, req: RetrieveRefund, *, idempotency_key: str) -> RefundResult:
        """The refund as the provider holds it now (a read: see retrieve_payment)."""
        ...

    async def submit_dispute_evidence(
        self, req: SubmitDisputeEvidence, *, idempotency_key: str
    ) -> DisputeResult: ...

    async def accept_dispute(
        self, req: AcceptDispute, *, idempotency_key: str
    ) -> DisputeResult: ...

    async def create_subscription(
        self, req: CreateSubscription, *, idempotency_key: str
    ) -> SubscriptionResult:
        """A subscription, its first invoice charged (none during a trial). A first
        invoice declined is no error: the subscription answers ``incomplete``, its
        invoice ``open`` with the decline."""
        ...

    async def cancel_subscription(
        self, req: CancelSubscription, *, idempotency_key: str
    ) -> SubscriptionResult: ...

    async def update_subscription(
        self, req: UpdateSubscription, *, idempotency_key: str
    ) -> SubscriptionResult:
        """The subscription changed (what ``req`` leaves None kept), the periods its
        provider's clock began before billed first; nothing prorated."""
        ...

    async def retrieve_subscription(
        self, req: RetrieveSubscription, *, idempotency_key: str
    ) -> SubscriptionResult:
        """The subscription as the provider holds it now, with its invoices (a read: see
        retrieve_payment)."""
        ...

    async def pause_subscription(
        self, req: PauseSubscription, *, idempotency_key: str
    ) -> SubscriptionResult:
        """The subscription ``paused``: nothing billed until resumed (see
        PauseSubscription)."""
        ...

    async def resume_subscription(
        self, req: ResumeSubscription, *, idempotency_key: str
    ) -> SubscriptionResult:
        """A paused subscription billing again (``active``)."""
        ...

    async def create_payout(self, req: CreatePayout, *, idempotency_key: str) -> PayoutResult:
        """A payout of available balance; more than is available is refused with
        ``ErrorCode.BALANCE_INSUFFICIENT`` (Stripe's ``balance_insufficient``)."""
        ...

    async def cancel_payout(self, req: CancelPayout, *, idempotency_key: str) -> PayoutResult:
        """Cancel a pending payout: its amount is available again."""
        ...

    async def retrieve_payout(self, req: RetrievePayout, *, idempotency_key: str) -> PayoutResult:
        """The payout as the provider holds it now (a read: see retrieve_payment)."""
        ...

    async def retrieve_balance(
        self, req: RetrieveBalance, *, idempotency_key: str
    ) -> BalanceResult:
        """The account's balance now, per currency (a read: see retrieve_payment)."""
        ...

    async def create_tax_rate(
        self, req: CreateTaxRate, *, idempotency_key: str
    ) -> TaxRateResult: ...

    async def archive_tax_rate(self, req: ArchiveTaxRate, *, idempotency_key: str) -> TaxRateResult:
        """Deactivate the rate (Stripe: active=false): applied to nothing new."""
        ...

    async def create_connected_account(
        self, req: CreateConnectedAccount, *, idempotency_key: str
    ) -> ConnectedAccountResult:
        """A connected account under the tenant's platform account (not under a connected
        account: a tenant acting for one is refused `unsupported` before any call)."""
        ...

    async def create_account_link(
        self, req: CreateAccountLink, *, idempotency_key: str
    ) -> AccountLinkResult:
        """An onboarding link for the account (never logged: a bearer URL)."""
        ...

    async def retrieve_connected_account(
        self, req: RetrieveConnectedAccount, *, idempotency_key: str
    ) -> ConnectedAccountResult:
        """The connected account as the provider holds it now (a read: see
        retrieve_payment)."""
        ...

    async def create_transfer(self, req: CreateTransfer, *, idempotency_key: str) -> TransferResult:
        """A transfer to a connected account of the platform's: more than the available
        balance (without a source payment) is refused ``ErrorCode.BALANCE_INSUFFICIENT``
        (Stripe's ``balance_insufficient``); more than is left of the source payment
        ``ErrorCode.INVALID_REQUEST``. Never for a tenant acting for a connected account
        (a transfer is the platform's: refused `unsupported` before any call)."""
        ...

    async def reverse_transfer(
        self, req: ReverseTransfer, *, idempotency_key: str
    ) -> TransferResult:
        """The transfer with ``req.amount`` (or all that is left) reversed to the
        platform; more than is left is refused ``ErrorCode.INVALID_REQUEST``."""
        ...

    async def retrieve_transfer(
        self, req: RetrieveTransfer, *, idempotency_key: str
    ) -> TransferResult:
        """The transfer as the provider holds it now, its reversals made anywhere counted
        (a read: see retrieve_payment)."""
        ...

    async def create_invoice(self, req: CreateInvoice, *, idempotency_key: str) -> InvoiceResult:
        """A draft one-off invoice of the request's lines (nothing charged)."""
        ...

    async def update_invoice(self, req: UpdateInvoice, *, idempotency_key: str) -> InvoiceResult:
        """A draft invoice changed (its lines replaced whole), still a draft."""
        ...

    async def finalize_invoice(
        self, req: FinalizeInvoice, *, idempotency_key: str
    ) -> InvoiceResult:
        """A draft made open: its total fixed (a sent one's due date counted from now)."""
        ...

    async def pay_invoice(self, req: PayInvoice, *, idempotency_key: str) -> InvoiceResult:
        """Charge an open invoice's amount due; a decline raises the card's error."""
        ...

    async def void_invoice(self, req: VoidInvoice, *, idempotency_key: str) -> InvoiceResult:
        """A draft, open or uncollectible invoice voided: never to be paid."""
        ...

    async def mark_invoice_uncollectible(
        self, req: MarkInvoiceUncollectible, *, idempotency_key: str
    ) -> InvoiceResult:
        """An open invoice written off (uncollectible): still payable or voidable."""
        ...

    async def retrieve_invoice(
        self, req: RetrieveInvoice, *, idempotency_key: str
    ) -> InvoiceResult:
        """The invoice as the provider holds it now (a read: see retrieve_payment)."""
        ...

    async def knows_request(
        self, operation: str, req: BaseModel, *, idempotency_key: str
    ) -> bool | None:
        """Has the provider finished this very request (``operation``, a method of this
        protocol, with ``req``'s parameters) under the key, and will it keep answering
        the key with it for at least an hour more (the command is run again on the
        strength of the answer)? Asked without acting on anything; None when the
        provider cannot tell that way (Stripe has no such lookup: a request resent
        under the key would run). Raises when the provider cannot be asked now; a
        retryable ``idempotency_error`` when it cannot tell now because a try of the
        request may still be made (Paddle's in-flight key held): the provider did not
        fail, and its other lookups go on."""
        ...

    async def aclose(self) -> None:
        """Release connections (HTTP sessions, Redis pools)."""
        ...

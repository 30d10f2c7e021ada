"""Command models: one pydantic model per command type, validated from CloudEvent data.

Entity ids are chosen by the producer or, when omitted on create, derived from the
command id, so a producer can reference an entity before its outcome arrives and a
replayed create names the same entity.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from paystream.errors import validator_said
from paystream.gateways.stripe_rules import (
    ACCOUNT_CAPABILITIES,
    account_link_url_problem,
    custom_account_capabilities_problem,
    payout_descriptor_problem,
)
from paystream.money import MAX_MINOR_AMOUNT, Currency
from paystream.streams.command_types import COMMAND_TYPES
from paystream.streams.pan import luhn_valid, redact_card_numbers
from paystream.tax import MAX_LINES, MAX_RATES_PER_LINE, parse_percentage

__all__ = [
    "COMMANDS",
    "COMMAND_PREFIX",
    "ID_MAX_CHARS",
    "AcceptDispute",
    "ArchiveTaxRate",
    "AttachPaymentMethod",
    "CalculateTax",
    "CancelPayment",
    "CancelPayout",
    "CancelSubscription",
    "CapturePayment",
    "CommandData",
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
    "DeleteCustomer",
    "DetachPaymentMethod",
    "EraseCustomer",
    "ExportCustomer",
    "FinalizeInvoice",
    "InvoiceCollection",
    "InvoiceLineItem",
    "MarkInvoiceUncollectible",
    "PauseSubscription",
    "PayInvoice",
    "PayoutMethod",
    "Proration",
    "RefreshConnectedAccount",
    "RefreshInvoice",
    "RefreshPayment",
    "RefreshPayout",
    "RefreshSubscription",
    "ResumeSubscription",
    "RetrieveBalance",
    "SubmitDisputeEvidence",
    "SubscriptionInterval",
    "TaxLineItem",
    "UpdateCustomer",
    "UpdateInvoice",
    "UpdateSubscription",
    "VoidInvoice",
    "validation_errors",
]

COMMAND_PREFIX = "com.paystream.command."
# A command's data that is not a JSON object: JSON in ``data`` is the only form read
# (the SDK gives ``data_base64``, or data of another media type, as bytes: review h61b,
# the documents called data_base64 a payload and every such command was refused).
DATA_NOT_AN_OBJECT = "data must be a JSON object (as JSON in `data`: data_base64 is not read)"
# Longest command id, tenant id or idempotency key accepted (Stripe's idempotency keys:
# 255). The worker answers a longer command id as "sha256:<digest>" and cuts a longer
# tenant id; the client refuses them, since no sender could wait for those.
ID_MAX_CHARS = 255

EntityId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
ShortText = Annotated[str, StringConstraints(max_length=500)]
Metadata = Annotated[
    dict[
        # Kept as sent: stripped, " a" and "a " were merged into "a" (one value lost),
        # and a value " " became "", which removes the key on customer.update.
        Annotated[str, StringConstraints(max_length=40, strip_whitespace=False)],
        Annotated[str, StringConstraints(max_length=500, strip_whitespace=False)],
    ],
    Field(max_length=50),
]
Email = Annotated[str, StringConstraints(max_length=254, pattern=r"^[^@\s]{1,64}@[^@\s]{1,190}$")]
# Provider tokens are opaque identifiers (pm_..., tok_..., sq0cdt-...), never card data.
_TOKEN_DIGITS = re.compile(r"[0-9](?:[_:.-]?[0-9])*")


def _not_card_data(token: str) -> str:
    """Every provider's token holds a letter; digits alone are a card's number or code
    (a CVC, or a number grouped by separators the general scan leaves to ids), and digits
    joined by the token's separators into a Luhn-valid 13-19 are a card number. The
    message never repeats the value."""
    if not any("a" <= ch.lower() <= "z" for ch in token):
        raise ValueError("a token is the provider's id for a card, never its number or code")
    for run in _TOKEN_DIGITS.findall(token):
        digits = re.sub(r"[^0-9]", "", run)
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            raise ValueError("a token is the provider's id for a card, never its number")
    return token


Token = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9_:.-]{3,255}$"), AfterValidator(_not_card_data)
]
Amount = Annotated[StrictInt, Field(ge=1, le=MAX_MINOR_AMOUNT)]


class CaptureMode(StrEnum):
    AUTO = "auto"
    MANUAL = "manual"


class CommandData(BaseModel):
    """Base of every command payload; unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    # Fields added to a command after its first release, left out of its request hash
    # while None: a command sent before (parked, or redelivered across an upgrade) keeps
    # the hash it was stored under, not an idempotency conflict with itself.
    HASH_OMITS_NONE: ClassVar[frozenset[str]] = frozenset()
    # A command with nested models or lists: its request hash is of its JSON dump (its
    # ``__dict__`` holds what orjson cannot write as the dump does).
    HASH_BY_DUMP: ClassVar[bool] = False


class CreateCustomer(CommandData):
    customer_id: EntityId | None = None
    email: Email | None = None
    name: ShortText | None = None
    description: ShortText | None = None
    metadata: Metadata = Field(default_factory=dict)


class UpdateCustomer(CommandData):
    customer_id: EntityId
    email: Email | None = None
    name: ShortText | None = None
    description: ShortText | None = None
    metadata: Metadata | None = None


class DeleteCustomer(CommandData):
    customer_id: EntityId


class EraseCustomer(CommandData):
    """Right to erasure: scrub PII here, delete at the provider, crypto-shred the ledger."""

    customer_id: EntityId


class ExportCustomer(CommandData):
    """Right of access: everything paystream holds on the customer, as one outcome."""

    customer_id: EntityId


class AttachPaymentMethod(CommandData):
    customer_id: EntityId
    token: Token
    payment_method_id: EntityId | None = None


class DetachPaymentMethod(CommandData):
    payment_method_id: EntityId


class CreatePayment(CommandData):
    payment_id: EntityId | None = None
    amount: Amount
    currency: Currency
    customer_id: EntityId | None = None
    payment_method_id: EntityId | None = None
    payment_method_token: Token | None = None
    capture: CaptureMode = CaptureMode.AUTO
    description: ShortText | None = None
    statement_descriptor: Annotated[str, StringConstraints(max_length=22)] | None = None
    return_url: Annotated[str, StringConstraints(max_length=2048)] | None = None
    metadata: Metadata = Field(default_factory=dict)
    # A `tax.calculated` whose amount_total is this payment's amount: the payment carries
    # its tax (amount_tax), for what was collected to be reported.
    tax_calculation_id: EntityId | None = None
    # A destination charge (Stripe Connect): the payment settles to this connected account
    # of the tenant's (connected_account.create), less ``application_fee_amount`` (minor
    # units of ``currency``, 0..amount), which the tenant's platform keeps.
    connected_account_id: EntityId | None = None
    application_fee_amount: Annotated[StrictInt, Field(ge=0, le=MAX_MINOR_AMOUNT)] | None = None

    HASH_OMITS_NONE: ClassVar[frozenset[str]] = frozenset(
        {"tax_calculation_id", "connected_account_id", "application_fee_amount"}
    )

    @model_validator(mode="after")
    def _one_payment_method(self) -> CreatePayment:
        if (self.payment_method_id is None) == (self.payment_method_token is None):
            raise ValueError("exactly one of payment_method_id or payment_method_token is required")
        fee = self.application_fee_amount
        if fee is not None and self.connected_account_id is None:
            raise ValueError("application_fee_amount needs connected_account_id (a destination)")
        if fee is not None and fee > self.amount:
            raise ValueError(
                f"application_fee_amount {fee} exceeds the payment's amount {self.amount}"
            )
        return self


class CapturePayment(CommandData):
    payment_id: EntityId
    amount: Amount | None = None


class CancelPayment(CommandData):
    payment_id: EntityId
    reason: Literal["duplicate", "fraudulent", "requested_by_customer", "abandoned"] | None = None


class RefreshPayment(CommandData):
    """Read a payment back from its provider: one waiting on its customer's 3-D Secure
    step (or a bank debit) takes the status the provider reports now."""

    payment_id: EntityId


class CreateRefund(CommandData):
    refund_id: EntityId | None = None
    payment_id: EntityId
    amount: Amount | None = None
    reason: Literal["duplicate", "fraudulent", "requested_by_customer"] | None = None
    metadata: Metadata = Field(default_factory=dict)
    # A destination charge's refund (Stripe's options): take the refunded share back from
    # the connected account's transfer, and give the application fee back (pro rata).
    reverse_transfer: StrictBool | None = None
    refund_application_fee: StrictBool | None = None

    HASH_OMITS_NONE: ClassVar[frozenset[str]] = frozenset(
        {"reverse_transfer", "refund_application_fee"}
    )

    @model_validator(mode="after")
    def _fee_back_with_the_transfer(self) -> CreateRefund:
        # Stripe: "if you refund the application fee for a destination charge, you must
        # also reverse the transfer" (else the account keeps its transfer and the fee too).
        if self.refund_application_fee and not self.reverse_transfer:
            raise ValueError("refund_application_fee needs reverse_transfer (Stripe's rule)")
        return self


class RefreshRefund(CommandData):
    """Read a refund back from its provider: one left pending takes the status the
    provider reports now, and one that failed there since (the card closed) is failed
    here too, its amount refundable again."""

    refund_id: EntityId


class SubmitDisputeEvidence(CommandData):
    dispute_id: EntityId
    evidence: Annotated[
        dict[
            # Kept as sent (as Metadata's): stripped, "a" and "a " were merged into one
            # field, a value lost before an irrevocable submission (review h68j).
            Annotated[str, StringConstraints(max_length=64, strip_whitespace=False)],
            Annotated[str, StringConstraints(max_length=20000)],
        ],
        Field(min_length=1, max_length=30),
    ]
    submit: StrictBool = True  # irrevocable at the provider: true or false, nothing else


class AcceptDispute(CommandData):
    dispute_id: EntityId


def _percentage(text: str) -> str:
    parse_percentage(text)
    return text


def _percentage_quoted(value: object) -> object:
    """A percentage sent as a JSON number is told how to send it (review h74r: "Input
    should be a valid string" told a new user neither the form nor the reason)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(
            f'percentage is a decimal string: send "{value}", not {value} (a JSON number '
            "is refused, so no float ever carries a rate)"
        )
    return value


def _distinct(ids: list[str]) -> list[str]:
    if len(set(ids)) != len(ids):
        raise ValueError("a tax rate is named once")
    return ids


# Up to MAX_RATES_PER_LINE tax rates, each once.
TaxRateIds = Annotated[
    list[EntityId], Field(max_length=MAX_RATES_PER_LINE), AfterValidator(_distinct)
]
# Stripe's tax types (TaxRate.tax_type).
TaxType = Literal[
    "amusement_tax",
    "communications_tax",
    "gst",
    "hst",
    "igst",
    "jct",
    "lease_tax",
    "pst",
    "qst",
    "retail_delivery_fee",
    "rst",
    "sales_tax",
    "service_tax",
    "vat",
]


class CreateTaxRate(CommandData):
    """A tax rate of the tenant's, as Stripe's TaxRate: never changed once made, only
    archived. ``percentage`` is a decimal string ("20", "7.25": 0 to 100, at most 4
    decimal places); a JSON number is refused, so no float ever carries it."""

    tax_rate_id: EntityId | None = None
    display_name: Annotated[str, StringConstraints(min_length=1, max_length=50)]
    percentage: Annotated[
        StrictStr, BeforeValidator(_percentage_quoted), AfterValidator(_percentage)
    ]
    inclusive: StrictBool
    # ISO 3166-1 alpha-2 (upper case); ``state``: ISO 3166-2's subdivision, without the
    # country ("NY").
    country: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]
    state: Annotated[str, StringConstraints(pattern=r"^[A-Z0-9]{1,3}$")] | None = None
    jurisdiction: Annotated[str, StringConstraints(max_length=50)] | None = None
    tax_type: TaxType | None = None
    description: ShortText | None = None
    metadata: Metadata = Field(default_factory=dict)


class ArchiveTaxRate(CommandData):
    """Archive a tax rate: it is applied to nothing new (what it taxed stays taxed)."""

    tax_rate_id: EntityId


class TaxLineItem(CommandData):
    amount: Annotated[StrictInt, Field(ge=0, le=MAX_MINOR_AMOUNT)]  # the unit amount
    reference: Annotated[str, StringConstraints(min_length=1, max_length=500)]
    quantity: Annotated[StrictInt, Field(ge=1, le=1_000_000)] = 1
    # This line's rates; None: the calculation's ``tax_rate_ids``; []: none.
    tax_rate_ids: TaxRateIds | None = None


class CalculateTax(CommandData):
    """The tax on ``line_items`` by the tenant's tax rates (computed by paystream: no
    provider is asked). Its outcome, `tax.calculated`, names a calculation a
    ``payment.create`` may carry."""

    currency: Currency
    line_items: Annotated[list[TaxLineItem], Field(min_length=1, max_length=MAX_LINES)]
    tax_rate_ids: TaxRateIds | None = None

    HASH_BY_DUMP: ClassVar[bool] = True

    @model_validator(mode="after")
    def _lines(self) -> CalculateTax:
        references = [line.reference for line in self.line_items]
        if len(set(references)) != len(references):
            raise ValueError("each line item's reference is unique in the calculation")
        for line in self.line_items:
            if line.amount * line.quantity > MAX_MINOR_AMOUNT:
                raise ValueError(f"line {line.reference}: amount times quantity is too large")
        return self


class SubscriptionInterval(StrEnum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    YEAR = "year"


# The longest billing period, as Stripe allows it: one year (365 days, 52 weeks, 12
# months or 1 year) in all.
MAX_INTERVAL_COUNT = {
    SubscriptionInterval.DAY: 365,
    SubscriptionInterval.WEEK: 52,
    SubscriptionInterval.MONTH: 12,
    SubscriptionInterval.YEAR: 1,
}
# Stripe's longest trial (730 days).
MAX_TRIAL_DAYS = 730


class CreateSubscription(CommandData):
    """Bill a saved payment method of a customer ``amount`` every ``interval_count``
    ``interval`` s, from now (the first period's invoice charged at once) or from the end
    of a free trial of ``trial_days``."""

    subscription_id: EntityId | None = None
    customer_id: EntityId
    # Exactly one: a saved payment method of the customer's, or ``"checkout"`` (Paddle's
    # only: its customer pays the first period at Paddle Checkout, docs/paddle.md).
    payment_method_id: EntityId | None = None
    payment_method_token: Literal["checkout"] | None = None
    amount: Amount
    currency: Currency
    interval: SubscriptionInterval
    interval_count: Annotated[StrictInt, Field(ge=1, le=365)] = 1
    trial_days: Annotated[StrictInt, Field(ge=0, le=MAX_TRIAL_DAYS)] = 0
    description: ShortText | None = None
    metadata: Metadata = Field(default_factory=dict)
    # Tax rates (tax_rate.create) applied to every invoice: exclusive ones added to
    # ``amount``, inclusive ones contained in it (Stripe's default_tax_rates).
    tax_rate_ids: TaxRateIds | None = None

    HASH_OMITS_NONE: ClassVar[frozenset[str]] = frozenset({"tax_rate_ids", "payment_method_token"})

    @model_validator(mode="after")
    def _at_most_a_year(self) -> CreateSubscription:
        if (self.payment_method_id is None) == (self.payment_method_token is None):
            raise ValueError(
                'exactly one of payment_method_id or payment_method_token ("checkout") is required'
            )
        most = MAX_INTERVAL_COUNT[self.interval]
        if self.interval_count > most:
            raise ValueError(
                f"a billing period is at most one year: interval_count is at most {most} "
                f"for interval {self.interval.value}"
            )
        return self


class CancelSubscription(CommandData):
    """Cancel a subscription now (its open invoices voided, nothing more billed), or at
    the end of the period already paid for (``at_period_end``)."""

    subscription_id: EntityId
    at_period_end: StrictBool = False


class Proration(StrEnum):
    """How a price change settles the period under way (Stripe's proration_behavior)."""

    NONE = "none"  # nothing credited nor charged: the new price from the next period on
    # The unused time at the old price credited, the remaining time at the new one
    # charged: two proration lines on the next invoice (Stripe's pending invoice items).
    CREATE_PRORATIONS = "create_prorations"
    ALWAYS_INVOICE = "always_invoice"  # the same lines invoiced and charged now


_AWARE_TIME: TypeAdapter[AwareDatetime] = TypeAdapter(AwareDatetime)


def _unix_seconds(value: Any) -> Any:
    """A trial's end given as an ISO 8601 time with its offset ("Z", "+02:00") or as
    unix seconds, as unix seconds: the providers keep it to the second, and the request
    hash is of plain values (a datetime would hash otherwise than its dump)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)) or value == "now":
        return value  # (refused below: "now" is the other member's)
    return int(_AWARE_TIME.validate_python(value).timestamp())


# A trial's new end in unix seconds (given so, or as an ISO 8601 time with its offset).
TrialEnd = Annotated[
    StrictInt,
    BeforeValidator(_unix_seconds),
    Field(gt=0),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "exclusiveMinimum": 0, "description": "unix seconds"},
                {"type": "string", "format": "date-time", "description": "with its offset"},
            ]
        }
    ),
]


class UpdateSubscription(CommandData):
    """Change a live subscription (active, trialing or past_due) without canceling it:
    its price per period (``amount``, in its own currency: neither currency nor interval
    changes), the customer's saved payment method it bills (``payment_method_id``, one
    of the same customer's, attached), or its cancel at period end (``false`` resumes
    one scheduled to cancel; ``true`` schedules it, as `subscription.cancel`
    ``at_period_end``). A new amount is billed from the next period on (during a trial,
    the first invoice is at it); ``proration`` says how the period under way is settled:
    ``none`` (the default, Stripe's ``proration_behavior=none``) neither credits nor
    charges it, ``create_prorations`` puts a credit for its unused time at the old price
    and a charge for its remaining time at the new one on the next invoice,
    ``always_invoice`` invoices and charges those lines now. At least one field;
    values equal to the current ones change nothing, and nothing is asked of the
    provider, but a ``payment_method_id`` given is always sent (the provider may bill a
    card set outside paystream: this puts the recorded one back). ``trial_end`` ends a
    trialing subscription's trial now (``"now"``: its first period charged now) or moves
    its end (a time ahead), and is always sent."""

    subscription_id: EntityId
    amount: Amount | None = None
    payment_method_id: EntityId | None = None
    cancel_at_period_end: StrictBool | None = None
    # With a new ``amount``: how the period under way is settled (Stripe's
    # proration_behavior). None: ``none``, and left out of the request hash, so an
    # update sent before this field keeps its hash.
    proration: Proration | None = None
    # A trialing subscription's trial: ``"now"`` ends it (its first period invoiced and
    # charged now), a time (ISO 8601 with its offset, or unix seconds) moves its end,
    # earlier or later. Whether that time is ahead, and at most MAX_TRIAL_DAYS from now,
    # is the handler's to say (validation_error): a check of the clock here would answer
    # a replay of the same command otherwise once the time passed. None: left out of the
    # request hash, so an update sent before this field keeps its hash.
    trial_end: Literal["now"] | TrialEnd | None = None

    HASH_OMITS_NONE: ClassVar[frozenset[str]] = frozenset({"proration", "trial_end"})

    @field_validator("proration")
    @classmethod
    def _none_is_the_default(cls, value: Proration | None) -> Proration | None:
        # ``none`` spelled out is the default: read as left out, so a client resending
        # with it named hashes as before, no idempotency_conflict (review h79r_e L5).
        return None if value is Proration.NONE else value

    # A subscription's fields that never change: refused by name (review h77o F1: a
    # generic "Extra inputs are not permitted" did not say what to do instead).
    FIXED: ClassVar[tuple[str, ...]] = ("currency", "interval", "interval_count")

    @model_validator(mode="before")
    @classmethod
    def _nothing_fixed(cls, data: Any) -> Any:
        if isinstance(data, dict) and (named := [f for f in cls.FIXED if f in data]):
            # A ValidationError, not a custom error, so each keeps its field as its loc.
            raise ValidationError.from_exception_data(
                cls.__name__,
                [
                    InitErrorDetails(
                        type=PydanticCustomError(
                            "fixed_field", "cannot change: cancel and create a new subscription"
                        ),
                        loc=(field,),
                        input=data[field],
                    )
                    for field in named
                ],
            )
        return data

    @model_validator(mode="after")
    def _something_to_change(self) -> UpdateSubscription:
        if (
            self.amount is None
            and self.payment_method_id is None
            and (self.cancel_at_period_end is None)
            and self.trial_end is None
        ):
            raise ValueError(
                "nothing to change: give amount, payment_method_id, cancel_at_period_end "
                "or trial_end"
            )
        if self.proration not in (None, Proration.NONE) and self.amount is None:
            raise ValueError("proration needs a new amount: it settles a price change")
        if self.proration not in (None, Proration.NONE) and self.trial_end is not None:
            # (only a trialing subscription takes a trial_end, and a trial has nothing
            # paid to prorate: its first invoice is at the new amount)
            raise ValueError("proration and trial_end: nothing is prorated in a trial")
        return self


class PauseSubscription(CommandData):
    """Pause an active subscription's billing now: nothing is billed while it is paused
    (`subscription.paused`). ``resumes_at`` (optional, with its time zone; ahead, at
    most a year): when its provider resumes billing by itself, as `subscription.resume`
    would; without it, only a resume does."""

    subscription_id: EntityId
    resumes_at: AwareDatetime | None = None

    # (a datetime: hashed from its JSON dump, "...Z")
    HASH_BY_DUMP: ClassVar[bool] = True


class ResumeSubscription(CommandData):
    """Resume a paused subscription's billing now (`subscription.resumed`, ``active``
    again; its period and next charge as its provider restarts them: see the README)."""

    subscription_id: EntityId


class RefreshSubscription(CommandData):
    """Read a subscription back from its provider, with the invoices it made since:
    renewals paid or declined (past_due), a cancel at period end taking effect."""

    subscription_id: EntityId


class PayoutMethod(StrEnum):
    STANDARD = "standard"  # arrives after the provider's delay (the simulator: two days)
    INSTANT = "instant"  # paid at once (Stripe: to a debit card, within minutes)


# Stripe's statement descriptor rules for a payout: at most 22 characters, none of < > \ ' "
_PAYOUT_DESCRIPTOR = r"^[^<>\\'\"]{1,22}$"


def _payout_descriptor(value: str) -> str:
    """No control or format characters, at least one letter, as well as the pattern
    (stripe_rules.payout_descriptor_problem: the simulator's rule too; review h74g)."""
    problem = payout_descriptor_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


PayoutDescriptor = Annotated[
    str,
    StringConstraints(max_length=22, pattern=_PAYOUT_DESCRIPTOR),
    AfterValidator(_payout_descriptor),
]


class CreatePayout(CommandData):
    """Send ``amount`` of the tenant's available balance in ``currency`` to its bank
    account (its provider's default destination for the currency)."""

    payout_id: EntityId | None = None
    amount: Amount
    currency: Currency
    method: PayoutMethod = PayoutMethod.STANDARD
    description: ShortText | None = None
    statement_descriptor: PayoutDescriptor | None = None
    metadata: Metadata = Field(default_factory=dict)


class CancelPayout(CommandData):
    """Cancel a payout still ``pending`` (its amount back in the available balance)."""

    payout_id: EntityId


class RefreshPayout(CommandData):
    """Read a payout back from its provider: in transit, paid, or failed since."""

    payout_id: EntityId


class RetrieveBalance(CommandData):
    """The tenant's balance at its provider, per currency: ``available`` (may be paid
    out) and ``pending`` (captured, not yet settled)."""


class ConnectedAccountType(StrEnum):
    EXPRESS = "express"  # onboarded and managed in Stripe's own pages
    CUSTOM = "custom"  # the platform collects everything and answers for it


def _account_capabilities(names: list[str]) -> list[str]:
    if len(set(names)) != len(names):
        raise ValueError("a capability is named once")
    unknown = sorted(set(names) - ACCOUNT_CAPABILITIES)
    if unknown:
        raise ValueError(
            f"capabilities are {' and '.join(sorted(ACCOUNT_CAPABILITIES))}, not "
            f"{', '.join(unknown)}"
        )
    return names


def _link_url(name: str) -> Any:
    def check(url: str) -> str:
        problem = account_link_url_problem(name, url)
        if problem is not None:
            raise ValueError(problem)
        return url

    return AfterValidator(check)


class CreateConnectedAccount(CommandData):
    """A merchant's connected account under the tenant's platform account (Stripe
    Connect), ``pending`` until its holder onboards (connected_account.onboarding_link)."""

    connected_account_id: EntityId | None = None
    type: ConnectedAccountType = ConnectedAccountType.EXPRESS
    # ISO 3166-1 alpha-2 (upper case): where the merchant's business is.
    country: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]
    email: Email | None = None
    # (stripe_rules.ACCOUNT_BUSINESS_TYPES: the simulator's too)
    business_type: Literal["individual", "company", "non_profit", "government_entity"] | None = None
    # Requested: card_payments, transfers (each once).
    capabilities: Annotated[
        list[str],
        Field(max_length=len(ACCOUNT_CAPABILITIES)),
        AfterValidator(_account_capabilities),
    ] = Field(default_factory=list)
    metadata: Metadata = Field(default_factory=dict)
    HASH_BY_DUMP: ClassVar[bool] = True

    @model_validator(mode="after")
    def _custom_requests_capabilities(self) -> CreateConnectedAccount:
        # Stripe's create requires capabilities for an account without a Stripe-hosted
        # dashboard (custom): refused here rather than `provider_rejected` by Stripe alone.
        if self.type is ConnectedAccountType.CUSTOM and not self.capabilities:
            raise ValueError(custom_account_capabilities_problem())
        return self


class CreateAccountLink(CommandData):
    """A short-lived onboarding URL for the account's holder, answered in this command's
    outcome only: never kept, logged, or answered again (a replay, under the same command
    id or idempotency key, answers without it: send a new command id and a new
    idempotency key, or none, for a new link)."""

    connected_account_id: EntityId
    # Where the holder is sent: back once onboarding is left (return_url), or to ask for
    # a new link once this one expired or was used (refresh_url). https, or http to a
    # loopback host (a development machine).
    refresh_url: Annotated[str, StringConstraints(max_length=2048), _link_url("refresh_url")]
    return_url: Annotated[str, StringConstraints(max_length=2048), _link_url("return_url")]


class RefreshConnectedAccount(CommandData):
    """Read a connected account back from its provider: enabled, restricted or rejected
    since, and what it still has to give."""

    connected_account_id: EntityId


# ---- one-off invoices ---------------------------------------------------------------

# The most line items one invoice holds (Stripe lists up to 250 per invoice).
MAX_INVOICE_LINES = 250
# Stripe's days_until_due: how long a customer sent an invoice has to pay it.
MAX_DAYS_UNTIL_DUE = 365


class InvoiceCollection(StrEnum):
    """How an invoice is collected (Stripe's collection_method)."""

    # `invoice.pay` charges the invoice's saved payment method (one given at create).
    CHARGE_AUTOMATICALLY = "charge_automatically"
    # The customer is sent the invoice to pay within ``days_until_due`` (the provider's
    # hosted page); `invoice.pay` may still charge a saved method of theirs.
    SEND_INVOICE = "send_invoice"


class InvoiceLineItem(CommandData):
    description: Annotated[str, StringConstraints(min_length=1, max_length=500)]
    amount: Amount  # the unit amount, minor units
    quantity: Annotated[StrictInt, Field(ge=1, le=1_000_000)] = 1


class CreateInvoice(CommandData):
    """A draft one-off invoice to ``customer_id`` of ``line_items`` in ``currency``: its
    lines may be changed at the provider until `invoice.finalize` makes it open (its
    total fixed), then `invoice.pay` charges it, or `invoice.void` voids it. Tax rates
    (`tax_rate.create`) apply to every line, as a subscription's: exclusive ones added,
    inclusive ones contained. ``charge_automatically`` (the default) needs the
    customer's saved ``payment_method_id`` (attached); ``send_invoice`` needs
    ``days_until_due``."""

    invoice_id: EntityId | None = None
    customer_id: EntityId
    currency: Currency
    line_items: Annotated[list[InvoiceLineItem], Field(min_length=1, max_length=MAX_INVOICE_LINES)]
    tax_rate_ids: TaxRateIds | None = None
    payment_method_id: EntityId | None = None
    collection_method: InvoiceCollection = InvoiceCollection.CHARGE_AUTOMATICALLY
    days_until_due: Annotated[StrictInt, Field(ge=1, le=MAX_DAYS_UNTIL_DUE)] | None = None
    description: ShortText | None = None
    metadata: Metadata = Field(default_factory=dict)

    HASH_BY_DUMP: ClassVar[bool] = True

    @model_validator(mode="after")
    def _collectable(self) -> CreateInvoice:
        total = sum(line.amount * line.quantity for line in self.line_items)
        if total > MAX_MINOR_AMOUNT:
            raise ValueError("the line items' amounts times quantities add up to too much")
        automatic = self.collection_method is InvoiceCollection.CHARGE_AUTOMATICALLY
        if automatic and self.payment_method_id is None:
            raise ValueError(
                "collection_method charge_automatically needs payment_method_id (a saved "
                "payment method of the customer's); or send_invoice with days_until_due"
            )
        if automatic and self.days_until_due is not None:
            raise ValueError("days_until_due is for collection_method send_invoice only")
        if not automatic and self.days_until_due is None:
            raise ValueError("collection_method send_invoice needs days_until_due")
        return self


class UpdateInvoice(CommandData):
    """Change a draft invoice before `invoice.finalize` fixes it, as Stripe's invoice
    update and invoice items allow: ``line_items`` replace its lines as a whole (the
    shape `invoice.create` takes; sent again, the same lines are set, never added
    twice), ``description``, ``days_until_due`` (a ``send_invoice`` one's) and
    ``metadata`` (merged key by key, a key given "" removed, as Stripe's). What is not
    given stays; an open, paid or void invoice is refused."""

    invoice_id: EntityId
    line_items: (
        Annotated[list[InvoiceLineItem], Field(min_length=1, max_length=MAX_INVOICE_LINES)] | None
    ) = None
    description: ShortText | None = None
    days_until_due: Annotated[StrictInt, Field(ge=1, le=MAX_DAYS_UNTIL_DUE)] | None = None
    metadata: Metadata | None = None

    HASH_BY_DUMP: ClassVar[bool] = True

    @model_validator(mode="after")
    def _something(self) -> UpdateInvoice:
        lines = self.line_items or ()
        if sum(line.amount * line.quantity for line in lines) > MAX_MINOR_AMOUNT:
            raise ValueError("the line items' amounts times quantities add up to too much")
        if (
            self.line_items is None
            and self.description is None
            and self.days_until_due is None
            and self.metadata is None
        ):
            raise ValueError(
                "nothing to update: give line_items, description, days_until_due or metadata"
            )
        return self


class FinalizeInvoice(CommandData):
    """Finalize a draft invoice: ``open``, its total fixed, payable; or paid at once when
    nothing is left to charge (its customer's credit balance covers it)."""

    invoice_id: EntityId


class PayInvoice(CommandData):
    """Charge an open invoice's total to its saved payment method, or to
    ``payment_method_id`` (another saved method of the same customer's). A decline is
    `invoice.payment_failed`: the invoice stays open, to be paid again."""

    invoice_id: EntityId
    payment_method_id: EntityId | None = None


class CreateTransfer(CommandData):
    """Move ``amount`` of the platform's balance to one of the tenant's connected accounts
    (Stripe Connect's separate charges and transfers): from a charge of the tenant's
    (``payment_id``: Stripe's ``source_transaction``, at most what is left of it) or from
    the available balance."""

    transfer_id: EntityId | None = None
    connected_account_id: EntityId
    amount: Amount
    currency: Currency
    payment_id: EntityId | None = None
    # Stripe's transfer_group: ties the transfers of one order together (a free string).
    transfer_group: Annotated[str, StringConstraints(min_length=1, max_length=255)] | None = None
    description: ShortText | None = None
    metadata: Metadata = Field(default_factory=dict)


class ReverseTransfer(CommandData):
    """Take back all (``amount`` left out) or part of a transfer from its connected
    account, to the platform's balance; never more than is left of it."""

    transfer_id: EntityId
    amount: Amount | None = None
    metadata: Metadata = Field(default_factory=dict)


class RefreshTransfer(CommandData):
    """Read a transfer back from its provider: reversed since, outside paystream too (the
    provider's dashboard, or the provider recovering a connected account's balance)."""

    transfer_id: EntityId


class VoidInvoice(CommandData):
    """Void an open (or draft) invoice: never to be paid. A paid one is refunded instead,
    at its provider (its payment is the provider's, not a paystream payment)."""

    invoice_id: EntityId


class MarkInvoiceUncollectible(CommandData):
    """Write an open invoice off (uncollectible: no longer expected to be paid), as
    Stripe's mark_uncollectible. Its customer may still pay it (on the provider's page,
    or by ``invoice.pay``), and it may still be voided."""

    invoice_id: EntityId


class RefreshInvoice(CommandData):
    """Read a one-off invoice back from its provider: paid by the customer (a sent
    invoice paid on the provider's page), or voided there since."""

    invoice_id: EntityId


# type suffix (after COMMAND_PREFIX) → model. The registry is the list of supported commands.
COMMANDS: dict[str, type[CommandData]] = {
    "customer.create": CreateCustomer,
    "customer.update": UpdateCustomer,
    "customer.delete": DeleteCustomer,
    "customer.erase": EraseCustomer,
    "customer.export": ExportCustomer,
    "payment_method.attach": AttachPaymentMethod,
    "payment_method.detach": DetachPaymentMethod,
    "payment.create": CreatePayment,
    "payment.capture": CapturePayment,
    "payment.cancel": CancelPayment,
    "payment.refresh": RefreshPayment,
    "refund.create": CreateRefund,
    "refund.refresh": RefreshRefund,
    "dispute.submit_evidence": SubmitDisputeEvidence,
    "dispute.accept": AcceptDispute,
    "subscription.create": CreateSubscription,
    "subscription.cancel": CancelSubscription,
    "subscription.update": UpdateSubscription,
    "subscription.refresh": RefreshSubscription,
    "subscription.pause": PauseSubscription,
    "subscription.resume": ResumeSubscription,
    "payout.create": CreatePayout,
    "payout.cancel": CancelPayout,
    "payout.refresh": RefreshPayout,
    "balance.retrieve": RetrieveBalance,
    "tax_rate.create": CreateTaxRate,
    "tax_rate.archive": ArchiveTaxRate,
    "tax.calculate": CalculateTax,
    "connected_account.create": CreateConnectedAccount,
    "connected_account.onboarding_link": CreateAccountLink,
    "connected_account.refresh": RefreshConnectedAccount,
    "invoice.create": CreateInvoice,
    "invoice.update": UpdateInvoice,
    "invoice.finalize": FinalizeInvoice,
    "invoice.pay": PayInvoice,
    "invoice.void": VoidInvoice,
    "invoice.mark_uncollectible": MarkInvoiceUncollectible,
    "invoice.refresh": RefreshInvoice,
    "transfer.create": CreateTransfer,
    "transfer.reverse": ReverseTransfer,
    "transfer.refresh": RefreshTransfer,
}
if set(COMMANDS) != set(COMMAND_TYPES):  # (a command added to one and not to the other)
    raise RuntimeError(
        "paystream/streams/command_types.py lists other command types than COMMANDS: "
        f"{sorted(set(COMMANDS) ^ set(COMMAND_TYPES))}"
    )

# Commands whose provider call only reads (keyless, no effect of its own): a re-drive of
# one at any age can change nothing the provider did not already do, so none is held back
# as past the provider's key window for a person to reconcile.
PROVIDER_READS = frozenset(
    {
        "payment.refresh",
        "refund.refresh",
        "subscription.refresh",
        "payout.refresh",
        "balance.retrieve",
        "connected_account.refresh",
        "invoice.refresh",
        "transfer.refresh",
    }
)


def validation_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """A command's validation errors as its rejection lists them: never the input (it may
    be card data); field names are the sender's, so cut to a readable length, then
    redacted (review finding: a cut can make a card number of a longer run of digits,
    which the whole name, scanned as sent, was not)."""
    return [
        {
            "loc": redact_card_numbers(".".join(str(p) for p in e["loc"])[:100]),
            "msg": redact_card_numbers(validator_said(e)[:200]),
            "type": e["type"],
        }
        for e in exc.errors(include_input=False, include_url=False)
    ]

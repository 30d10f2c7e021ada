"""Records kept in the entity and idempotency tables.

Each entity record remembers the outcomes of the last few commands it applied
(``applied``), because Faust may write a changelog entry and then crash before
committing the command's offset: on redelivery the record recognises the command
and the stored outcome is re-emitted instead of applying the change again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "APPLIED_MEMORY",
    "EMISSION_KEYS",
    "ConnectedAccountRecord",
    "CustomerRecord",
    "DisputeRecord",
    "EntityRecord",
    "IdempotencyRecord",
    "IdempotencyState",
    "InvoiceRecord",
    "PaymentMethodRecord",
    "PaymentRecord",
    "PayoutRecord",
    "RefundRecord",
    "StoredOutcome",
    "SubscriptionRecord",
    "TaxCalculationRecord",
    "TaxRateRecord",
    "TransferRecord",
    "applied_entry",
    "scrub_customer_applied",
    "scrub_customer_outcome",
    "shed_applied",
    "trim_applied",
    "without_personal_data",
]

# Outcomes an entity remembers of the commands that changed it, for replays: at least
# this many, and every one whose command record is not yet committed (see trim_applied).
APPLIED_MEMORY = 16


class StoredOutcome(BaseModel):
    model_config = ConfigDict(frozen=True)

    type: str  # e.g. "payment.succeeded"
    data: dict[str, Any]


class EntityRecord(BaseModel):
    """Common fields; ``version`` increases by one per applied command."""

    # Fields a later version adds are ignored, not refused: in a rolling upgrade this
    # version reads what a newer worker wrote (as IdempotencyRecord does).
    model_config = ConfigDict(extra="ignore")

    entity_type: str = ""
    tenant_id: str
    id: str
    version: int = 0
    provider: str
    created_by: str  # command id that created it
    # command id → stored outcome, kept as plain dicts: validating up to 16 nested
    # outcomes on every load showed up in the worker's profile.
    applied: dict[str, dict[str, Any]] = Field(default_factory=dict)

    def snapshot(self) -> dict[str, Any]:
        """The entity as published in outcomes (without bookkeeping)."""
        return self.model_dump(mode="json", exclude={"applied", "entity_type"})

    def remember(
        self,
        command_id: str,
        outcome: StoredOutcome,
        request_hash: str | None = None,
        id_salt: str | None = None,
        committed: Callable[[int], int] | None = None,
        emitted: Mapping[str, Any] | None = None,
    ) -> None:
        self.applied[command_id] = applied_entry(outcome, request_hash, id_salt, emitted)
        trim_applied(self.applied, committed, keep=self.created_by)

    def applied_outcome(self, command_id: str) -> StoredOutcome | None:
        """The outcome this record stored for ``command_id``, if it applied that command."""
        raw = self.applied.get(command_id)
        return None if raw is None else StoredOutcome.model_validate(raw)

    def applied_hash(self, command_id: str) -> str | None:
        """The request hash of the command ``command_id`` applied here (None: not known,
        e.g. remembered by an older version)."""
        raw = self.applied.get(command_id)
        return None if raw is None else raw.get("hash")

    def applied_salt(self, command_id: str) -> str | None:
        """The id salt its outcome was emitted with (see ``CommandRef.id_salt``)."""
        raw = self.applied.get(command_id)
        return None if raw is None else raw.get("salt")

    def applied_at(self, command_id: str) -> float | None:
        """When (unix seconds, the worker's clock) it applied ``command_id`` (None: not
        known, remembered by an older version)."""
        at = (self.applied.get(command_id) or {}).get("at")
        return float(at) if isinstance(at, int | float) else None

    def applied_emission(self, command_id: str) -> dict[str, Any] | None:
        """How its outcome was emitted: ``time``, ``traceparent``, ``tracestate``, and
        when it applied it (``at``), as kept (None: not known, remembered by an older
        version)."""
        raw = self.applied.get(command_id) or {}
        if "time" not in raw:
            return None
        return {k: raw[k] for k in EMISSION_KEYS if k in raw}


def trim_applied(
    applied: dict[str, dict[str, Any]],
    committed: Callable[[int], int] | None = None,
    keep: str | None = None,
) -> None:
    """Forget the oldest outcomes past :data:`APPLIED_MEMORY`, but never one whose command
    record a crash could still redeliver.

    A crash replays every uncommitted command, a batch is up to 500 of them, and an
    entity's changelog write can outlive the batch's idempotency writes: an entity that
    forgot the 17th-last command of a batch applied the batch's commands again (every
    update twice, a capture answered "already captured"). So an entry is dropped only
    once its record (its id salt: "partition:offset") is below the partition's
    committed offset (``committed(partition)``; -1, not known yet, as on a worker that
    has just taken a partition over: kept). Entries without a position (older versions),
    or with no ``committed`` at all, go by the count alone. ``keep`` (the command that
    made the entity) is never dropped: a create let through once, re-driven after a
    resend of its request made the entity, is answered with that command's outcome.
    """
    while len(applied) > APPLIED_MEMORY + (keep in applied):
        oldest = next(k for k in applied if k != keep)
        if committed is not None and _uncommitted(applied[oldest].get("salt"), committed):
            return
        del applied[oldest]


def _uncommitted(salt: Any, committed: Callable[[int], int]) -> bool:
    partition, _, offset = str(salt or "").partition(":")
    if not (partition.isdigit() and offset.isdigit()):
        return False
    floor = committed(int(partition))
    return floor < 0 or int(offset) >= floor


# What an applied entry keeps of its outcome's emission (see applied_entry).
EMISSION_KEYS = ("at", "time", "traceparent", "tracestate")
# Kept with them: the command's type (``cmd``), so that a read (``*.refresh``) is told
# from a change (handlers._changed_since_first_attempt). Entries of the release before
# have none, and count as changes, as they did.
_ENTRY_KEYS = (*EMISSION_KEYS, "cmd")


def applied_entry(
    outcome: StoredOutcome,
    request_hash: str | None,
    id_salt: str | None = None,
    emitted: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What an entity remembers of a command it applied. ``emitted``: when it applied it
    (``at``: a reused command id is another request once the idempotency window has
    passed) and its outcome's ``time``, ``traceparent`` and ``tracestate``, so that
    answering it again from the entity emits the very event first emitted; and the
    command's type (``cmd``: a read is no change, review h81rx F1)."""
    entry: dict[str, Any] = {"type": outcome.type, "data": outcome.data}
    if request_hash is not None:
        entry["hash"] = request_hash
    if id_salt is not None:
        entry["salt"] = id_salt
    if not emitted:
        return entry
    if emitted.keys() <= _EMISSION_KEY_SET and None not in emitted.values():
        # Nothing to leave out (as a new command's emission is: the pipeline's
        # _emission writes these keys only, none of them None): taken whole, in its
        # order, as the filter below would take it, without a generator's frames.
        entry.update(emitted)
    else:
        entry.update((k, v) for k, v in emitted.items() if k in _ENTRY_KEYS and v is not None)
    return entry


_EMISSION_KEY_SET = frozenset(_ENTRY_KEYS)


class CustomerRecord(EntityRecord):
    entity_type: str = "customer"
    provider_customer_id: str
    email: str | None = None
    name: str | None = None
    description: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    deleted: bool = False
    erased: bool = False


def shed_applied(
    record: Any, committed: Callable[[int], int] | None = None
) -> dict[str, Any] | None:
    """An entity record (as stored) remembering fewer outcomes, to fit the broker's
    message size: those of committed command records first (``committed``: see
    :func:`trim_applied`), else the older half (a redelivery may then apply some of
    those again: the last resort, logged by the caller); None when it has none left to
    shed (or is no entity)."""
    if not isinstance(record, dict) or not record.get("applied"):
        return None
    applied = list(record["applied"].items())
    creator = record.get("created_by")
    if committed is not None:
        pending = [
            (k, v) for k, v in applied if k == creator or _uncommitted(v.get("salt"), committed)
        ]
        if len(pending) < len(applied):
            return {**record, "applied": dict(pending)}
    return {**record, "applied": dict(applied[(len(applied) + 1) // 2 :])}


CUSTOMER_PII_FIELDS = ("email", "name", "description", "metadata")


def scrub_customer_applied(
    applied: Mapping[str, Mapping[str, Any]], customer_id: str
) -> dict[str, dict[str, Any]]:
    """A customer's remembered outcomes without their personal data, and without their
    request hashes (one of a create is a hash of the personal data, which a guessed
    email and name could be checked against); when and how each was emitted stays."""
    return {
        k: applied_entry(
            scrub_customer_outcome(StoredOutcome.model_validate(v), customer_id),
            None,
            v.get("salt"),
            v,  # (its emission: times and trace context only)
        )
        for k, v in applied.items()
    }


def without_personal_data(record: Mapping[str, Any]) -> dict[str, Any]:
    """A customer's stored record with their personal data blanked, in it and in the
    outcomes it remembers (as an erasure leaves it, but for the ``erased`` mark)."""
    out = dict(record)
    for name in CUSTOMER_PII_FIELDS:
        if name in out:
            out[name] = {} if name == "metadata" else None
    out["applied"] = scrub_customer_applied(out.get("applied") or {}, str(out.get("id")))
    return out


def scrub_customer_outcome(outcome: StoredOutcome, customer_id: str) -> StoredOutcome:
    """The outcome with that customer's personal data blanked (right to erasure)."""
    data = dict(outcome.data)
    if data.get("entity_type") == "customer" and data.get("entity_id") == customer_id:
        obj = dict(data.get("object") or {})
        for name in CUSTOMER_PII_FIELDS:
            if name in obj:
                obj[name] = {} if name == "metadata" else None
        data["object"] = obj
    export = data.get("export")
    if isinstance(export, dict) and data.get("customer_id") == customer_id:
        # (One made after the erasure holds none, and is left as it was published: an
        # erasure replayed after a crash scrubs again, and its export, replayed too, was
        # another event under the same id; review finding.)
        customer = export.get("customer")
        if not (isinstance(customer, dict) and customer.get("erased") is True):
            data["export"] = {"erased": True}
    return StoredOutcome(type=outcome.type, data=data)


class PaymentMethodRecord(EntityRecord):
    entity_type: str = "payment_method"
    customer_id: str
    provider_payment_method_id: str
    brand: str | None = None
    last4: str | None = None
    exp_month: int | None = None
    exp_year: int | None = None
    fingerprint: str | None = None
    attached: bool = True


class PaymentRecord(EntityRecord):
    entity_type: str = "payment"
    status: str
    amount: int
    currency: str
    capture_method: str
    amount_captured: int = 0
    amount_refunded: int = 0
    customer_id: str | None = None
    payment_method_id: str | None = None
    provider_payment_id: str
    # A failed payment's latest charge (attempt) at the provider, where it names one:
    # another card declined through the client secret is another charge (the fraud
    # rules count it). Stored only when set (pipeline._stored_fields).
    provider_charge_id: str | None = None
    failure_code: str | None = None
    failure_message: str | None = None
    next_action: dict[str, Any] | None = None
    dispute_id: str | None = None
    # A next action (its client secret) went to the customer: the provider keeps such a
    # payment open when it fails (Stripe: requires_payment_method), and the customer's
    # browser may still pay it with another card.
    customer_action_delivered: bool = False
    # Named a tax calculation (tax.calculate): its tax, contained in ``amount``, and its id
    # (what a tax report sums). The tax of what it collects: pro-rated when captured in
    # part, 0 once canceled or failed uncaptured (handlers._tax_collected); the
    # calculation keeps its own figure. Stored only when set (pipeline._stored_fields).
    amount_tax: int | None = None
    tax_calculation_id: str | None = None
    # A destination charge (Stripe Connect): the tenant's connected account it pays, and
    # the application fee its platform keeps (at most the amount captured). Stored only
    # when set (pipeline._stored_fields).
    connected_account_id: str | None = None
    application_fee_amount: int | None = None
    # Moved on to connected accounts by transfers naming it (transfer.create's
    # payment_id), less what their reversals took back. Stored only when set.
    amount_transferred: int | None = None


class RefundRecord(EntityRecord):
    entity_type: str = "refund"
    payment_id: str
    status: str
    amount: int
    currency: str
    provider_refund_id: str
    failure_code: str | None = None
    # Why the tenant refunded (refund.create's reason: duplicate, fraudulent,
    # requested_by_customer); None when not given, and for refunds made before it was kept.
    reason: str | None = None
    # A destination charge's refund options as sent (review h79r_a L4): whether it took
    # the refunded share back from the account's transfer, and gave the application fee
    # back in proportion. None when not named (and for refunds before they were kept).
    reverse_transfer: bool | None = None
    refund_application_fee: bool | None = None


class DisputeRecord(EntityRecord):
    entity_type: str = "dispute"
    payment_id: str
    status: str
    amount: int
    currency: str
    provider_dispute_id: str
    evidence_submitted: bool = False
    # The provider's reason for the dispute and the deadline for its evidence (None when
    # the provider gave none, and for disputes recorded before they were kept).
    reason: str | None = None
    evidence_due_by: datetime | None = None


class SubscriptionRecord(EntityRecord):
    """A customer's saved payment method billed ``amount`` every ``interval_count``
    ``interval`` s (statuses: SubscriptionStatus; transitions: state_machines)."""

    entity_type: str = "subscription"
    customer_id: str
    # None: its customer pays at the provider's checkout (Paddle's), not a saved method.
    payment_method_id: str | None = None
    status: str
    amount: int
    currency: str
    interval: str
    interval_count: int
    provider_subscription_id: str
    current_period_start: datetime
    current_period_end: datetime
    trial_end: datetime | None = None
    cancel_at_period_end: bool = False
    canceled_at: datetime | None = None
    # The newest invoice recorded (paystream's id); None during a trial.
    latest_invoice_id: str | None = None
    description: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    # Its tax rates (paystream's ids), applied to every invoice; stored only when set.
    tax_rate_ids: list[str] | None = None
    # The net of its proration lines still pending (an earlier create_prorations', as
    # its provider listed them), which the next invoice bills: an always_invoice's
    # invoice included, so its limits hold counts them (review h79r_e M2). Cleared when
    # an invoice billed them (an always_invoice, a new period); stored only when set.
    pending_proration_net: int | None = None
    # Paused (subscription.pause): when its provider resumes it by itself; None while
    # it is not paused, or only a resume ends the pause. Stored only when set.
    pause_resumes_at: datetime | None = None


class InvoiceRecord(EntityRecord):
    """An invoice: one period's charge of a subscription, made by its provider (at
    create, or a renewal read back by subscription.refresh); or a one-off invoice
    (`invoice.create`: ``subscription_id`` None, its own line items), draft until
    finalized."""

    entity_type: str = "invoice"
    # None: a one-off invoice (its period too).
    subscription_id: str | None = None
    customer_id: str
    status: str  # draft | open | uncollectible | paid | void (InvoiceStatus)
    amount: int
    currency: str
    period_start: datetime | None = None
    period_end: datetime | None = None
    provider_invoice_id: str
    provider_payment_id: str | None = None
    failure_code: str | None = None
    failure_message: str | None = None
    # Its subscription's tax, as its provider reports it: ``total`` is ``subtotal`` (the
    # subscription's amount) plus exclusive ``tax`` (inclusive tax is in the subtotal);
    # ``amount`` is what was charged, ``total`` unless the provider took a part from
    # elsewhere (Stripe: a customer's credit balance, a coupon). Stored only when set
    # (None: an invoice recorded before tax, or untaxed).
    subtotal: int | None = None
    tax: int | None = None
    total: int | None = None
    # A one-off invoice's (invoice.create), stored only when set: its lines as sent
    # (description, amount per unit, quantity), the tax rates on every line, how it is
    # collected, the saved payment method `invoice.pay` charges, and a sent one's due
    # date (from finalization, as the provider counts days_until_due).
    line_items: list[dict[str, Any]] | None = None
    # A subscription's invoice with a price change's proration lines on it (description,
    # amount: negative for the unused time's credit, period_start, period_end), stored
    # only when set.
    proration_lines: list[dict[str, Any]] | None = None
    tax_rate_ids: list[str] | None = None
    collection_method: str | None = None
    payment_method_id: str | None = None
    days_until_due: int | None = None
    due_date: datetime | None = None
    description: str | None = None
    metadata: dict[str, str] | None = None


class TaxRateRecord(EntityRecord):
    """A tenant's tax rate, as Stripe's TaxRate: never changed once made, only archived
    (status: active | archived); ``percentage`` is the decimal string it was made with."""

    entity_type: str = "tax_rate"
    status: str = "active"
    display_name: str
    percentage: str
    inclusive: bool
    country: str
    state: str | None = None
    jurisdiction: str | None = None
    tax_type: str | None = None
    description: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    provider_tax_rate_id: str


class TaxCalculationRecord(EntityRecord):
    """A tax.calculate's answer, kept until ``expires_at`` for a payment to name it."""

    entity_type: str = "tax_calculation"
    currency: str
    line_items: list[dict[str, Any]]
    amount_subtotal: int
    amount_tax: int
    amount_tax_inclusive: int
    amount_tax_exclusive: int
    amount_total: int
    # Per tax rate (paystream's id), its tax over every line.
    tax_by_rate: dict[str, int] = Field(default_factory=dict)
    expires_at: datetime


class PayoutRecord(EntityRecord):
    """Money sent from the tenant's available balance at its provider to its bank
    account (statuses: PayoutStatus; transitions: state_machines)."""

    entity_type: str = "payout"
    status: str  # pending | in_transit | paid | failed | canceled
    amount: int
    currency: str
    method: str  # standard | instant
    provider_payout_id: str
    arrival_date: datetime
    failure_code: str | None = None
    failure_message: str | None = None
    description: str | None = None
    statement_descriptor: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)


class TransferRecord(EntityRecord):
    """Money moved from the platform's balance to one of the tenant's connected accounts
    (Stripe Connect's separate charges and transfers); statuses: created →
    partially_reversed → reversed (state_machines.TRANSFER_MOVES)."""

    entity_type: str = "transfer"
    status: str  # created | partially_reversed | reversed
    amount: int
    currency: str
    amount_reversed: int = 0
    connected_account_id: str
    # The tenant's payment the funds came from (Stripe's source_transaction), if any.
    payment_id: str | None = None
    transfer_group: str | None = None
    provider_transfer_id: str
    description: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)


class IdempotencyState(StrEnum):
    IN_FLIGHT = "in_flight"
    DONE = "done"
    PARKED = "parked"  # retries exhausted; waiting on the retry topic


class IdempotencyRecord(BaseModel):
    """One per (tenant, idempotency key); expires after the idempotency window."""

    # "ignore": records written by older versions may carry fields since retired.
    model_config = ConfigDict(extra="ignore")

    command_id: str
    command_type: str
    request_hash: str
    state: IdempotencyState
    expires_at: float  # unix seconds
    outcome: StoredOutcome | None = None
    source: list[int] | None = None  # [partition, offset] of the record that wrote it
    # The first command's time and its outcome's traceparent (from older versions, the
    # command's, which outcomes then carried): its outcome, re-emitted for a retry under
    # another command id, is the very event first emitted (absent from older records).
    time: datetime | None = None
    traceparent: str | None = None
    tracestate: str | None = None  # its outcome's (absent: none, or an older version)
    id_salt: str | None = None  # its outcome's (see CommandRef.id_salt)
    # Whether its creates use entity-scoped provider keys (absent, so False, from older
    # versions: a command they parked keeps the keys it was first sent with).
    entity_keys: bool = False
    # Whether a digest-shaped key ("sha256:<64 hex>") goes to the provider hashed (see
    # HandlerContext._provider_key). Written only for such keys; absent, so False, from
    # older versions, which sent it as it is: a command they let through keeps that.
    digest_keys_apart: bool = False
    # Tenant limits: done, whether this record counted its outcome's money toward the
    # day (not when another record did); parked, whether an earlier record of the
    # command already had. None: not said (older versions).
    counted: bool | None = None
    # Let through (in flight or parked): the provider account it was first sent to
    # (``gateway_account``). None: older versions, or never let through.
    gateway: str | None = None
    # Let through (in flight or parked): when its request first reached a worker (unix
    # ms; the first of its commands' first attempt), so that a retry under its key past
    # the provider's key window is held for a person. None: older versions.
    first_attempt_ms: int | None = None
    # A rejection's: the customer the command was about (its data named one), so that
    # erasing them also erases the request hash, a hash of their personal data.
    customer_id: str | None = None


class ConnectedAccountRecord(EntityRecord):
    """A merchant's account under the tenant's platform account (Stripe Connect), as its
    provider last answered (statuses: pending, enabled, restricted, rejected; derived by
    state_machines.connected_account_status; moves: CONNECTED_ACCOUNT_MOVES). Its email
    goes to the provider only (read it there), and no onboarding link is ever kept."""

    entity_type: str = "connected_account"
    status: str
    type: str  # express | custom
    country: str
    business_type: str | None = None
    capabilities: list[str] = Field(default_factory=list)  # requested
    metadata: dict[str, str] = Field(default_factory=dict)
    provider_account_id: str
    charges_enabled: bool = False
    payouts_enabled: bool = False
    details_submitted: bool = False
    # requirements.currently_due: the names of what its holder must give now.
    currently_due: list[str] = Field(default_factory=list)
    disabled_reason: str | None = None

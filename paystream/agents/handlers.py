"""Command handlers: the business rules for each command type, free of Kafka and Faust.

A handler reads and writes entity records through ``Tables`` (Faust tables in the
worker, plain dicts in unit tests), calls the tenant's gateway, and returns a
``HandlerResult``: the outcome type, its data, and the entity records it changed.
Rule violations raise ``Rejection``; provider declines become ``*.failed`` outcomes.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import (
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    MutableMapping,
    Sequence,
)
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from pydantic import BaseModel

from paystream import metrics
from paystream import tax as taxes
from paystream.built import built
from paystream.gateways import base as gw
from paystream.gateways.errors import (
    CARD_ERROR_CODES,
    DECLINE_CODES,
    ISSUER_DECLINES,
    DraftLinesDiffer,
    ErrorCode,
    GatewayError,
    UnsupportedOperation,
    card_failure,
    unsupported_message,
)
from paystream.gateways.stripe_rules import account_takes_charges, three_decimal_problem
from paystream.gateways.unsupported import PAUSED_NOT_CANCELED, PAUSED_NOT_CANCELED_AT
from paystream.ids import derived_id
from paystream.ids import invoice_id as derived_invoice_id
from paystream.log_limits import ThrottledLog
from paystream.money import MAX_MINOR_AMOUNT, Money, format_minor
from paystream.streams import commands as c
from paystream.streams.outcomes import CommandRef, RejectReason
from paystream.tables.next_action import public_row
from paystream.tables.owners import OWNER_FIELDS, OwnerIndex
from paystream.tables.records import (
    ConnectedAccountRecord,
    CustomerRecord,
    DisputeRecord,
    EntityRecord,
    InvoiceRecord,
    PaymentMethodRecord,
    PaymentRecord,
    PayoutRecord,
    RefundRecord,
    StoredOutcome,
    SubscriptionRecord,
    TaxCalculationRecord,
    TaxRateRecord,
    TransferRecord,
    scrub_customer_applied,
)
from paystream.tables.state_machines import (
    INVOICE_TRANSITIONS,
    InvalidState,
    check_invoice_transition,
    check_payment_transition,
    check_payout_move,
    check_subscription_move,
    check_subscription_transition,
    check_tax_rate_transition,
    check_transfer_move,
    connected_account_status,
    invoice_moves,
    transfer_status,
)
from paystream.tenancy.limits import (
    MAX_FUTURE_SKEW_MS,
    InvoiceCharge,
    InvoiceTotal,
    ProrationCharge,
    Repricing,
)

if TYPE_CHECKING:
    from paystream.tracing import CommandTrace

__all__ = [
    "HANDLERS",
    "AlreadyApplied",
    "AnsweredByAnother",
    "HandlerContext",
    "HandlerResult",
    "Rejection",
    "Tables",
    "entity_key",
    "invoice_charge",
    "invoice_total",
    "subscription_charge",
]

log = logging.getLogger(__name__)
# (a second dispute while the first is open: once a minute per payment)
_throttled = ThrottledLog(log)

T = TypeVar("T")
R = TypeVar("R", bound=EntityRecord)
_Req = TypeVar("_Req", bound=BaseModel)  # a gateway request model with ``metadata``

# Stripe refuses idempotency keys longer than 255 characters.
_PROVIDER_KEY_MAX = 255
_DIGEST_PREFIX = "sha256:"
_DIGEST_SHAPED_LEN = len(_DIGEST_PREFIX) + 64
_HEX = frozenset("0123456789abcdef")


def digest_shaped(key: str) -> bool:
    """A key shaped like the digest an over-long key's provider key holds ("sha256:"
    and 64 lowercase hex digits; see HandlerContext._provider_key)."""
    return (
        len(key) == _DIGEST_SHAPED_LEN
        and key.startswith(_DIGEST_PREFIX)
        and _HEX.issuperset(key[len(_DIGEST_PREFIX) :])
    )


# Enum members read on every command (or every provider error), as module globals: a
# global is cheaper to read than a member on its enum class (a class attribute lookup
# through the enum's metaclass, ~40-55 ns more on CPython 3.11). The same objects.
_NOT_FOUND = ErrorCode.NOT_FOUND
_INVALID_STATE = ErrorCode.INVALID_STATE
_PROVIDER_UNAVAILABLE = ErrorCode.PROVIDER_UNAVAILABLE
_CREDENTIAL_ERRORS = (ErrorCode.AUTHENTICATION_FAILED, ErrorCode.PERMISSION_DENIED)
_MANUAL = c.CaptureMode.MANUAL
_CAPTURE_MANUAL = gw.CaptureMethod.MANUAL
_WEBHOOKS = gw.Capability.WEBHOOKS
_CAPTURE_AUTOMATIC = gw.CaptureMethod.AUTOMATIC
_PAYMENT_FAILED = gw.PaymentStatus.FAILED.value
_REFUND_FAILED = gw.RefundStatus.FAILED


class Rejection(Exception):
    """The command is refused; becomes a `command.rejected` outcome."""

    def __init__(self, reason: RejectReason, message: str, *, remember: bool = True) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.remember = remember  # store under the idempotency key, as Stripe stores 4xx


class AlreadyApplied(Exception):
    """The entity already recorded this command (redelivery after a crash): re-emit."""

    def __init__(
        self,
        outcome: StoredOutcome,
        id_salt: str | None = None,
        emitted: dict[str, Any] | None = None,
        request_hash: str | None = None,
    ) -> None:
        super().__init__(outcome.type)
        self.outcome = outcome
        self.id_salt = id_salt  # the outcome's ids, as first emitted
        self.emitted = emitted  # its time and trace context, as first emitted (or None)
        self.request_hash = request_hash  # of the request it applied (None: not kept)


class AnsweredByAnother(Exception):
    """A create let through once (parked, in flight at a crash) whose entity another
    command of the very same request made meanwhile (a resend under a new command id):
    one provider object under one provider key, so this command's answer is that one's."""

    def __init__(self, outcome: StoredOutcome, command_id: str, *, counts: bool = False) -> None:
        super().__init__(outcome.type)
        self.outcome = outcome
        self.command_id = command_id  # the command that made the entity
        # Whether this command counts the money toward the tenant's limits: no when the
        # other command counted it, as one that ran to its answer did.
        self.counts = counts


@dataclass
class Tables:
    """The entity tables, keyed ``"{tenant}:{entity id}"``, values are JSON dicts."""

    customers: MutableMapping[str, Any]
    payment_methods: MutableMapping[str, Any]
    payments: MutableMapping[str, Any]
    refunds: MutableMapping[str, Any]
    disputes: MutableMapping[str, Any]
    subscriptions: MutableMapping[str, Any] = field(default_factory=dict)
    invoices: MutableMapping[str, Any] = field(default_factory=dict)
    payouts: MutableMapping[str, Any] = field(default_factory=dict)
    tax_rates: MutableMapping[str, Any] = field(default_factory=dict)
    tax_calculations: MutableMapping[str, Any] = field(default_factory=dict)
    connected_accounts: MutableMapping[str, Any] = field(default_factory=dict)
    transfers: MutableMapping[str, Any] = field(default_factory=dict)
    # Which records a customer or payment owns (customer.export), kept by the writes.
    owners: OwnerIndex = field(default_factory=OwnerIndex)

    def by_type(self, entity_type: str) -> MutableMapping[str, Any]:
        # (By name: a dict of the five tables built on every call showed in the profile.)
        table: MutableMapping[str, Any] = getattr(self, _TABLE_OF[entity_type])
        return table

    def of(self, model: type[EntityRecord]) -> MutableMapping[str, Any]:
        """The table of ``model``'s records."""
        return self.by_type(_entity_type(model))


# Entity type → the Tables field holding its records.
_TABLE_OF = {
    "customer": "customers",
    "payment_method": "payment_methods",
    "payment": "payments",
    "refund": "refunds",
    "dispute": "disputes",
    "subscription": "subscriptions",
    "invoice": "invoices",
    "payout": "payouts",
    "tax_rate": "tax_rates",
    "tax_calculation": "tax_calculations",
    "connected_account": "connected_accounts",
    "transfer": "transfers",
}
_ENTITY_TYPES: dict[type[EntityRecord], str] = {}


def _entity_type(model: type[EntityRecord]) -> str:
    """``model``'s entity type (its field's default), looked up once per class:
    ``model_fields`` is a class property of pydantic's, slow to reach on every load."""
    known = _ENTITY_TYPES.get(model)
    if known is None:
        known = _ENTITY_TYPES[model] = model.model_fields["entity_type"].default
    return known


# Retries and the circuit breaker wrap every provider call; injected by the pipeline.
GatewayCall = Callable[[Callable[[], Awaitable[T]]], Awaitable[T]]


async def _direct(fn: Callable[[], Awaitable[T]]) -> T:
    return await fn()


@dataclass
class HandlerContext:
    cmd: CommandRef
    gateway: gw.PaymentGateway
    tables: Tables
    call: Any = _direct  # GatewayCall; Any because a generic callable attribute is untypable
    entity_keys: bool = True  # False: a command parked by an older version (its keys)
    # False: a command with a digest-shaped key let through by an older version, which
    # sent that key as it is (see _provider_key).
    digest_keys_apart: bool = True
    request_hash: str | None = None  # of this command's type and data
    let_through: bool = False  # parked or in flight before: the provider may have acted
    # Let through: when its request first reached a worker (unix ms; None: not known).
    first_attempt_ms: int | None = None
    trace: CommandTrace | None = None  # the command's span (tracing on): provider call spans
    # How long a command id names one request (PAYSTREAM_IDEMPOTENCY_TTL_SECONDS).
    id_window_seconds: float = 24 * 3600
    # The earliest time its provider request can first have been sent (unix ms), for a
    # gateway that finds earlier tries by time (Paddle: gw.REQUEST_SENT_SINCE); None: not
    # known, or not asked for.
    sent_since_ms: int | None = None
    # "_" and the letters of the ids this command derives (see derived_id).
    _id_suffix: str | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def tenant(self) -> str:
        return self.cmd.tenant_id

    @property
    def idem(self) -> str:
        """Provider idempotency key: stable per (tenant, command idempotency key)."""
        return self._provider_key(self.cmd.idempotency_key)

    def create_key(self, kind: str, chosen_id: str | None) -> str:
        """Provider idempotency key of a create. When the producer chose the new entity's
        id, the entity is the scope: a create parked after the provider applied it (its
        answer lost) and sent again under a new command id is the same create, and must
        not move money twice. Otherwise the command's key (the id derives from it)."""
        if chosen_id is None or not self.entity_keys:
            return self.idem
        # "pse:": a namespace of its own (tenant ids hold no ":"), so no client
        # idempotency key such as "payment:p1" can name the same provider key.
        return self._provider_key(f"{kind}:{chosen_id}", prefix="pse")

    def _provider_key(self, scope: str, prefix: str = "ps") -> str:
        key = f"{prefix}:{self.cmd.tenant_id}:{scope}"
        # A client key shaped like an over-long key's digest is hashed as well: sent as
        # it is, it would be the provider key of the long key it is the digest of, and
        # the provider would answer a second request of ours with the first one's
        # effect, recorded twice here (review finding: one refund counted as two).
        if len(key) <= _PROVIDER_KEY_MAX and not (self.digest_keys_apart and digest_shaped(scope)):
            return key
        digest = hashlib.sha256(scope.encode()).hexdigest()
        return f"{prefix}:{self.cmd.tenant_id}:sha256:{digest}"

    def derived_id(self, prefix: str) -> str:
        """``ids.derived_id(prefix, tenant, command id)``. Its hash is of the tenant and
        the command id only, the prefix is put in front: hashed once per command (a
        create's "pay_..." and the "dp_..." it looks for share it)."""
        suffix = self._id_suffix
        if suffix is None:
            cmd = self.cmd
            suffix = self._id_suffix = derived_id("", cmd.tenant_id, cmd.command_id)
        return prefix + suffix

    def at_provider(self, rec: EntityRecord) -> None:
        """Refuse a provider call about an entity made through another provider than the
        tenant's current one: its provider ids mean nothing there (a capture would be
        `not_found`, and a delete's `not_found` would read as "deleted")."""
        if rec.provider != self.gateway.provider:
            # Not remembered: the tenant's gateway may be put back (a setup mistake), and
            # the same command must then go through.
            raise Rejection(
                RejectReason.INVALID_STATE,
                f"{rec.entity_type.replace('_', ' ')} {rec.id} was made through "
                f"{rec.provider}; tenant {self.tenant} now uses {self.gateway.provider}",
                remember=False,
            )

    def load(self, model: type[R], entity_id: str) -> R:
        """Load an entity of this tenant; another tenant's entity is simply not found."""
        raw = self.tables.of(model).get(entity_key(self.cmd.tenant_id, entity_id))
        if raw is None:
            # Not remembered under the idempotency key: the entity may yet be made (its
            # create parked through a provider outage, and replayed), and the same
            # command sent again then runs. (A redelivery of this record gets this answer.)
            raise Rejection(
                RejectReason.NOT_FOUND, f"no such {_label(model)}: {entity_id}", remember=False
            )
        record = model.model_validate(raw)
        self._applied_here(record)
        return record

    def load_kept(self, model: type[R], entity_id: str) -> R | None:
        """An entity a command reads beside the one it is about, or None when it is gone
        (retention removes an entity unchanged for long; what refers to it may outlive it)."""
        if self.tables.of(model).get(entity_key(self.cmd.tenant_id, entity_id)) is None:
            return None
        return self.load(model, entity_id)

    def new_id(self, model: type[EntityRecord], prefix: str) -> str:
        """The id of an entity the command creates without choosing one: derived from
        the tenant and command id, else (that one made by another request under the id,
        past the window) from the request too, so each request has an entity of its own."""
        derived = self.derived_id(prefix)
        raw = self.tables.of(model).get(entity_key(self.cmd.tenant_id, derived))
        if raw is None or self.request_hash is None:
            return derived
        if not self._reused_past_window(model.model_validate(raw)):
            return derived
        return derived_id(prefix, self.cmd.tenant_id, self.cmd.command_id, self.request_hash)

    def _reused_past_window(self, record: EntityRecord) -> bool:
        """Whether this command's id applied another request to ``record``, past the
        window: the id now names another request (README), not a conflict."""
        command_id = self.cmd.command_id
        applied_hash = record.applied_hash(command_id)
        if applied_hash is None or self.request_hash in (None, applied_hash):
            return False
        if record.applied_outcome(command_id) is None:
            return False
        at = record.applied_at(command_id)
        return at is not None and at < time.time() - self.id_window_seconds

    def _applied_here(self, record: EntityRecord) -> None:
        """AlreadyApplied if this command changed ``record`` before (a redelivery)."""
        done = record.applied_outcome(self.cmd.command_id)
        if done is None:
            return
        command_id = self.cmd.command_id
        applied_hash = record.applied_hash(command_id)
        if applied_hash is not None and self.request_hash not in (None, applied_hash):
            if self._reused_past_window(record):
                # Past the window, a command id names another request (README): a
                # producer using order ids may refund under the id its payment had.
                return
            # Another command under the same id (another source's, or a producer bug):
            # answering with the first one's outcome would report an effect never made.
            raise Rejection(
                RejectReason.IDEMPOTENCY_CONFLICT,
                f"command id {command_id!r} was already used for a different request",
                remember=False,  # not kept under the key: the corrected request may follow
            )
        raise AlreadyApplied(
            done,
            record.applied_salt(command_id),
            record.applied_emission(command_id),
            applied_hash,
        )

    def applied_to(self, model: type[EntityRecord], entity_id: str) -> None:
        """AlreadyApplied if this command made or changed that entity: one whose id the
        command derives (the dispute a charge raised), whose write may be all a crash
        kept of the command."""
        raw = self.tables.of(model).get(entity_key(self.cmd.tenant_id, entity_id))
        if raw is not None:
            self._applied_here(model.model_validate(raw))

    def ensure_new(self, model: type[EntityRecord], entity_id: str) -> None:
        """Refuse to create over an existing entity, unless this very command created it."""
        table = self.tables.of(model)
        raw = table.get(entity_key(self.cmd.tenant_id, entity_id))
        if raw is None:
            return
        record = model.model_validate(raw)
        self._applied_here(record)
        if self.let_through and self.entity_keys and self.request_hash is not None:
            # Its provider key is the entity's: whatever the provider did for the other
            # command, it did once, for both.
            for command_id, entry in record.applied.items():
                if entry.get("hash") == self.request_hash:
                    made = record.applied_outcome(command_id)
                    if made is not None:
                        raise AnsweredByAnother(made, command_id)
        raise Rejection(RejectReason.INVALID_STATE, f"{_label(model)} {entity_id} already exists")


def _label(model: type[EntityRecord]) -> str:
    return str(_entity_type(model)).replace("_", " ")


def entity_key(tenant_id: str, entity_id: str) -> str:
    return f"{tenant_id}:{entity_id}"


@dataclass
class HandlerResult:
    outcome_type: str
    primary: EntityRecord | None = None
    related: list[EntityRecord] = field(default_factory=list)
    error: GatewayError | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Answered `command.rejected` (this refusal) while the entities above are still
    # written: what a read-back found at the provider is the truth either way.
    rejected: Rejection | None = None
    # Emitted in this outcome only, never stored (not in the idempotency record nor an
    # entity's memory, so never in a replay): an account link's bearer URL.
    unkept: dict[str, Any] = field(default_factory=dict)


Handler = Callable[[HandlerContext, Any], Awaitable[HandlerResult]]


def _capability_required(ctx: HandlerContext, capability: gw.Capability, what: str) -> None:
    """`unsupported` before anything is asked of the provider, not remembered (the
    tenant's setup, not the command, as _gateway's), worded by gw.require_capability as
    every gateway words it: the provider lacks ``what``, or the tenant's own
    ``capabilities`` option left it out (review h74r), naming the tenant."""
    gateway = ctx.gateway
    if capability in gateway.capabilities:
        return
    try:
        gw.require_capability(
            capability, what, gateway.capabilities, gateway.offered, gateway.provider
        )
    except UnsupportedOperation as exc:
        message = unsupported_message(
            gateway.provider, what, left_out=exc.left_out, tenant_id=ctx.cmd.tenant_id
        )
        raise Rejection(RejectReason.UNSUPPORTED, message, remember=False) from exc


async def _gateway(ctx: HandlerContext, operation: str, fn: Callable[[], Awaitable[T]]) -> T:
    """Call the provider (``operation``: the gateway method, for the call's span); an
    unsupported operation becomes an `unsupported` rejection."""
    since = ctx.sent_since_ms
    token = None if since is None else gw.REQUEST_SENT_SINCE.set(since / 1000)
    tried = gw.REQUEST_TRIED_BEFORE.set(ctx.let_through)
    try:
        if ctx.trace is None:
            return await ctx.call(fn)
        return await ctx.trace.provider_call(ctx.gateway.provider, operation, ctx.call, fn)
    except UnsupportedOperation as exc:
        # The tenant's setup (its provider, the capabilities it is given), not the
        # command: not remembered, so the same key runs once that is changed, and one
        # let through before (the provider may have acted) is parked again, not refused.
        message = exc.message
        if exc.left_out is not None:  # (the gateway knows no tenant id: named here)
            message = unsupported_message(
                exc.provider, exc.operation, left_out=exc.left_out, tenant_id=ctx.cmd.tenant_id
            )
        raise Rejection(RejectReason.UNSUPPORTED, message, remember=False) from exc
    except GatewayError as exc:
        code = exc.code
        if code is _NOT_FOUND:
            raise Rejection(RejectReason.NOT_FOUND, exc.message) from exc
        if code is _INVALID_STATE:
            # (a draft whose lines an unfinished update left: not remembered, so the same
            # finalize is applied once the update is; review h81re F3)
            remember = not isinstance(exc, DraftLinesDiffer)
            raise Rejection(RejectReason.INVALID_STATE, exc.message, remember=remember) from exc
        unreachable = code is _PROVIDER_UNAVAILABLE and not exc.retryable
        if unreachable or code in _CREDENTIAL_ERRORS:
            # The tenant's credentials (or the way to the provider) are wrong, not the
            # command: answer, but do not remember the answer, so the same key succeeds
            # once that is fixed.
            raise Rejection(
                RejectReason.GATEWAY_NOT_CONFIGURED, exc.message, remember=False
            ) from exc
        raise
    finally:
        gw.REQUEST_TRIED_BEFORE.reset(tried)
        if token is not None:
            gw.REQUEST_SENT_SINCE.reset(token)


# The card's own answers: recorded as the operation failing (`payment.failed`, ...).
_CARD_ERRORS = ISSUER_DECLINES | {ErrorCode.AUTHENTICATION_REQUIRED, ErrorCode.PROCESSING_ERROR}


def _is_card_error(exc: GatewayError) -> bool:
    """A decline (the card's answer) rather than the provider refusing the request itself
    (a bad parameter, a reused key): that is the command's fault, rejected without a
    failed entity that would block the corrected command's id."""
    return exc.http_status == 402 or exc.code in _CARD_ERRORS


def _base(ctx: HandlerContext, entity_id: str) -> dict[str, Any]:
    cmd = ctx.cmd
    return {
        "tenant_id": cmd.tenant_id,
        "id": entity_id,
        "provider": ctx.gateway.provider,
        "created_by": cmd.command_id,
    }


# ---- customers --------------------------------------------------------------------


async def create_customer(ctx: HandlerContext, data: c.CreateCustomer) -> HandlerResult:
    cid = data.customer_id or ctx.new_id(CustomerRecord, "cus")
    ctx.ensure_new(CustomerRecord, cid)
    req = gw.CreateCustomer(
        email=data.email, name=data.name, description=data.description, metadata=data.metadata
    )
    key = ctx.create_key("customer", data.customer_id)
    res = await _gateway(
        ctx, "create_customer", lambda: ctx.gateway.create_customer(req, idempotency_key=key)
    )
    rec = CustomerRecord(
        **_base(ctx, cid),
        provider_customer_id=res.provider_customer_id,
        email=data.email,
        name=data.name,
        description=data.description,
        metadata=data.metadata,
    )
    return HandlerResult("customer.created", rec)


def _live_customer(ctx: HandlerContext, customer_id: str) -> CustomerRecord:
    rec = ctx.load(CustomerRecord, customer_id)
    if rec.deleted:
        raise Rejection(RejectReason.NOT_FOUND, f"no such customer: {customer_id}")
    return rec


def _changed_since_first_attempt(ctx: HandlerContext, rec: EntityRecord) -> bool:
    """Has another command changed ``rec`` since this let-through command was first
    tried? Its provider, asked again under the key, answers as it did then (a stale
    object): what changed since must not be written back over (review finding: a parked
    update re-driven after a newer one restored the old email). Each applied entry says
    when its command ran; the newest are the ones an entity keeps. A read (``*.refresh``,
    a Stripe webhook's among them) is no change: it only recorded what the provider
    holds, which the command asked again finds as well (counted, a parked update
    re-driven after a mere read was refused: review h81rx F1). An entry of the release
    before names no command type: counted, as it was."""
    first = ctx.first_attempt_ms
    if not ctx.let_through or first is None:
        return False
    mine = ctx.cmd.command_id
    return any(
        cid != mine
        and float(entry.get("at") or 0) * 1000 > first
        and entry.get("cmd") not in c.PROVIDER_READS
        for cid, entry in rec.applied.items()
    )


def _customer_update_not_in_effect(data: c.UpdateCustomer, rec: CustomerRecord) -> list[str]:
    """The fields ``data`` sets that the customer read back does not hold as asked (by
    name only: their values are personal data, kept out of a rejection's message)."""
    missing = [
        name
        for name in ("email", "name", "description")
        if getattr(data, name) is not None and getattr(data, name) != getattr(rec, name)
    ]
    for k, v in sorted((data.metadata or {}).items()):
        if rec.metadata.get(k, "") != v:
            missing.append(f"metadata[{k}]")
    return missing


async def update_customer(ctx: HandlerContext, data: c.UpdateCustomer) -> HandlerResult:
    rec = _live_customer(ctx, data.customer_id)
    ctx.at_provider(rec)
    if _changed_since_first_attempt(ctx, rec):
        # Changed since this update was first tried. Asked again under its key, the
        # provider would answer as of then if it had applied it (its fields, not the
        # newer ones), or apply it now over the newer fields if it never had. Instead
        # the customer is read back as the provider holds it, with this update in it
        # or not, and recorded so (review finding).
        now = await _gateway(
            ctx,
            "retrieve_customer",
            lambda: ctx.gateway.retrieve_customer(
                gw.RetrieveCustomer(provider_customer_id=rec.provider_customer_id),
                idempotency_key=ctx.idem,
            ),
        )
        rec.email, rec.name, rec.description = now.email, now.name, now.description
        rec.metadata = dict(now.metadata)
        missing = _customer_update_not_in_effect(data, rec)
        if missing:
            # Never applied, or a newer update changed the same field: refused as a
            # subscription's update is (review h77i), the read-back still recorded.
            return HandlerResult(
                "customer.updated",
                rec,
                rejected=Rejection(
                    RejectReason.INVALID_STATE,
                    f"customer {rec.id} changed since this update was first tried, and the "
                    f"update is not in effect ({', '.join(missing)} not as asked): send it "
                    "again with a new command id to apply it",
                ),
            )
        return HandlerResult("customer.updated", rec)
    if len(gw.merged_metadata(rec.metadata, data.metadata)) > gw.METADATA_KEYS_MAX:
        # Stripe's 50 keys are the customer's, after the merge (not remembered: another
        # update removing keys makes the same one valid, and Stripe keeps no answer).
        raise Rejection(
            RejectReason.VALIDATION_ERROR,
            f"customer {rec.id} would hold more than {gw.METADATA_KEYS_MAX} metadata keys",
            remember=False,
        )
    req = gw.UpdateCustomer(
        provider_customer_id=rec.provider_customer_id,
        email=data.email,
        name=data.name,
        description=data.description,
        metadata=data.metadata,
    )
    await _gateway(
        ctx, "update_customer", lambda: ctx.gateway.update_customer(req, idempotency_key=ctx.idem)
    )
    for name in ("email", "name", "description"):
        value = getattr(data, name)
        if value is not None:
            setattr(rec, name, value)
    rec.metadata = gw.merged_metadata(rec.metadata, data.metadata)  # as the provider does
    return HandlerResult("customer.updated", rec)


# What a delete or an erasure did at the provider (`provider_deletion` in the outcome).
DELETED_THERE = "deleted"
# The provider has no such customer: deleted there already (a delete applied but parked,
# or done in its dashboard), or the tenant's credentials now reach another account.
NOT_FOUND_THERE = "not_found"
# Made through a provider the tenant no longer uses: nothing could be asked of it.
OTHER_PROVIDER = "other_provider"


async def _delete_at_provider(ctx: HandlerContext, rec: CustomerRecord) -> str:
    """Delete the customer at the provider; one the provider no longer has counts as
    deleted (refusing would leave the customer live here, and erasure impossible, for
    good), and the outcome says which it was."""
    req = gw.DeleteCustomer(provider_customer_id=rec.provider_customer_id)
    try:
        await _gateway(
            ctx,
            "delete_customer",
            lambda: ctx.gateway.delete_customer(req, idempotency_key=ctx.idem),
        )
    except Rejection as rej:
        if rej.reason is not RejectReason.NOT_FOUND:
            raise
        return NOT_FOUND_THERE
    return DELETED_THERE


async def delete_customer(ctx: HandlerContext, data: c.DeleteCustomer) -> HandlerResult:
    rec = _live_customer(ctx, data.customer_id)
    ctx.at_provider(rec)
    there = await _delete_at_provider(ctx, rec)
    rec.deleted = True
    return HandlerResult("customer.deleted", rec, extra={"provider_deletion": there})


async def erase_customer(ctx: HandlerContext, data: c.EraseCustomer) -> HandlerResult:
    rec = ctx.load(CustomerRecord, data.customer_id)
    if rec.erased:
        raise Rejection(RejectReason.INVALID_STATE, f"customer {rec.id} is already erased")
    extra = {}
    if not rec.deleted:
        # Erasure goes ahead here even when the provider cannot be asked: the outcome
        # says so, for the operator to have the customer deleted there.
        there = (
            OTHER_PROVIDER
            if rec.provider != ctx.gateway.provider
            else await _delete_at_provider(ctx, rec)
        )
        extra["provider_deletion"] = there
    # Amounts and ids stay (accounting needs them); personal data goes. The ledger sink
    # deletes the customer's data key on this outcome, shredding its stored copies.
    rec.email = rec.name = rec.description = None
    rec.metadata = {}
    rec.deleted = rec.erased = True
    # The request hashes go too (see scrub_customer_applied).
    rec.applied = scrub_customer_applied(rec.applied, rec.id)
    return HandlerResult("customer.erased", rec, extra=extra)


def _owned_records(
    ctx: HandlerContext, entity_type: str, ids: set[str]
) -> Iterator[dict[str, Any]]:
    """The tenant's records of ``entity_type`` (as stored) whose owner is one of ``ids``,
    found by the owner index (tables/owners.py)."""
    prefix = f"{ctx.tenant}:"
    table = ctx.tables.by_type(entity_type)
    field_name = OWNER_FIELDS[entity_type]
    keys = ctx.tables.owners.keys_of(entity_type, table, ctx.tenant, ids)
    # (None: the index is not to be trusted now, a rebalance under way: every record.)
    items = table.items() if keys is None else ((k, table.get(k)) for k in keys)
    for key, raw in items:
        if raw is None or not str(key).startswith(prefix):
            continue
        if raw.get(field_name) in ids:  # (an index entry may be stale: checked)
            yield raw


# JSON bytes of rows in a `customer.exported` outcome (a payment is about 450 bytes).
EXPORT_MAX_BYTES = 256 * 1024


async def export_customer(ctx: HandlerContext, data: c.ExportCustomer) -> HandlerResult:
    """The customer's record with their payment methods, payments, the payments' refunds
    and disputes, subscriptions and the subscriptions' invoices."""
    rec = ctx.load(CustomerRecord, data.customer_id)

    def owned(entity_type: str, ids: set[str]) -> list[dict[str, Any]]:
        """The tenant's records of ``entity_type`` whose owner is one of ``ids``."""
        rows = []
        for raw in _owned_records(ctx, entity_type, ids):
            # As published (snapshot()): without the entity view's `entity_type` tag,
            # which the export's closed row schemas do not allow.
            row = public_row(raw)
            row.pop("entity_type", None)
            rows.append(row)
        return sorted(rows, key=lambda r: r["id"])

    methods = owned("payment_method", {rec.id})
    payments = owned("payment", {rec.id})
    paid = {p["id"] for p in payments}
    refunds = owned("refund", paid)
    disputes = owned("dispute", paid)
    subscriptions = owned("subscription", {rec.id})
    # By their customer, which is their subscription's (set when recorded, never moved):
    # one whose subscription has left the tables (retention) is listed all the same.
    invoices = owned("invoice", {rec.id})
    export: dict[str, Any] = {"customer": rec.snapshot()}
    truncated = {}
    # One outcome record (and its stored copy) must stay well under the broker's message
    # size (1 MB by default): one the broker refuses fails the whole batch, again on
    # every redelivery. So the lists share a byte budget; the ledger keeps everything.
    budget = EXPORT_MAX_BYTES
    # (In this order: a list is cut only once those before it are whole.)
    for name, rows in (
        ("payment_methods", methods),
        ("payments", payments),
        ("refunds", refunds),
        ("disputes", disputes),
        ("subscriptions", subscriptions),
        ("invoices", invoices),
    ):
        kept = []
        for row in rows:
            budget -= len(orjson.dumps(row))
            if budget < 0:
                truncated[name] = len(rows)
                break
            kept.append(row)
        export[name] = kept
    if truncated:
        export["truncated"] = truncated
    # Read-only: the outcome carries the export; no entity changes.
    return HandlerResult("customer.exported", extra={"customer_id": rec.id, "export": export})


# ---- payment methods --------------------------------------------------------------


def _chosen_id_taken(ctx: HandlerContext, exc: GatewayError, chosen_id: str | None) -> bool:
    """Whether the provider refused a create under a producer-chosen id's key for holding
    an earlier request of other parameters (its final idempotency error): the id is taken
    there, answered invalid_state. (Not for a command let through: its provider decides.)"""
    return (
        exc.code is ErrorCode.IDEMPOTENCY_ERROR
        and not exc.retryable
        and chosen_id is not None
        and not ctx.let_through
    )


async def attach_payment_method(ctx: HandlerContext, data: c.AttachPaymentMethod) -> HandlerResult:
    pmid = data.payment_method_id or ctx.new_id(PaymentMethodRecord, "pm")
    # First: a redelivery of this very attach is answered whatever became of the customer.
    ctx.ensure_new(PaymentMethodRecord, pmid)
    customer = _live_customer(ctx, data.customer_id)
    ctx.at_provider(customer)
    req = gw.AttachPaymentMethod(
        provider_customer_id=customer.provider_customer_id, token=data.token
    )
    key = ctx.create_key("payment_method", data.payment_method_id)
    try:
        res = await _gateway(
            ctx,
            "attach_payment_method",
            lambda: ctx.gateway.attach_payment_method(req, idempotency_key=key),
        )
    except GatewayError as exc:
        if _chosen_id_taken(ctx, exc, data.payment_method_id):
            # The id's key holds an earlier attach of other parameters that made no
            # payment method here: declined, or saved with its answer lost and parked
            # (review h68aa: only the provider knows which). The id is taken there.
            raise Rejection(
                RejectReason.INVALID_STATE,
                f"payment method id {pmid} is taken at the provider by an earlier attach "
                "of another card: one declined, or one still parked (`paystream dlq "
                "list`), which may yet attach it; attach this card under a new id",
            ) from exc
        if exc.retryable or not _is_card_error(exc):
            raise
        # The customer named: card testing by saving cards reaches the fraud rules.
        extra = {"id": pmid, "customer_id": customer.id}
        return HandlerResult("payment_method.attach_failed", error=exc, extra=extra)
    rec = PaymentMethodRecord(
        **_base(ctx, pmid),
        customer_id=customer.id,
        provider_payment_method_id=res.provider_payment_method_id,
        brand=res.brand,
        last4=res.last4,
        exp_month=res.exp_month,
        exp_year=res.exp_year,
        fingerprint=res.fingerprint,
    )
    return HandlerResult("payment_method.attached", rec)


async def detach_payment_method(ctx: HandlerContext, data: c.DetachPaymentMethod) -> HandlerResult:
    rec = ctx.load(PaymentMethodRecord, data.payment_method_id)
    if not rec.attached:
        raise Rejection(RejectReason.INVALID_STATE, f"payment method {rec.id} is already detached")
    ctx.at_provider(rec)
    req = gw.DetachPaymentMethod(provider_payment_method_id=rec.provider_payment_method_id)
    try:
        await _gateway(
            ctx,
            "detach_payment_method",
            lambda: ctx.gateway.detach_payment_method(req, idempotency_key=ctx.idem),
        )
    except (Rejection, GatewayError) as refused:
        # How providers refuse to detach a method attached to no customer: the
        # simulator's state error; Stripe's "not attached to a customer so detachment is
        # impossible", an invalid_request_error whose code is not documented.
        not_attached = (
            refused.reason is RejectReason.INVALID_STATE
            if isinstance(refused, Rejection)
            else refused.code is ErrorCode.INVALID_REQUEST
        )
        owner = ctx.tables.of(CustomerRecord).get(entity_key(ctx.cmd.tenant_id, rec.customer_id))
        gone = isinstance(owner, dict) and (owner.get("deleted") or owner.get("erased"))
        if not not_attached or not gone:
            raise
        # Its customer deleted: the provider detached it then (Stripe: deleting a customer
        # removes its card details) and refuses now. (One deleted here only, the provider
        # not finding it, may still hold the card attached: asked first, it detaches it.)
    rec.attached = False
    return HandlerResult("payment_method.detached", rec)


# ---- payments ---------------------------------------------------------------------

_PAYMENT_OUTCOME = {
    gw.PaymentStatus.AUTHORIZED: "payment.authorized",
    gw.PaymentStatus.SUCCEEDED: "payment.succeeded",
    gw.PaymentStatus.REQUIRES_ACTION: "payment.requires_action",
    # accepted, result pending (e.g. bank debits): the provider settles it later
    gw.PaymentStatus.PROCESSING: "payment.processing",
    gw.PaymentStatus.CANCELED: "payment.canceled",
    gw.PaymentStatus.FAILED: "payment.failed",
}


_SUCCEEDED_STATUS = gw.PaymentStatus.SUCCEEDED.value
_CANCELED_STATUS = gw.PaymentStatus.CANCELED.value


def _apply_payment_result(ctx: HandlerContext, rec: PaymentRecord, res: gw.PaymentResult) -> None:
    # The answer's fields from its ``__dict__``, its status's value as ``_value_`` (what
    # ``.value`` returns): see create_payment.
    r = res.__dict__
    previous = rec.status
    rec.status = r["status"]._value_
    captured_before = rec.amount_captured
    rec.amount_captured = r["amount_captured"]
    rec.amount_refunded = max(rec.amount_refunded, r["amount_refunded"])
    if rec.amount_tax is not None and rec.tax_calculation_id is not None:
        _tax_collected(ctx, rec, previous, captured_before)
    rec.failure_code = r["failure_code"]
    if r["provider_charge_id"] is not None and r["status"] is gw.PaymentStatus.FAILED:
        # Kept for a failed payment only, whose refresh tells another card's decline by
        # it (and whose record alone an earlier version, mid-upgrade, cannot read).
        rec.provider_charge_id = r["provider_charge_id"]
    if rec.next_action is not None or r["next_action"] is not None:
        # (the one held: a payment recorded before the flag was, waiting on its customer)
        rec.customer_action_delivered = True
    rec.failure_message = r["failure_message"]
    rec.next_action = r["next_action"]
    fee = rec.application_fee_amount
    if fee is not None:
        if previous == _PAYMENT_FAILED and rec.status not in _UNCOLLECTED and fee == 0:
            # Declined, then paid (the provider kept it open: another card): its fee is
            # collected after all, as the provider names it (0 if it names none).
            fee = r["application_fee_amount"] or 0
        rec.application_fee_amount = _fee_collected(fee, rec.status, rec.amount_captured)


def _fee_collected(fee: int | None, status: str, captured: int) -> int | None:
    """A destination charge's application fee as its platform collects it (review
    h79r_a L2): the fee named while it may still be captured; 0 once canceled or failed
    with nothing captured (the provider collects none; a ledger summing the fee column
    must not count it); capped at what was captured (by payment.capture, or in the
    provider's dashboard, read back): Stripe collects at most the amount captured."""
    if fee is None:
        return None
    if captured == 0 and status in _UNCOLLECTED:
        return 0
    return captured if 0 < captured < fee else fee


def _tax_collected(
    ctx: HandlerContext, rec: PaymentRecord, previous: str, captured_before: int
) -> None:
    """A taxed payment's ``amount_tax`` as the tax of what it collects (review h74h: a
    partial capture kept its calculation's whole tax, and a tax report summing it
    overstated what was collected). Captured in part (first read captured, for less than
    its ``amount``: by payment.capture, or in the provider's dashboard and read back by a
    refresh), its tax is pro-rated: amount_tax * captured / amount, half up, in integers
    (a capture of the whole keeps it exactly). Canceled or failed with nothing captured
    (its authorization released or expired at the provider; declined, its 3-D Secure
    step failed), nothing was collected: 0 (review h74t F2). A failed payment its
    provider keeps open (``customer_action_delivered``: the customer's browser may pay it
    with another card) read back in any other status takes its calculation's tax again
    (None, unknown, if retention has removed that calculation). Pro-rated once only: a
    payment is captured once (the rest released), so a later read leaves it as it is. The
    calculation (``tax_calculation_id``) keeps its own figure."""
    status = rec.status
    if previous == _PAYMENT_FAILED and status not in _UNCOLLECTED:
        calc = ctx.load_kept(TaxCalculationRecord, str(rec.tax_calculation_id))
        rec.amount_tax = None if calc is None else calc.amount_tax
        if rec.amount_tax is None:
            return
    captured = rec.amount_captured
    if captured == 0 and status in _UNCOLLECTED:
        rec.amount_tax = 0
    elif captured_before == 0 and 0 < captured < rec.amount:
        tax = rec.amount_tax or 0
        rec.amount_tax = (2 * tax * captured + rec.amount) // (2 * rec.amount)


# A payment in these statuses (with nothing captured) collected no tax.
_UNCOLLECTED = frozenset({_CANCELED_STATUS, _PAYMENT_FAILED})


async def create_payment(ctx: HandlerContext, data: c.CreatePayment) -> HandlerResult:
    pid = data.payment_id or ctx.new_id(PaymentRecord, "pay")
    ctx.ensure_new(PaymentRecord, pid)
    _dispute_applied(ctx, pid)  # raised at charge (_new_dispute)
    amount_tax = None if data.tax_calculation_id is None else _payment_tax(ctx, data, pid)
    # (No table read for a payment without a destination: the hot path unchanged.)
    destination = (
        None if data.connected_account_id is None else _destination(ctx, data.connected_account_id)
    )
    # Let through before, the provider may have charged under this key: a customer
    # deleted or a payment method detached since must not turn that into a rejection.
    # The provider answers with what it did (or refuses, as it would have then).
    customer = None
    if data.customer_id:
        customer = (
            ctx.load(CustomerRecord, data.customer_id)
            if ctx.let_through
            else _live_customer(ctx, data.customer_id)
        )
        ctx.at_provider(customer)
    provider_pm: str
    if data.payment_method_id:
        pm = ctx.load(PaymentMethodRecord, data.payment_method_id)
        if not pm.attached and not ctx.let_through:
            raise Rejection(RejectReason.INVALID_STATE, f"payment method {pm.id} is detached")
        if customer is not None and pm.customer_id != customer.id:
            raise Rejection(
                RejectReason.INVALID_STATE, f"payment method {pm.id} belongs to another customer"
            )
        ctx.at_provider(pm)
        provider_pm = pm.provider_payment_method_id
        if customer is None and pm.customer_id is not None:
            # A saved card is its customer's: Stripe refuses it without that customer
            # (parameter_missing), and would keep that refusal under the key.
            # (A deleted customer's card is refused here, as a named deleted one is.)
            customer = (
                ctx.load(CustomerRecord, pm.customer_id)
                if ctx.let_through
                else _live_customer(ctx, pm.customer_id)
            )
            ctx.at_provider(customer)
    else:
        provider_pm = str(data.payment_method_token)
    # The command's fields read from its ``__dict__``, where a pydantic model keeps them
    # (the same objects): an attribute read on a model goes through its ``__getattr__``
    # hook, several times a dict read's cost, and a payment reads a dozen.
    d = data.__dict__
    manual = d["capture"] is _MANUAL
    # Built, not validated again: every value is the command's validated data, or one
    # of the types' own (see paystream.built).
    req = built(
        gw.CreatePayment,
        {
            "amount": built(Money, {"amount": d["amount"], "currency": d["currency"]}),
            "provider_customer_id": customer.provider_customer_id if customer else None,
            "provider_payment_method_id": provider_pm,
            "capture_method": _CAPTURE_MANUAL if manual else _CAPTURE_AUTOMATIC,
            "description": d["description"],
            "statement_descriptor": d["statement_descriptor"],
            "return_url": d["return_url"],
            "metadata": (
                gw.payment_ref(d["metadata"], ctx.cmd.tenant_id, pid)
                if _WEBHOOKS in ctx.gateway.capabilities
                else dict(d["metadata"])
            ),
            "destination_account": destination,
            "application_fee_amount": d["application_fee_amount"],
        },
    )
    customer_id = customer.id if customer else None
    try:
        key = ctx.create_key("payment", d["payment_id"])
        res = await _create_at_provider(ctx, req, key, d["metadata"], pid)
    except GatewayError as exc:
        if _chosen_id_taken(ctx, exc, d["payment_id"]):
            # The id's key holds an earlier create of other parameters that made no
            # payment here: one the provider refused, or one that charged with its answer
            # lost and parked (only the provider knows which). The id is taken there.
            raise Rejection(
                RejectReason.INVALID_STATE,
                f"payment id {pid} is taken at the provider by an earlier create of other "
                "parameters: one refused, or one still parked (`paystream dlq list`), which "
                "may have charged; check before sending this payment under a new id",
            ) from exc
        if exc.retryable or not _is_card_error(exc):
            raise
        # Declined, the provider's payment still exists (Stripe: requires_payment_method).
        failed = _new_payment(
            ctx,
            pid,
            data,
            customer_id,
            provider_payment_id=exc.provider_payment_id or "",
            status=_PAYMENT_FAILED,
            failure_code=exc.decline_code or exc.code.value,
            failure_message=exc.message,
            # (declined: it collected nothing, README Tax; review h74t F2)
            amount_tax=None if amount_tax is None else 0,
        )
        return HandlerResult("payment.failed", failed, error=exc)
    # The answer's fields from its ``__dict__`` too (as the command's, above), and its
    # status's value as ``_value_``: what ``.value`` returns, without its descriptor.
    r = res.__dict__
    status = r["status"]
    if amount_tax is not None and status._value_ in _UNCOLLECTED and not r["amount_captured"]:
        amount_tax = 0  # (answered failed or canceled: it collected nothing, as above)
    rec = _new_payment(
        ctx,
        pid,
        data,
        customer_id,
        r["provider_payment_id"],
        status._value_,
        r["amount_captured"],
        max(0, r["amount_refunded"]),  # (as _apply_payment_result has it)
        r["failure_code"],
        r["failure_message"],
        r["next_action"],
        r["provider_charge_id"] if status is gw.PaymentStatus.FAILED else None,
        amount_tax,
    )
    return HandlerResult(_PAYMENT_OUTCOME[status], rec, _new_dispute(ctx, rec, res))


def _destination(
    ctx: HandlerContext,
    account_id: str,
    what: str = "destination charges",
    one: str = "a destination charge",
) -> str:
    """The provider's id of the connected account a destination charge pays: this
    tenant's (another's, or none, is `not_found`), ``enabled`` (charges and payouts on at
    the provider), made through the tenant's provider; refused `unsupported` for a gateway
    without connected accounts (Square, Paddle) and for a tenant that itself acts for a
    connected account (Stripe-Account: a destination charge is the platform's). All
    before any provider call. One let through (the provider may have charged) is not
    refused for a status changed since."""
    _capability_required(ctx, _CONNECTED_ACCOUNTS, f"{what} (connected accounts)")
    acting_for = getattr(ctx.gateway, "connected_account", None)
    if acting_for is not None:
        raise Rejection(
            RejectReason.UNSUPPORTED,
            f"{what} are the platform's: this tenant acts for the connected "
            f"account {acting_for} (--connected-account); send it for a tenant configured "
            "without one",
            remember=False,
        )
    account = ctx.load(ConnectedAccountRecord, account_id)
    if account.status != "enabled" and not ctx.let_through:
        raise Rejection(
            RejectReason.INVALID_STATE,
            f"connected account {account.id} is {account.status}: {one} "
            "needs an enabled account (onboarding finished: connected_account.refresh)",
            remember=False,
        )
    if account.capabilities and "transfers" not in account.capabilities and not ctx.let_through:
        # (Made naming only card_payments: Stripe refuses a transfer to it.)
        raise Rejection(
            RejectReason.INVALID_STATE,
            f"connected account {account.id} was made without the transfers capability "
            f"(it requested {', '.join(account.capabilities)}): {one} needs it",
            remember=False,
        )
    ctx.at_provider(account)
    return account.provider_account_id


def _payment_tax(ctx: HandlerContext, data: c.CreatePayment, payment_id: str) -> int | None:
    """The tax of the calculation a payment names: this tenant's (another's is not found),
    in the payment's currency, not expired, its amount_total the payment's amount; the
    tenant's capabilities holding `tax` (_tax_supported). One let through (the provider
    may have charged) is not refused for what changed since: its calculation expired or
    swept (its tax is then unknown: None), or `tax` narrowed out."""
    calc_id = str(data.tax_calculation_id)
    if ctx.let_through:
        kept = ctx.load_kept(TaxCalculationRecord, calc_id)
        return None if kept is None else kept.amount_tax
    _tax_supported(ctx)
    calc = ctx.load(TaxCalculationRecord, calc_id)
    if calc.currency != data.currency:
        raise Rejection(
            RejectReason.VALIDATION_ERROR,
            f"tax calculation {calc.id} is in {calc.currency}, payment {payment_id} in "
            f"{data.currency}",
        )
    if calc.amount_total != data.amount:
        raise Rejection(
            RejectReason.VALIDATION_ERROR,
            f"payment {payment_id}'s amount {format_minor(data.amount, data.currency)} is not "
            f"tax calculation {calc.id}'s amount_total "
            f"{format_minor(calc.amount_total, calc.currency)}",
        )
    if calc.expires_at.timestamp() <= time.time():
        raise Rejection(
            RejectReason.INVALID_STATE,
            f"tax calculation {calc.id} expired at {calc.expires_at.isoformat()}: calculate "
            "the tax again (tax.calculate)",
        )
    return calc.amount_tax


async def _create_at_provider(
    ctx: HandlerContext,
    req: gw.CreatePayment,
    key: str,
    sent_metadata: Mapping[str, str],
    payment_id: str,
) -> gw.PaymentResult:
    """The create, at the provider. One let through (parked, or in flight at a crash) may
    have been first sent otherwise than this version sends it: by a version before the
    webhook reference (gw.payment_ref), or with it by a tenant whose capabilities have
    lost `webhooks` since. Its provider compares the parameters sent again under the key
    and refuses others (Stripe's idempotency_error). Sent again the other way, it is
    answered as it was (the key holds a request: the provider refuses all but that one,
    and charges nothing under it a second time)."""

    def refused_before_the_call(exc: GatewayError) -> None:
        if ctx.let_through and exc.code is ErrorCode.INVALID_REQUEST and not exc.reached_provider:
            # Refused by the gateway before the call (a rule newer than the version that
            # first sent it: a withdrawn currency, a return URL): the provider may hold a
            # charge under the key. Parked again, never a kept refusal (review h68am).
            raise Rejection(RejectReason.VALIDATION_ERROR, exc.message, remember=False) from exc

    return await _sent_either_way(
        ctx,
        "create_payment",
        lambda r: ctx.gateway.create_payment(r, idempotency_key=key),
        req,
        gw.payment_ref(sent_metadata, ctx.cmd.tenant_id, payment_id),
        sent_metadata,
        first_refused=refused_before_the_call,
    )


async def _sent_either_way(
    ctx: HandlerContext,
    operation: str,
    send: Callable[[_Req], Awaitable[T]],
    req: _Req,
    with_ref: Mapping[str, str],
    plain: Mapping[str, str],
    *,
    first_refused: Callable[[GatewayError], None] | None = None,
    sent_before: Sequence[Mapping[str, Any]] = ({},),
) -> T:
    """A create sent with ``req`` and, if it is let through and its provider refuses it
    for other parameters under the key (Stripe's idempotency_error, final), once more
    each other way it may have been first sent, until one is answered: with ``plain``
    metadata and with ``with_ref`` (the webhook reference), each with the fields of each
    of ``sent_before`` (a refund of the rest: the amount an older version named, then
    none). One let through may have been first sent either way (by a version before the
    reference, or by a tenant that had `webhooks` then and not now, or the reverse). Safe:
    the key holds one request, so the provider refuses all but that one and makes nothing
    under it a second time. Refused every way, the last refusal is raised. ``first_refused``
    may answer the first error itself (raise) before that."""
    try:
        return await _gateway(ctx, operation, lambda: send(req))
    except GatewayError as exc:
        if first_refused is not None:
            first_refused(exc)
        if not (ctx.let_through and _refused_under_the_key(exc)):
            raise
        refused = exc
    tried = [req]
    for fields in sent_before:
        for metadata in (plain, with_ref):
            other = req.model_copy(update={**fields, "metadata": dict(metadata)})
            if other in tried:  # (a reference not added to 50 keys: the same request)
                continue
            tried.append(other)
            try:
                return await _gateway(ctx, operation, partial(send, other))
            except GatewayError as exc:
                if not _refused_under_the_key(exc):
                    raise
                refused = exc
    raise refused


def _refused_under_the_key(exc: GatewayError) -> bool:
    """Refused for other parameters under its key, for good (Stripe's idempotency_error)."""
    return exc.code is ErrorCode.IDEMPOTENCY_ERROR and not exc.retryable


def _new_payment(
    ctx: HandlerContext,
    payment_id: str,
    data: c.CreatePayment,
    customer_id: str | None,
    provider_payment_id: str,
    status: str,
    amount_captured: int = 0,
    amount_refunded: int = 0,
    failure_code: str | None = None,
    failure_message: str | None = None,
    next_action: dict[str, Any] | None = None,
    provider_charge_id: str | None = None,
    amount_tax: int | None = None,
) -> PaymentRecord:
    """A create's payment record, made once its provider has answered, with every field
    as it ends up (made up front and then changed field by field, it cost a pydantic
    attribute write each). Its values are validated ones only (the command's data, the
    context's ids, the provider's answer as its result type has it): built, not
    validated again (paystream.built). (Positional parameters: a call by keywords cost
    more; the command's fields from its ``__dict__``, as in create_payment.)"""
    cmd = ctx.cmd
    d = data.__dict__
    return built(
        PaymentRecord,
        {
            "entity_type": "payment",
            "tenant_id": cmd.tenant_id,
            "id": payment_id,
            "version": 0,
            "provider": ctx.gateway.provider,
            "created_by": cmd.command_id,
            "applied": {},
            "status": status,
            "amount": d["amount"],
            "currency": d["currency"],
            "capture_method": "manual" if d["capture"] is _MANUAL else "automatic",
            "amount_captured": amount_captured,
            "amount_refunded": amount_refunded,
            "customer_id": customer_id,
            "payment_method_id": d["payment_method_id"],
            "provider_payment_id": provider_payment_id,
            "provider_charge_id": provider_charge_id,
            "failure_code": failure_code,
            "failure_message": failure_message,
            "next_action": next_action,
            "dispute_id": None,
            "customer_action_delivered": next_action is not None,
            "amount_tax": amount_tax,
            "tax_calculation_id": d["tax_calculation_id"],
            "connected_account_id": d["connected_account_id"],
            # (a destination charge's: 0 when none was named; the tenant's platform keeps
            # it, once collected)
            "application_fee_amount": (
                None
                if d["connected_account_id"] is None
                else _fee_collected(d["application_fee_amount"] or 0, status, amount_captured)
            ),
            "amount_transferred": None,  # (none until a transfer names it)
        },
    )


# How far a dispute has gone (paystream's statuses: the gateways map the provider's, e.g.
# Stripe's warning_* and appeal_*): it moves forward, but for a new response window, which
# a later evidence deadline tells (_dispute_read_back). Decided, the provider may open
# another on the payment after it (_another_dispute).
_OPEN, _ANSWERED, _DECIDED_STAGE = 0, 1, 2
_DISPUTE_STAGE: dict[str, int] = {
    gw.DisputeStatus.NEEDS_RESPONSE: _OPEN,
    gw.DisputeStatus.UNDER_REVIEW: _ANSWERED,
    gw.DisputeStatus.WON: _DECIDED_STAGE,
    gw.DisputeStatus.LOST: _DECIDED_STAGE,
    gw.DisputeStatus.INQUIRY_CLOSED: _DECIDED_STAGE,
}
_DECIDED = frozenset(s for s, stage in _DISPUTE_STAGE.items() if stage == _DECIDED_STAGE)


def _dispute_ids(ctx: HandlerContext, payment_id: str) -> tuple[str, str]:
    """The ids a dispute the command raises on a payment may have: derived from the
    command, else (that one naming another payment's) from the command and payment."""
    cmd = ctx.cmd
    return ctx.derived_id("dp"), derived_id("dp", cmd.tenant_id, cmd.command_id, payment_id)


def _dispute_applied(ctx: HandlerContext, payment_id: str) -> None:
    """AlreadyApplied if the command raised a dispute on the payment (a crash may have
    kept only that write of it): its first, or another after a decided one
    (_another_dispute)."""
    derived = ctx.derived_id("dp")
    held = ctx.tables.of(DisputeRecord).get(entity_key(ctx.cmd.tenant_id, derived))
    if held is None:
        return  # (the other id is taken only where this one names another dispute)
    ctx.applied_to(DisputeRecord, derived)
    ctx.applied_to(DisputeRecord, _dispute_ids(ctx, payment_id)[1])


def _new_dispute(
    ctx: HandlerContext, rec: PaymentRecord, res: gw.PaymentResult
) -> list[EntityRecord]:
    """The dispute the provider reports on a payment (at charge, at capture, or first
    read by a refresh), recorded once so that the tenant can answer it."""
    if res.dispute is None or rec.dispute_id is not None:
        return []
    derived, of_payment = _dispute_ids(ctx, rec.id)
    held = ctx.tables.of(DisputeRecord).get(entity_key(ctx.cmd.tenant_id, derived))
    # The command's id reused past the window, on another payment: the id it derives
    # names that payment's dispute, which must not be written over.
    dispute_id = derived if held is None or held.get("payment_id") == rec.id else of_payment
    return _record_dispute(ctx, rec, res.dispute, dispute_id)


def _record_dispute(
    ctx: HandlerContext, rec: PaymentRecord, found: gw.DisputeResult, dispute_id: str
) -> list[EntityRecord]:
    """``found`` recorded as ``dispute_id``, the dispute the payment names from now on."""
    dispute = DisputeRecord(
        **_base(ctx, dispute_id),
        payment_id=rec.id,
        status=found.status.value,
        amount=found.amount.amount if found.amount else rec.amount,
        currency=rec.currency,
        provider_dispute_id=found.provider_dispute_id,
        reason=found.reason,
        evidence_due_by=found.evidence_due_by,
    )
    rec.dispute_id = dispute.id
    return [dispute]


def _amount_in_tens(amount: int, currency: str) -> None:
    """A capture or refund in a three-decimal currency (BHD, JOD, KWD, OMR, TND) is taken
    in multiples of 10 minor units, as a charge is (Stripe's rule, which the simulator
    applies inside its call). Refused here, where the payment's currency is known: the
    Stripe gateway, whose capture and refund requests name no currency, sent such an
    amount on (review h70f). Not kept under the key: the corrected amount may follow.
    (Not for a command let through before: its provider may have acted, and decides.)"""
    problem = three_decimal_problem(Money(amount=amount, currency=currency))
    if problem is not None:
        raise Rejection(RejectReason.VALIDATION_ERROR, problem, remember=False)


async def capture_payment(ctx: HandlerContext, data: c.CapturePayment) -> HandlerResult:
    rec = ctx.load(PaymentRecord, data.payment_id)
    _dispute_applied(ctx, rec.id)  # raised at capture (_new_dispute)
    own = _maybe_its_own_effect(ctx, rec, "capture")
    if not own:
        _transition_unless_let_through(ctx, rec, "capture")
    ctx.at_provider(rec)
    if data.amount is not None and data.amount > rec.amount:
        raise Rejection(
            RejectReason.VALIDATION_ERROR,
            f"capture amount {format_minor(data.amount, rec.currency)} exceeds the authorised "
            f"{format_minor(rec.amount, rec.currency)}",
        )
    if data.amount is not None and not ctx.let_through:
        _amount_in_tens(data.amount, rec.currency)
    fee = rec.application_fee_amount
    # A destination charge captured in part: Stripe collects at most the amount captured
    # as its application fee ("capped at the total amount captured"). The capped fee is
    # named on the capture, so that what the record says the platform kept is what was
    # asked for, not left to the provider's cap.
    capped = None if fee is None or data.amount is None or fee <= data.amount else data.amount
    req = gw.CapturePayment(
        provider_payment_id=rec.provider_payment_id,
        amount=data.amount,
        application_fee_amount=capped,
    )
    before = rec.status
    res = await _gateway(
        ctx, "capture_payment", lambda: ctx.gateway.capture_payment(req, idempotency_key=ctx.idem)
    )
    _apply_payment_result(ctx, rec, res)
    if capped is not None:
        rec.application_fee_amount = capped  # (what the capture named)
    return HandlerResult(
        _PAYMENT_OUTCOME[res.status],
        rec,
        _new_dispute(ctx, rec, res),
        extra=_already_recorded(ctx, before, rec, own),
    )


async def cancel_payment(ctx: HandlerContext, data: c.CancelPayment) -> HandlerResult:
    rec = ctx.load(PaymentRecord, data.payment_id)
    own = _maybe_its_own_effect(ctx, rec, "cancel")
    if not own:
        _transition_unless_let_through(ctx, rec, "cancel")
    ctx.at_provider(rec)
    req = gw.CancelPayment(provider_payment_id=rec.provider_payment_id, reason=data.reason)
    before = rec.status
    res = await _gateway(
        ctx, "cancel_payment", lambda: ctx.gateway.cancel_payment(req, idempotency_key=ctx.idem)
    )
    _apply_payment_result(ctx, rec, res)
    # What the provider says it is now (it may have been captured meanwhile), as capture.
    return HandlerResult(
        _PAYMENT_OUTCOME[res.status], rec, extra=_already_recorded(ctx, before, rec, own)
    )


# A payment's final statuses (a failed one whose client secret went to its customer is
# open at its provider still: check_payment_transition's ``open_at_provider``).
_PAYMENT_FINAL = frozenset({gw.PaymentStatus.CANCELED.value, gw.PaymentStatus.FAILED.value})
_FAILED_STATUS = gw.PaymentStatus.FAILED.value


async def refresh_payment(ctx: HandlerContext, data: c.RefreshPayment) -> HandlerResult:
    """The payment as its provider holds it now: a payment left waiting on its customer's
    3-D Secure step (or on a bank debit) moves on when read back, and a succeeded one
    may have been disputed since, or its dispute decided (a provider's webhook brings
    the refresh, or the tenant sends it). A read: asked again, the provider answers
    afresh. One canceled, or failed and not open at its provider (no client secret went
    to its customer), is final: answered `payment.canceled` / `payment.failed` from its
    record, unread, previous_status its status (as an unchanged read's: analytics count
    nothing again). (Refused `invalid_state`, the webhook's refresh queued behind the
    tenant's own payment.cancel, the echo read before its outcome was recorded, was a
    `command.rejected` of a command the tenant never sent: as refresh_payout's.)"""
    rec = ctx.load(PaymentRecord, data.payment_id)
    # one the provider opened meanwhile (_new_dispute, _another_dispute)
    _dispute_applied(ctx, rec.id)
    if rec.status in _PAYMENT_FINAL and not (
        rec.status == _FAILED_STATUS and rec.customer_action_delivered
    ):
        failed = rec.status == _FAILED_STATUS
        return HandlerResult(
            f"payment.{rec.status}",
            rec,
            extra={"previous_status": rec.status}
            | (_previous_failure(rec.failure_code, rec.provider_charge_id) if failed else {}),
        )
    _transition(rec.status, "refresh", rec.customer_action_delivered)
    disputed = _recorded_dispute(ctx, rec)
    ctx.at_provider(rec)
    previous, previous_failure, previous_charge = (
        rec.status,
        rec.failure_code,
        rec.provider_charge_id,
    )
    req = gw.RetrievePayment(provider_payment_id=rec.provider_payment_id)
    res = await _gateway(
        ctx,
        "retrieve_payment",
        lambda: ctx.gateway.retrieve_payment(req, idempotency_key=ctx.idem),
    )
    # The refunded amount is paystream's own count (each refund adds its amount when
    # answered, and a refund read back failed takes it off): the provider's total may
    # hold a refund parked with its answer lost, which its re-drive adds (review h68al:
    # counted twice when a refresh read it first).
    # Only for a payment already captured here: one read captured for the first time has
    # no refund of paystream's (refunds need it succeeded), so the provider's total is
    # refunds made elsewhere (its dashboard), counted as before (review h68am).
    refunded = rec.amount_refunded
    _apply_payment_result(ctx, rec, res)
    if previous == _SUCCEEDED_STATUS:
        rec.amount_refunded = refunded
    # The recorded dispute read back first, from its own entry (a newer one may be
    # listed before it): then the newest is judged against it as it now stands, so one
    # refresh may bring both its decision and the new dispute (review h72g).
    read_back = _dispute_read_back(disputed, res)
    return HandlerResult(
        _PAYMENT_OUTCOME[res.status],
        rec,
        _new_dispute(ctx, rec, res) + read_back + _another_dispute(ctx, rec, disputed, res),
        error=_read_back_failure(ctx, res),
        # (a second card declined through the client secret is a new failure: another
        # charge where the provider names them, else another failure code)
        extra={"previous_status": previous}
        | (_previous_failure(previous_failure, previous_charge) if previous == "failed" else {}),
    )


def _recorded_dispute(ctx: HandlerContext, rec: PaymentRecord) -> DisputeRecord | None:
    """The payment's recorded dispute (read back, it may have moved on; a decided one
    too: the card network's appeal reopens it), else None."""
    if rec.dispute_id is None:
        return None
    raw = ctx.tables.disputes.get(entity_key(ctx.cmd.tenant_id, rec.dispute_id))
    if raw is None:
        return None
    return ctx.load(DisputeRecord, rec.dispute_id)


def _another_dispute(
    ctx: HandlerContext,
    rec: PaymentRecord,
    disputed: DisputeRecord | None,
    res: gw.PaymentResult,
) -> list[EntityRecord]:
    """A dispute the provider reports on the payment other than the one recorded
    (another provider id): a chargeback the issuer files as a new dispute after an
    inquiry closed, or a second dispute after a decided one (review h72e: never
    recorded nor logged, and lost unanswered).

    After a decided dispute it is recorded as a new one, under the id the command
    derives (_new_dispute's; the payment names it from now on, and a redelivery finds
    it: _dispute_applied). While the recorded one is open (as just read back from its
    own entry: _dispute_read_back runs first) it is not (the tenant answers the one it
    has; the provider lists the newest first): logged, to be answered in the provider's
    dashboard; so is one whose ids are both taken. Only the newest is judged. (The first
    one decided stays recorded as it is, no longer read; a lost one no longer blocks a
    refund here: the refund goes to the provider, which decides, e.g. Stripe refusing a
    charged-back charge's: charge_disputed, invalid_state.)"""
    if disputed is None or res.dispute is None:
        return []
    found = res.dispute
    if found.provider_dispute_id == disputed.provider_dispute_id:
        return []
    if disputed.status not in _DECIDED:
        _unrecorded(ctx, "recorded_open")
        _throttled.warning(
            ("another dispute", ctx.cmd.tenant_id, rec.id),
            "tenant %s payment %s: %s reports dispute %s while dispute %s (%s here) is "
            "open: not recorded here; answer it in the %s dashboard",
            ctx.cmd.tenant_id, rec.id, ctx.gateway.provider, found.provider_dispute_id,
            disputed.provider_dispute_id, disputed.id, ctx.gateway.provider,
        )  # fmt: skip
        return []
    derived, of_payment = _dispute_ids(ctx, rec.id)
    table = ctx.tables.of(DisputeRecord)
    for dispute_id in (derived, of_payment):
        # (taken: the command's id reused past the window, its dispute not written over)
        if table.get(entity_key(ctx.cmd.tenant_id, dispute_id)) is None:
            return _record_dispute(ctx, rec, found, dispute_id)
    # (Both taken: the command's id reused past the window twice, on another payment and
    # on this one. Not dropped silently (review h72g).)
    _unrecorded(ctx, "ids_taken")
    _throttled.warning(
        ("another dispute", ctx.cmd.tenant_id, rec.id),
        "tenant %s payment %s: %s reports dispute %s after dispute %s (%s here) was "
        "decided: not recorded here (the dispute ids of command %s are taken); answer it "
        "in the %s dashboard",
        ctx.cmd.tenant_id, rec.id, ctx.gateway.provider, found.provider_dispute_id,
        disputed.provider_dispute_id, disputed.id, ctx.cmd.command_id, ctx.gateway.provider,
    )  # fmt: skip
    return []


def _unrecorded(ctx: HandlerContext, why: metrics.DisputeUnrecordedWhy) -> None:
    """Counted (PaystreamDisputeUnrecorded), beside the throttled log that names it."""
    metrics.DISPUTES_UNRECORDED.labels(ctx.gateway.provider, ctx.cmd.tenant_id, why).inc()


def _listed(res: gw.PaymentResult) -> tuple[gw.DisputeResult, ...]:
    """The disputes the provider lists for the payment, newest first (a gateway that
    fills ``dispute`` alone lists that one)."""
    if res.disputes:
        return res.disputes
    return () if res.dispute is None else (res.dispute,)


def _dispute_read_back(disputed: DisputeRecord | None, res: gw.PaymentResult) -> list[EntityRecord]:
    """The payment's dispute as its provider has it now, if it has moved on: forward by
    its stage, or into a new response window (review h72c).

    A deadline for evidence later than the one held is a new window: an answered
    inquiry the issuer escalated to a chargeback (warning_under_review to needs_response,
    the funds withdrawn), or a decision the card network's appeal reopened
    (appeal_needs_response). No stale read has a later deadline, so the provider's status
    is taken whatever its stage, with that deadline, and evidence is to be submitted
    again. Otherwise never back: a read may not go back on the provider's decision, nor
    on an answer paystream recorded (an older read's).

    Read from its own entry among the disputes the provider lists, a newer one listed
    before it or not (review h72g: only the newest was read, so once another was filed
    the recorded one's decision was never read). One the provider no longer lists is
    left as it is."""
    if disputed is None:
        return []
    own = next(
        (d for d in _listed(res) if d.provider_dispute_id == disputed.provider_dispute_id), None
    )
    if own is None:
        return []
    status = own.status.value
    due = own.evidence_due_by
    if due is not None and (disputed.evidence_due_by is None or due > disputed.evidence_due_by):
        disputed.status, disputed.evidence_due_by = status, due
        # (answered again in the new window: under_review is its evidence at the provider)
        disputed.evidence_submitted = status == gw.DisputeStatus.UNDER_REVIEW
        return [disputed]
    if _DISPUTE_STAGE.get(status, 0) <= _DISPUTE_STAGE.get(disputed.status, 0):
        return []
    disputed.status = status
    return [disputed]


def _previous_failure(code: str | None, charge: str | None) -> dict[str, Any]:
    return {"previous_failure_code": code} | (
        {"previous_charge_id": charge} if charge is not None else {}
    )


def _read_back_failure(ctx: HandlerContext, res: gw.PaymentResult) -> GatewayError | None:
    """A payment read back failed carries its failure as `error`, as a create's decline
    does (the analytics count declines by it)."""
    if res.status is not gw.PaymentStatus.FAILED:
        return None
    failure = res.failure_code
    code = card_failure(failure, failure)
    # A decline code names the issuer's answer; an error code alone (a failed 3-D Secure
    # step: payment_intent_authentication_failure) is none.
    decline = failure if failure not in CARD_ERROR_CODES or failure in DECLINE_CODES else None
    return GatewayError(
        code,
        res.failure_message or f"the payment failed ({failure or code.value})",
        provider=ctx.gateway.provider,
        decline_code=decline,
        http_status=402,
        provider_payment_id=res.provider_payment_id,
    )


def _transition(status: str, verb: str, open_at_provider: bool = False) -> None:
    try:
        check_payment_transition(status, verb, open_at_provider)
    except InvalidState as exc:
        raise Rejection(RejectReason.INVALID_STATE, str(exc)) from exc


def _already_recorded(
    ctx: HandlerContext, before: str, rec: PaymentRecord, own: bool = False
) -> dict[str, Any]:
    """``previous_status`` for a re-driven capture or cancel whose effect a refresh
    recorded first (the status it answers, the payment had already): counted then, the
    analytics count it no second time."""
    return {"previous_status": before} if (ctx.let_through or own) and before == rec.status else {}


# The status a capture or cancel leaves a payment in.
_OWN_STATUS = {
    "capture": gw.PaymentStatus.SUCCEEDED.value,
    "cancel": gw.PaymentStatus.CANCELED.value,
}


def _maybe_its_own_effect(ctx: HandlerContext, rec: PaymentRecord, verb: str) -> bool:
    """The payment already is what this capture or cancel makes it, and a read of the
    provider (a refresh) made it so: maybe this very command's effect, read back. A crash
    that lost a batch whole after its capture's call runs the batch's earlier refresh
    again, which finds the payment captured; nothing of ours says the capture ran. Then
    the provider decides, asked under the command's key: it answers as it did, or
    refuses what the state forbids. (Refused here, a capture that moved the money was
    answered `invalid_state`, and so was every resend; review finding.) A payment a
    capture or cancel of ours moved is refused here, as before."""
    if ctx.let_through or rec.status != _OWN_STATUS[verb] or not rec.applied:
        return False
    latest = rec.applied[next(reversed(rec.applied))]
    data = latest.get("data")
    # (A refresh's outcome says what it found the payment in before; it changed it.
    # Only a payment's own: a refund read back names the refund's previous status.)
    return (
        isinstance(data, dict)
        and data.get("entity_type") == "payment"
        and data.get("entity_id") == rec.id
        and data.get("previous_status") not in (None, rec.status)
    )


def _transition_unless_let_through(ctx: HandlerContext, rec: PaymentRecord, verb: str) -> None:
    """The state rule, for a command that has not run before. One let through (parked
    after its call, its answer lost) may have moved the payment itself: a refresh read
    since then shows its own capture or cancel. The provider, asked again under the same
    key, answers as it did, or refuses what the state forbids (a capture of a payment
    canceled meanwhile), so the rule is its to apply."""
    if not ctx.let_through:
        _transition(rec.status, verb, rec.customer_action_delivered)


# ---- refunds ----------------------------------------------------------------------


async def create_refund(ctx: HandlerContext, data: c.CreateRefund) -> HandlerResult:
    payment = ctx.load(PaymentRecord, data.payment_id)
    rid = data.refund_id or ctx.new_id(RefundRecord, "re")
    ctx.ensure_new(RefundRecord, rid)
    ctx.at_provider(payment)
    transfer_options = data.reverse_transfer is not None or data.refund_application_fee is not None
    if transfer_options and payment.connected_account_id is None:
        # (Stripe refuses both for a charge without a transfer; said here in the command's
        # words, before any call: the payment's destination never changes.)
        raise Rejection(
            RejectReason.VALIDATION_ERROR,
            f"reverse_transfer and refund_application_fee are for a destination charge: "
            f"payment {payment.id} names no connected_account_id",
        )
    refundable = payment.amount_captured - payment.amount_refunded
    if not ctx.let_through:
        _refunds_allowed(ctx, payment, refundable, data.amount)
        if data.amount is not None:
            _amount_in_tens(data.amount, payment.currency)
    # Let through before, the provider may have refunded under this key: refunds or a
    # dispute since must not turn that into a rejection (the provider answers with what
    # it did, or refuses what the payment's state or balance forbids: a lost dispute, an
    # amount beyond what is left; review finding: refused for a dispute lost after the
    # provider had refunded). Without an amount, the provider refunds what is left there
    # and the refund is what it answers: the same request however the table's refundable
    # amount has moved since (a refund read back failed raises it: sent as the table had
    # it, a re-drive asked for more under the key and was refused, review finding).
    req = gw.CreateRefund(
        provider_payment_id=payment.provider_payment_id,
        amount=data.amount,
        reason=data.reason,
        metadata=(
            gw.refund_ref(data.metadata, ctx.cmd.tenant_id, rid)
            if _WEBHOOKS in ctx.gateway.capabilities
            else data.metadata
        ),
        reverse_transfer=data.reverse_transfer,
        refund_application_fee=data.refund_application_fee,
    )
    rec = RefundRecord(
        **_base(ctx, rid),
        payment_id=payment.id,
        status=gw.RefundStatus.FAILED.value,
        # (Until the provider answers; a let-through one skips the rules, and the
        # table's refundable amount can be below zero while a refund the provider
        # failed is not read back.)
        amount=data.amount if data.amount is not None else max(refundable, 0),
        currency=payment.currency,
        provider_refund_id="",
        reason=data.reason,
        reverse_transfer=data.reverse_transfer,
        refund_application_fee=data.refund_application_fee,
    )
    try:
        key = ctx.create_key("refund", data.refund_id)
        res = await _refund_at_provider(ctx, req, key, refundable, data.metadata, rid)
    except GatewayError as exc:
        if _chosen_id_taken(ctx, exc, data.refund_id):
            # The id's key holds an earlier refund of other parameters that made no
            # refund here: one the provider refused, or one that refunded with its answer
            # lost and parked (only the provider knows which). The id is taken there: a
            # bare conflict on a key the tenant never sent reads as "nothing happened",
            # and the refund sent again under a new id refunds twice.
            raise Rejection(
                RejectReason.INVALID_STATE,
                f"refund id {rid} is taken at the provider by an earlier refund of other "
                "parameters: one refused, or one still parked (`paystream dlq list`), which "
                "may have refunded; check before refunding under a new id",
            ) from exc
        if exc.retryable or not _is_card_error(exc):
            raise
        rec.failure_code = exc.decline_code or exc.code.value
        return HandlerResult("refund.failed", rec, error=exc)
    # The answer's fields from its ``__dict__``, its status's value as ``_value_`` (what
    # ``.value`` returns): see create_payment.
    r = res.__dict__
    status = r["status"]
    rec.provider_refund_id = r["provider_refund_id"]
    rec.status = status._value_
    rec.failure_code = r["failure_code"]
    rec.amount = r["amount"].amount  # (what was asked for, or what was left there)
    if status is _REFUND_FAILED:
        return HandlerResult("refund.failed", rec)
    payment.amount_refunded += rec.amount
    return HandlerResult(f"refund.{status.value}", rec, [payment])


async def _refund_at_provider(
    ctx: HandlerContext,
    req: gw.CreateRefund,
    key: str,
    refundable: int,
    sent_metadata: Mapping[str, str],
    rid: str,
) -> gw.RefundResult:
    """The refund, at the provider. One let through (parked, or in flight at a crash) may
    have been first sent otherwise than this version sends it: by an older version (the
    amount the table had left named in a refund without one; no webhook reference,
    gw.refund_ref), or with the reference by a tenant whose capabilities have lost
    `webhooks` since: each other way is tried (_sent_either_way), what is left now being
    what was left then unless a refund failed since."""
    # The last release's way first: the table's amount named. With nothing left by the
    # table there is no amount to name; the provider holds another request under the
    # key, and may have refunded by it: parked again as such, never refused.
    sent_before: list[dict[str, Any]] = [{}]
    if req.amount is None and refundable > 0:
        sent_before.insert(0, {"amount": refundable})
    return await _sent_either_way(
        ctx,
        "create_refund",
        lambda r: ctx.gateway.create_refund(r, idempotency_key=key),
        req,
        gw.refund_ref(sent_metadata, ctx.cmd.tenant_id, rid),
        sent_metadata,
        sent_before=sent_before,
    )


async def refresh_refund(ctx: HandlerContext, data: c.RefreshRefund) -> HandlerResult:
    """The refund as its provider holds it now: a pending one settles there, and one that
    succeeded can fail later (the card closed meanwhile: Stripe's ``refund.failed``).
    Failed, its amount is taken off the payment's refunded amount (refundable again, as
    the provider has it). A read: asked again, the provider answers afresh. One failed
    is final at every provider (and one refused when made has no refund there): answered
    `refund.failed` from its record, unread, its previous_status failed (as an unchanged
    read's), so that its amount is taken off once and analytics count it failed once.
    (Refused `invalid_state`, the second and third of Stripe's refund.failed,
    refund.updated and charge.refund.updated for one failure, queued while the refund was
    pending here, were a `command.rejected` of a command the tenant never sent: as
    refresh_payout's.)"""
    rec = ctx.load(RefundRecord, data.refund_id)
    if rec.status == _REFUND_FAILED.value:
        return HandlerResult("refund.failed", rec, extra={"previous_status": rec.status})
    ctx.at_provider(rec)
    # A refund pending for long (a bank transfer's) may outlive its payment, removed by
    # retention once unchanged that long: the refund's status is still the provider's.
    payment = ctx.load_kept(PaymentRecord, rec.payment_id)
    previous = rec.status
    req = gw.RetrieveRefund(provider_refund_id=rec.provider_refund_id)
    res = await _gateway(
        ctx, "retrieve_refund", lambda: ctx.gateway.retrieve_refund(req, idempotency_key=ctx.idem)
    )
    rec.status = res.status.value
    rec.failure_code = res.failure_code
    related: list[EntityRecord] = []
    if res.status is _REFUND_FAILED and payment is not None and _refund_of(payment, res):
        payment.amount_refunded = max(0, payment.amount_refunded - rec.amount)
        related.append(payment)
    return HandlerResult(
        f"refund.{res.status.value}", rec, related, extra={"previous_status": previous}
    )


def _refund_of(payment: PaymentRecord, res: gw.RefundResult) -> bool:
    """Is ``payment`` the one the provider's refund was of? Not when its id, chosen by the
    producer, names a new payment since the old one left the tables (its provider payment
    differs; a provider that does not say is taken at its word)."""
    return res.provider_payment_id in ("", payment.provider_payment_id)


def _refunds_allowed(
    ctx: HandlerContext, payment: PaymentRecord, refundable: int, amount: int | None
) -> None:
    """paystream's own refund rules, before the provider is asked."""
    _transition(payment.status, "refund")
    _refund_allowed_by_dispute(ctx, payment)
    if refundable <= 0:
        raise Rejection(
            RejectReason.INVALID_STATE, f"payment {payment.id} has nothing left to refund"
        )
    wanted = refundable if amount is None else amount
    if wanted <= 0 or wanted > refundable:
        raise Rejection(
            RejectReason.INVALID_STATE,
            f"refund of {format_minor(wanted, payment.currency)} exceeds the refundable "
            f"{format_minor(refundable, payment.currency)}",
        )
    transferred = payment.amount_transferred or 0
    if transferred > 0 and wanted > refundable - transferred:
        # Stripe refunds the charge and reverses none of the transfers its funds paid
        # (separate charges and transfers): the platform would pay back what an account
        # keeps. Not remembered: refundable once transfer.reverse brings them back.
        raise Rejection(
            RejectReason.INVALID_STATE,
            f"refund of {format_minor(wanted, payment.currency)} would pay back funds "
            f"transfers from payment {payment.id} moved to connected accounts "
            f"({format_minor(transferred, payment.currency)}), which a refund does not "
            "reverse: reverse them first (transfer.reverse); refundable now "
            f"{format_minor(max(refundable - transferred, 0), payment.currency)}",
            remember=False,
        )


def _refund_allowed_by_dispute(ctx: HandlerContext, payment: PaymentRecord) -> None:
    """No refund after a lost dispute: the money already went back to the cardholder.

    Only "lost" is decided here: recorded by paystream's own accept, or read back from
    the provider (a refresh, brought by its dispute webhook). One the card network's
    appeal reopened is read back open again (_dispute_read_back), and open it blocks
    nothing here: the provider decides, as for any open dispute. While a dispute is open
    the provider refuses the refund (an `invalid_state` answer); a dispute on record may
    lag the provider's (its webhook late, or no endpoint configured: the simulator sends
    none), so an open dispute on record must not block a refund the provider would allow.
    Only the dispute the payment names: after a second one is recorded (_another_dispute)
    a first one lost no longer blocks here, and the refund goes to the provider, which
    decides (Stripe: charge_disputed, invalid_state; docs/stripe.md).
    """
    if payment.dispute_id is None:
        return
    raw = ctx.tables.disputes.get(entity_key(ctx.cmd.tenant_id, payment.dispute_id))
    if raw is not None and raw.get("status") == gw.DisputeStatus.LOST:
        raise Rejection(
            RejectReason.INVALID_STATE,
            f"payment {payment.id} was charged back (dispute lost): nothing to refund",
        )


# ---- disputes ---------------------------------------------------------------------


def _dispute_open_unless_let_through(ctx: HandlerContext, rec: DisputeRecord) -> None:
    """The dispute must be open, for a command that has not run before; one let through
    may have acted before it was closed (evidence stored, then the dispute accepted), so
    the provider, asked again under the key, decides: it answers as it did, or refuses
    what a closed dispute forbids (review finding: such evidence was answered
    invalid_state)."""
    if not ctx.let_through and _DISPUTE_STAGE.get(rec.status) != _OPEN:
        raise Rejection(RejectReason.INVALID_STATE, f"dispute {rec.id} is {rec.status}")


def _take_dispute_status(ctx: HandlerContext, rec: DisputeRecord, status: str) -> None:
    """The provider's answer's status. A let-through command's answer may be its stored
    one, as of its first attempt, with the dispute moved on since (accepted, answered):
    taken only if it does not move the dispute back (review finding)."""
    if not ctx.let_through or _DISPUTE_STAGE.get(status, 0) >= _DISPUTE_STAGE.get(rec.status, 0):
        rec.status = status


async def submit_dispute_evidence(
    ctx: HandlerContext, data: c.SubmitDisputeEvidence
) -> HandlerResult:
    rec = ctx.load(DisputeRecord, data.dispute_id)
    _dispute_open_unless_let_through(ctx, rec)
    ctx.at_provider(rec)
    req = gw.SubmitDisputeEvidence(
        provider_dispute_id=rec.provider_dispute_id, evidence=data.evidence, submit=data.submit
    )
    res = await _gateway(
        ctx,
        "submit_dispute_evidence",
        lambda: ctx.gateway.submit_dispute_evidence(req, idempotency_key=ctx.idem),
    )
    _take_dispute_status(ctx, rec, res.status.value)
    # (Let through, evidence submitted once stays so: a replayed draft's answer is older.)
    rec.evidence_submitted = data.submit or (ctx.let_through and rec.evidence_submitted)
    return HandlerResult("dispute.evidence_submitted", rec)


async def accept_dispute(ctx: HandlerContext, data: c.AcceptDispute) -> HandlerResult:
    rec = ctx.load(DisputeRecord, data.dispute_id)
    _dispute_open_unless_let_through(ctx, rec)
    ctx.at_provider(rec)
    req = gw.AcceptDispute(provider_dispute_id=rec.provider_dispute_id)
    previous = rec.status
    res = await _gateway(
        ctx, "accept_dispute", lambda: ctx.gateway.accept_dispute(req, idempotency_key=ctx.idem)
    )
    _take_dispute_status(ctx, rec, res.status.value)
    # (Lost already: a re-drive after a refresh recorded the loss; the analytics count a
    # dispute lost once, by this.)
    return HandlerResult("dispute.closed", rec, extra={"previous_status": previous})


# ---- subscriptions ----------------------------------------------------------------

_SUBSCRIPTIONS = gw.Capability.SUBSCRIPTIONS


_INCOMPLETE = gw.SubscriptionStatus.INCOMPLETE
_SUB_CANCELED = gw.SubscriptionStatus.CANCELED
_SUB_TRIALING = gw.SubscriptionStatus.TRIALING
_SUB_PAUSED = gw.SubscriptionStatus.PAUSED
_INVOICE_OPEN = gw.InvoiceStatus.OPEN


def _subscriptions_supported(ctx: HandlerContext) -> None:
    """A create's (or an update's) `unsupported` before anything is asked of the
    provider: a tenant whose
    gateway lacks subscriptions (Paddle; or a tenant whose capabilities leave
    them out). Not remembered: the tenant's setup, not the command (as _gateway's).
    A cancel or a refresh of a subscription already made needs only its provider's
    capability, which the gateway checks (gw.UNNARROWED_OPERATIONS): narrowing a
    tenant's capabilities stops new subscriptions, never the stopping or reading back of
    one that bills (review h73u)."""
    _capability_required(ctx, _SUBSCRIPTIONS, "subscriptions")


def _invoice_id(ctx: HandlerContext, subscription_id: str, provider_invoice_id: str) -> str:
    """paystream's id of a provider's invoice: derived from the tenant, the subscription
    and the provider's id, so that every read of it (and a replay) names the same one."""
    return derived_invoice_id(ctx.cmd.tenant_id, subscription_id, provider_invoice_id)


def _invoices(
    ctx: HandlerContext, sub: SubscriptionRecord, res: gw.SubscriptionResult
) -> list[EntityRecord]:
    """The provider's invoices new here or moved on (paid after open, voided), oldest
    first; ``sub.latest_invoice_id`` names the newest. One this very command recorded
    (a crash kept that write of it, not the subscription's) answers it again
    (AlreadyApplied), its provider call having been a replay or a read."""
    changed: list[EntityRecord] = []
    table = ctx.tables.of(InvoiceRecord)
    for found in reversed(res.invoices):
        invoice_id = _invoice_id(ctx, sub.id, found.provider_invoice_id)
        raw = table.get(entity_key(ctx.cmd.tenant_id, invoice_id))
        status = found.status.value
        if raw is None:
            taxed = found.tax is not None
            rec = InvoiceRecord(
                **_base(ctx, invoice_id),
                subscription_id=sub.id,
                customer_id=sub.customer_id,
                status=status,
                amount=found.amount.amount,
                currency=found.amount.currency,
                period_start=found.period_start,
                period_end=found.period_end,
                provider_invoice_id=found.provider_invoice_id,
                provider_payment_id=found.provider_payment_id,
                failure_code=found.failure_code,
                failure_message=found.failure_message,
                subtotal=found.subtotal if taxed else None,
                tax=found.tax,
                # (the provider's total: ``amount`` is what was paid or is due, less
                # than it where a credit balance paid a part; one reported without a
                # total, an invoice the simulator stored before it kept one: amount)
                total=(found.amount.amount if found.total is None else found.total)
                if taxed
                else None,
                proration_lines=[line.model_dump(mode="json") for line in found.proration_lines]
                or None,
            )
            changed.append(rec)
        else:
            rec = InvoiceRecord.model_validate(raw)
            ctx._applied_here(rec)
            if rec.status != status and invoice_moves(rec.status, status):
                rec.status = status
                rec.provider_payment_id = found.provider_payment_id or rec.provider_payment_id
                rec.failure_code, rec.failure_message = found.failure_code, found.failure_message
                changed.append(rec)
        if sub.latest_invoice_id is None or found is res.invoices[0]:
            sub.latest_invoice_id = invoice_id
    return changed


def _take_subscription(
    ctx: HandlerContext, sub: SubscriptionRecord, res: gw.SubscriptionResult
) -> None:
    """The provider's answer, unless it would move the subscription where it cannot go
    (a stale answer: canceled here, active there), which is refused (not remembered: a
    read asked again answers afresh)."""
    status = res.status.value
    try:
        check_subscription_move(sub.status, status)
    except InvalidState as exc:
        raise Rejection(
            RejectReason.INVALID_STATE,
            f"subscription {sub.id}: {exc} ({ctx.gateway.provider}'s answer)",
            remember=False,
        ) from exc
    sub.status = status
    if res.current_period_start != sub.current_period_start:
        sub.pending_proration_net = None  # (the renewal billed the lines pending)
    if res.pending_prorations:
        sub.pending_proration_net = sum(p.amount for p in res.pending_prorations)
    sub.current_period_start = res.current_period_start
    sub.current_period_end = res.current_period_end
    sub.trial_end = res.trial_end
    sub.cancel_at_period_end = res.cancel_at_period_end
    sub.canceled_at = res.canceled_at
    sub.pause_resumes_at = res.pause_resumes_at if res.status is _SUB_PAUSED else None


def _first_invoice_failure(ctx: HandlerContext, res: gw.SubscriptionResult) -> GatewayError:
    """An incomplete subscription's decline, in the shape a payment.failed carries it."""
    failure = res.invoices[0].failure_code if res.invoices else None
    message = res.invoices[0].failure_message if res.invoices else None
    payment = res.invoices[0].provider_payment_id if res.invoices else None
    code = card_failure(failure, failure)
    decline = failure if failure not in CARD_ERROR_CODES or failure in DECLINE_CODES else None
    return GatewayError(
        code,
        message or f"the subscription's first invoice was declined ({failure or code.value})",
        provider=ctx.gateway.provider,
        decline_code=decline,
        http_status=402,
        provider_payment_id=payment,
    )


async def create_subscription(ctx: HandlerContext, data: c.CreateSubscription) -> HandlerResult:
    sid = data.subscription_id or ctx.new_id(SubscriptionRecord, "sub")
    ctx.ensure_new(SubscriptionRecord, sid)
    _subscriptions_supported(ctx)
    # Let through before, the provider may have charged under this key: a customer
    # deleted or a card detached since must not turn that into a rejection (as for
    # payment.create): the provider answers with what it did.
    customer = (
        ctx.load(CustomerRecord, data.customer_id)
        if ctx.let_through
        else _live_customer(ctx, data.customer_id)
    )
    ctx.at_provider(customer)
    pm = _first_period_method(ctx, data, customer)
    tax_rates = _applied_rates(ctx, data.tax_rate_ids or ())
    req = gw.CreateSubscription(
        provider_customer_id=customer.provider_customer_id,
        provider_payment_method_id=(pm.provider_payment_method_id if pm is not None else _CHECKOUT),
        amount=Money(amount=data.amount, currency=data.currency),
        interval=data.interval.value,
        interval_count=data.interval_count,
        trial_days=data.trial_days,
        description=data.description,
        # Named at a provider that sends webhooks (its invoices' and its own events find
        # it by this reference), as payments are.
        metadata=(
            gw.subscription_ref(data.metadata, ctx.cmd.tenant_id, sid)
            if _WEBHOOKS in ctx.gateway.capabilities
            else dict(data.metadata)
        ),
        tax_rates=tuple(
            gw.TaxRateRef(
                provider_tax_rate_id=r.provider_tax_rate_id,
                percentage=r.percentage,
                inclusive=r.inclusive,
            )
            for r in tax_rates
        ),
    )
    key = ctx.create_key("subscription", data.subscription_id)
    try:
        res = await _gateway(
            ctx,
            "create_subscription",
            lambda: ctx.gateway.create_subscription(req, idempotency_key=key),
        )
    except GatewayError as exc:
        if _chosen_id_taken(ctx, exc, data.subscription_id):
            raise Rejection(
                RejectReason.INVALID_STATE,
                f"subscription id {sid} is taken at the provider by an earlier create of "
                "other parameters: one refused, or one still parked (`paystream dlq list`), "
                "which may have charged; check before subscribing under a new id",
            ) from exc
        raise
    sub = SubscriptionRecord(
        **_base(ctx, sid),
        customer_id=customer.id,
        payment_method_id=pm.id if pm is not None else None,
        status=res.status.value,
        amount=data.amount,
        currency=data.currency,
        interval=data.interval.value,
        interval_count=data.interval_count,
        provider_subscription_id=res.provider_subscription_id,
        current_period_start=res.current_period_start,
        current_period_end=res.current_period_end,
        trial_end=res.trial_end,
        cancel_at_period_end=res.cancel_at_period_end,
        canceled_at=res.canceled_at,
        description=data.description,
        metadata=dict(data.metadata),
        tax_rate_ids=[r.id for r in tax_rates] or None,
    )
    invoices = _invoices(ctx, sub, res)
    if res.status is _SUB_REQUIRES_ACTION:
        # (its customer pays the first period at the provider's checkout: read back by
        # subscription.refresh, or its webhook, once paid)
        return HandlerResult(
            "subscription.requires_action", sub, invoices, extra={"next_action": res.next_action}
        )
    if res.status is _INCOMPLETE:
        # Recorded, `incomplete` (the provider keeps it so: Stripe's, until it expires),
        # never active: its id is taken, and it may be canceled or read back.
        return HandlerResult(
            "subscription.failed", sub, invoices, error=_first_invoice_failure(ctx, res)
        )
    return HandlerResult("subscription.created", sub, invoices)


_CHECKOUT = "checkout"
_SUB_REQUIRES_ACTION = gw.SubscriptionStatus.REQUIRES_ACTION


def _first_period_method(
    ctx: HandlerContext, data: c.CreateSubscription, customer: CustomerRecord
) -> PaymentMethodRecord | None:
    """The saved payment method a create bills, or None for a checkout-started one (its
    customer pays at the provider's checkout: a gateway that starts subscriptions so,
    Paddle's, only; any other is refused before a call)."""
    if data.payment_method_id is None:
        if ctx.gateway.provider != "paddle":
            raise Rejection(
                RejectReason.UNSUPPORTED,
                f'payment_method_token "{_CHECKOUT}" starts a subscription at Paddle '
                f"Checkout: tenant {ctx.cmd.tenant_id}'s gateway "
                f"({ctx.gateway.provider}) bills a saved payment_method_id",
                remember=False,
            )
        return None
    pm = ctx.load(PaymentMethodRecord, data.payment_method_id)
    if not pm.attached and not ctx.let_through:
        raise Rejection(RejectReason.INVALID_STATE, f"payment method {pm.id} is detached")
    if pm.customer_id != customer.id:
        raise Rejection(
            RejectReason.INVALID_STATE, f"payment method {pm.id} belongs to another customer"
        )
    ctx.at_provider(pm)
    return pm


async def cancel_subscription(ctx: HandlerContext, data: c.CancelSubscription) -> HandlerResult:
    sub = ctx.load(SubscriptionRecord, data.subscription_id)
    if not ctx.let_through:
        if sub.status == _SUB_PAUSED.value and ctx.gateway.provider in PAUSED_NOT_CANCELED_AT:
            # (at once or at period end: one refusal, saying what to do; the state
            # machine's invalid_state and the gateway's "send at_period_end true"
            # contradicted each other: review h82re L2)
            raise Rejection(RejectReason.UNSUPPORTED, PAUSED_NOT_CANCELED, remember=False)
        verb = "cancel_at_period_end" if data.at_period_end else "cancel"
        try:
            check_subscription_transition(sub.status, verb)
        except InvalidState as exc:
            raise Rejection(RejectReason.INVALID_STATE, str(exc)) from exc
        if data.at_period_end and sub.cancel_at_period_end:
            raise Rejection(
                RejectReason.INVALID_STATE,
                f"subscription {sub.id} is already to be canceled at its period's end",
            )
    ctx.at_provider(sub)
    previous = sub.status
    if _changed_since_first_attempt(ctx, sub):
        return await _cancel_read_back(ctx, sub, data, previous)
    req = gw.CancelSubscription(
        provider_subscription_id=sub.provider_subscription_id, at_period_end=data.at_period_end
    )
    res = await _gateway(
        ctx,
        "cancel_subscription",
        lambda: ctx.gateway.cancel_subscription(req, idempotency_key=ctx.idem),
    )
    _take_subscription(ctx, sub, res)
    invoices = _invoices(ctx, sub, res)
    return _subscription_outcome(res, sub, invoices, None, previous)


async def _cancel_read_back(
    ctx: HandlerContext, sub: SubscriptionRecord, data: c.CancelSubscription, previous: str
) -> HandlerResult:
    """A cancel re-driven after another command changed the subscription (review h78f
    F5, as an update's: h77i): asked again, a keyed provider answers as of its first try
    (a resume since written over), a keyless one (Square) cancels again (the resume
    undone). Read back and recorded as the provider holds it; not in effect, refused."""
    now = await _gateway(
        ctx,
        "retrieve_subscription",
        lambda: ctx.gateway.retrieve_subscription(
            gw.RetrieveSubscription(provider_subscription_id=sub.provider_subscription_id),
            idempotency_key=ctx.idem,
        ),
    )
    _take_subscription(ctx, sub, now)
    invoices = _invoices(ctx, sub, now)
    if now.status is _SUB_CANCELED or (data.at_period_end and now.cancel_at_period_end):
        return _subscription_outcome(now, sub, invoices, None, previous)
    return HandlerResult(
        "subscription.updated",
        sub,
        invoices,
        rejected=Rejection(
            RejectReason.INVALID_STATE,
            f"subscription {sub.id} changed since this cancel was first tried, and the "
            "cancel is not in effect: send it again with a new command id to apply it",
        ),
    )


async def refresh_subscription(ctx: HandlerContext, data: c.RefreshSubscription) -> HandlerResult:
    """The subscription as its provider holds it now, with the invoices it made since
    (renewals paid, or declined: past_due), a cancel at period end taken effect. A read:
    asked again, the provider answers afresh, and bills no period twice. One canceled is
    final: answered `subscription.updated` from its record, unread, previous_status
    canceled (as an unchanged read's: no second `subscription.canceled`, no churn counted
    again). (Refused `invalid_state`, the webhook's refresh queued behind the tenant's
    own subscription.cancel, the echo read before its outcome was recorded, was a
    `command.rejected` of a command the tenant never sent: as refresh_payout's.)"""
    sub = ctx.load(SubscriptionRecord, data.subscription_id)
    if sub.status == _SUB_CANCELED.value:
        return HandlerResult("subscription.updated", sub, extra={"previous_status": sub.status})
    try:
        check_subscription_transition(sub.status, "refresh")
    except InvalidState as exc:
        raise Rejection(RejectReason.INVALID_STATE, str(exc)) from exc
    ctx.at_provider(sub)
    previous = sub.status
    req = gw.RetrieveSubscription(provider_subscription_id=sub.provider_subscription_id)
    res = await _gateway(
        ctx,
        "retrieve_subscription",
        lambda: ctx.gateway.retrieve_subscription(req, idempotency_key=ctx.idem),
    )
    _take_subscription(ctx, sub, res)
    # The price and card it bills too: either may have been changed outside paystream
    # (the provider's dashboard), and an update compares with the record (review h77i).
    sub.amount = res.amount.amount
    sub.payment_method_id = _billed_method(ctx, sub, res)
    invoices = _invoices(ctx, sub, res)
    return _subscription_outcome(res, sub, invoices, _fell_past_due(ctx, res, previous), previous)


# How far ahead a pause's resumes_at may be (Square's pauses are counted in billing
# cycles; a year keeps a pause from becoming a cancel that bills again years on).
PAUSE_MAX = timedelta(days=366)


async def provider_now(ctx: HandlerContext) -> datetime:
    """The time by the tenant's provider's clock, which judges a time a request names (a
    pause's resumes_at): the simulator's own (moved ahead by `paystream simulator
    advance`, as a Stripe test clock), read from it; a real provider's is the wall
    clock, the worker's. (The handler and the simulator judged by two clocks: after an
    advance, a resumes_at the handler let through was refused as past: review h82re L3.)"""
    clock = getattr(ctx.gateway, "clock_now", None)
    if clock is None:
        return datetime.now(UTC)
    return datetime.fromtimestamp(await clock(), UTC)


def _pause_resumes_at(data: c.PauseSubscription, now: datetime) -> int | None:
    """The pause's ``resumes_at`` in UTC, refused unless ahead and at most PAUSE_MAX
    ahead of ``now``, the provider's clock (checked here, not in the model: a parked
    pause re-driven later is no worse a request)."""
    at = data.resumes_at
    if at is None:
        return None
    if not now < at <= now + PAUSE_MAX:
        raise Rejection(
            RejectReason.VALIDATION_ERROR,
            f"resumes_at must be ahead, at most {PAUSE_MAX.days} days, of the provider's "
            f"clock (now {now.isoformat()}): {at.isoformat()}",
        )
    return int(at.timestamp())


async def pause_subscription(ctx: HandlerContext, data: c.PauseSubscription) -> HandlerResult:
    """Pause an active subscription's billing now (each gateway's pause_subscription):
    `subscription.paused`, nothing billed until `subscription.resume` or its
    ``resumes_at``. Charges nothing. Re-driven after another command changed the
    subscription (a resume since), read back, never paused again (as a cancel's).
    Re-driven once its ``resumes_at`` has passed (its answer lost, parked), read back
    and never sent again: see _pause_over."""
    sub = ctx.load(SubscriptionRecord, data.subscription_id)
    resumes_at = None if data.resumes_at is None else int(data.resumes_at.timestamp())
    now = None if resumes_at is None else await provider_now(ctx)
    if not ctx.let_through:
        _transition_or_reject(sub, "pause", "only an active subscription is paused")
        if sub.cancel_at_period_end:
            # (Paddle keeps one scheduled change: its pause, with a resume_at, would take
            # the cancel's place and the resume charge a period the customer canceled;
            # Stripe and the simulator cancel it while paused. Refused alike: review
            # h82re M1.)
            raise Rejection(
                RejectReason.INVALID_STATE,
                f"subscription {sub.id} is to cancel at period end: a pause would not "
                "keep that cancel everywhere; undo it first (subscription.update "
                "cancel_at_period_end false), or cancel now",
            )
        if now is not None:
            resumes_at = _pause_resumes_at(data, now)
    ctx.at_provider(sub)
    previous = sub.status
    if resumes_at is not None and now is not None and resumes_at <= now.timestamp():
        return await _pause_over(ctx, sub, previous)
    if _changed_since_first_attempt(ctx, sub):
        return await _paused_or_resumed_read_back(ctx, sub, previous, _SUB_PAUSED, "pause")
    req = gw.PauseSubscription(
        provider_subscription_id=sub.provider_subscription_id, resumes_at=resumes_at
    )
    res = await _gateway(
        ctx,
        "pause_subscription",
        lambda: ctx.gateway.pause_subscription(req, idempotency_key=ctx.idem),
    )
    return _paused_or_resumed(ctx, sub, res, previous, _SUB_PAUSED)


async def _pause_over(ctx: HandlerContext, sub: SubscriptionRecord, previous: str) -> HandlerResult:
    """A pause let through (its answer lost, parked) re-driven once its resumes_at has
    passed by the provider's clock: applied then or not, its pause is over now. Sent
    again it would be refused as past (Stripe, its key's 24 h gone: review h82re L6) or
    answered as of its first try (paused, which it is no longer). Read back instead and
    answered as the subscription is: `subscription.paused` if still paused (its provider
    not yet resumed it), else as a refresh's (`subscription.updated`, active), never
    refused: nothing is left to do, and nothing to send again."""
    read = await _gateway(
        ctx,
        "retrieve_subscription",
        lambda: ctx.gateway.retrieve_subscription(
            gw.RetrieveSubscription(provider_subscription_id=sub.provider_subscription_id),
            idempotency_key=ctx.idem,
        ),
    )
    return _paused_or_resumed(ctx, sub, read, previous, _SUB_PAUSED)


async def resume_subscription(ctx: HandlerContext, data: c.ResumeSubscription) -> HandlerResult:
    """Resume a paused subscription's billing now: `subscription.resumed`, ``active``
    (its period as its provider restarts it: the gateways' resume_subscription).
    Re-driven after another command changed the subscription, read back (as a
    pause's)."""
    sub = ctx.load(SubscriptionRecord, data.subscription_id)
    if not ctx.let_through:
        _transition_or_reject(sub, "resume", "only a paused subscription is resumed")
    ctx.at_provider(sub)
    previous = sub.status
    if _changed_since_first_attempt(ctx, sub):
        return await _paused_or_resumed_read_back(ctx, sub, previous, _SUB_ACTIVE, "resume")
    req = gw.ResumeSubscription(provider_subscription_id=sub.provider_subscription_id)
    res = await _gateway(
        ctx,
        "resume_subscription",
        lambda: ctx.gateway.resume_subscription(req, idempotency_key=ctx.idem),
    )
    return _paused_or_resumed(ctx, sub, res, previous, _SUB_ACTIVE)


_SUB_ACTIVE = gw.SubscriptionStatus.ACTIVE
_PAUSE_OUTCOME = {_SUB_PAUSED: "subscription.paused", _SUB_ACTIVE: "subscription.resumed"}
# What a resume leaves a subscription besides active: past_due (a renewal from before the
# pause still open), trialing (a trial paused in Stripe's dashboard; review h82x).
_RESUMED_AS = (gw.SubscriptionStatus.PAST_DUE, _SUB_TRIALING)


def _transition_or_reject(sub: SubscriptionRecord, verb: str, only: str) -> None:
    try:
        check_subscription_transition(sub.status, verb)
    except InvalidState as exc:
        raise Rejection(RejectReason.INVALID_STATE, f"{exc}: {only}") from exc


def _paused_or_resumed(
    ctx: HandlerContext,
    sub: SubscriptionRecord,
    res: gw.SubscriptionResult,
    previous: str,
    wanted: gw.SubscriptionStatus,
) -> HandlerResult:
    """A pause's or a resume's answer recorded: `subscription.paused` / `.resumed` when
    the provider holds it so (a resume that finds a renewal from before still open:
    past_due, resumed all the same; a trial paused in Stripe's dashboard: trialing
    again), else as a refresh's (canceled meanwhile)."""
    _take_subscription(ctx, sub, res)
    invoices = _invoices(ctx, sub, res)
    resumed = wanted is _SUB_ACTIVE and res.status in _RESUMED_AS
    if res.status is wanted or resumed:
        return HandlerResult(
            _PAUSE_OUTCOME[wanted], sub, invoices, extra={"previous_status": previous}
        )
    return _subscription_outcome(res, sub, invoices, None, previous)


async def _paused_or_resumed_read_back(
    ctx: HandlerContext,
    sub: SubscriptionRecord,
    previous: str,
    wanted: gw.SubscriptionStatus,
    verb: str,
) -> HandlerResult:
    """A pause or a resume re-driven after another command changed the subscription (a
    resume after this pause, say): asked again, a keyed provider answers as of its first
    try, and the newer change would be undone here. Read back and recorded as the
    provider holds it; the outcome only if that is what this command asked for, else
    refused (send it again under a new id to apply it)."""
    read = await _gateway(
        ctx,
        "retrieve_subscription",
        lambda: ctx.gateway.retrieve_subscription(
            gw.RetrieveSubscription(provider_subscription_id=sub.provider_subscription_id),
            idempotency_key=ctx.idem,
        ),
    )
    # (A resume in effect is any status _paused_or_resumed takes as resumed: past_due
    # too, a renewal from before the pause still open; review h82rr M1.)
    if read.status is wanted or (wanted is _SUB_ACTIVE and read.status in _RESUMED_AS):
        return _paused_or_resumed(ctx, sub, read, previous, wanted)
    _take_subscription(ctx, sub, read)
    invoices = _invoices(ctx, sub, read)
    return HandlerResult(
        "subscription.updated",
        sub,
        invoices,
        rejected=Rejection(
            RejectReason.INVALID_STATE,
            f"subscription {sub.id} changed since this {verb} was first tried, and the "
            f"{verb} is not in effect: send it again with a new command id to apply it",
        ),
    )


def _fell_past_due(
    ctx: HandlerContext, res: gw.SubscriptionResult, previous: str
) -> GatewayError | None:
    """The decline of a renewal the provider's answer shows newly past due, if any."""
    if res.status is not gw.SubscriptionStatus.PAST_DUE or previous == res.status.value:
        return None
    newest_open = next((i for i in res.invoices if i.status is _INVOICE_OPEN), None)
    if newest_open is None:
        return None
    return _first_invoice_failure(ctx, res.model_copy(update={"invoices": (newest_open,)}))


def _subscription_method(
    ctx: HandlerContext, sub: SubscriptionRecord, payment_method_id: str
) -> PaymentMethodRecord:
    """The payment method an update bills from now on: the subscription's customer's,
    attached. Another customer's is not found, worded as an unknown one is (and as
    another tenant's, which ctx.load_kept does not find): an update names no method of
    anyone else's. Let through (the provider may have acted), a detach since is no
    refusal: the provider answers with what it did. The answer names the customer (review
    h77o F5: "no such payment method" of one that exists misled an operator); it is the
    subscription's own, so it reveals nothing either."""
    pm = ctx.load_kept(PaymentMethodRecord, payment_method_id)
    if pm is None or pm.customer_id != sub.customer_id:
        raise Rejection(
            RejectReason.NOT_FOUND,
            f"no such payment method of customer {sub.customer_id}: {payment_method_id}",
            remember=False,
        )
    if not pm.attached and not ctx.let_through:
        raise Rejection(RejectReason.INVALID_STATE, f"payment method {pm.id} is detached")
    ctx.at_provider(pm)
    return pm


def _billed_method(
    ctx: HandlerContext, sub: SubscriptionRecord, res: gw.SubscriptionResult
) -> str | None:
    """paystream's id of the payment method the provider's answer says it bills: the
    subscription's customer's method recorded with that provider id.

    One paystream has not recorded for the customer (attached outside paystream, in the
    provider's dashboard) has no id here to record, and making a record for it would
    invent a payment method no command made: the recorded one is kept, and the mismatch
    counted and logged (as a dispute not recorded is), for the tenant to set the card
    through paystream. An answer naming none (Stripe's default_payment_method cleared:
    the customer's default is billed) keeps it too."""
    there = res.provider_payment_method_id
    if there is None:
        return sub.payment_method_id
    provider = ctx.gateway.provider
    found = sorted(
        str(raw["id"])
        for raw in _owned_records(ctx, "payment_method", {sub.customer_id})
        if raw.get("provider_payment_method_id") == there and raw.get("provider") == provider
    )
    if found:
        # (the recorded one first: a provider id recorded twice keeps what it was)
        return sub.payment_method_id if sub.payment_method_id in found else found[0]
    metrics.SUBSCRIPTION_METHODS_UNKNOWN.labels(provider, ctx.cmd.tenant_id).inc()
    _throttled.warning(
        ("unknown subscription method", ctx.cmd.tenant_id, sub.id),
        "tenant %s subscription %s: %s bills payment method %s, which paystream has not "
        "recorded for customer %s: %s kept as recorded",
        ctx.cmd.tenant_id, sub.id, provider, there, sub.customer_id, sub.payment_method_id,
    )  # fmt: skip
    return sub.payment_method_id


def _update_not_in_effect(
    data: c.UpdateSubscription,
    sub: SubscriptionRecord,
    pm: PaymentMethodRecord | None,
    now: gw.SubscriptionResult,
) -> list[str]:
    """Each field ``data`` asks for that the subscription read back (``now``, recorded
    in ``sub``) does not hold, worded for the rejection: asked, then in effect. The card
    by its provider id: one billed that paystream has not recorded is not the one asked
    for, though the record keeps that one (_billed_method)."""
    billed = now.provider_payment_method_id
    card = sub.payment_method_id
    if pm is not None and billed is not None and billed != pm.provider_payment_method_id:
        card = card if card != pm.id else "one paystream has not recorded"
    asked = (
        ("amount", data.amount, sub.amount),
        ("payment_method_id", data.payment_method_id, card),
        ("cancel_at_period_end", data.cancel_at_period_end, sub.cancel_at_period_end),
    )
    missing = [
        f"{name} {_shown(want)} asked, {_shown(held)} in effect"
        for name, want, held in asked
        if want is not None and want != held
    ]
    # (a trial ended now is in effect once it is no longer trialing; a moved end, when
    # the trial ends then)
    held_end = None if sub.trial_end is None else int(sub.trial_end.timestamp())
    shown = "none" if sub.trial_end is None else sub.trial_end.isoformat()
    if data.trial_end == "now" and sub.status == _SUB_TRIALING.value:
        missing.append(f"trial_end now asked, still trialing until {shown}")
    elif isinstance(data.trial_end, int) and data.trial_end != held_end:
        asked_end = datetime.fromtimestamp(data.trial_end, UTC).isoformat()
        missing.append(f"trial_end {asked_end} asked, {shown} in effect")
    return missing


def _shown(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


async def update_subscription(ctx: HandlerContext, data: c.UpdateSubscription) -> HandlerResult:
    """Its price, payment method or cancel at period end changed at the provider, with
    no prorations: a new amount is billed from the next period on; a trialing one's
    trial ended now (its first period charged under this command's key) or its end
    moved. Only what differs from the record is sent, but a payment method or a
    trial_end given always is; when nothing is, nothing is asked of the provider."""
    sub = ctx.load(SubscriptionRecord, data.subscription_id)
    if not ctx.let_through:
        try:
            check_subscription_transition(sub.status, "update")
        except InvalidState as exc:
            raise Rejection(
                RejectReason.INVALID_STATE,
                f"{exc}: only an active, trialing or past_due subscription is updated",
            ) from exc
        # (a time is judged by the provider's clock, read only when one is asked)
        clock = await provider_now(ctx) if isinstance(data.trial_end, int) else None
        _trial_end_allowed(sub, data, clock)
    ctx.at_provider(sub)
    pm = (
        None
        if data.payment_method_id is None
        else _subscription_method(ctx, sub, data.payment_method_id)
    )
    previous = sub.status
    if _changed_since_first_attempt(ctx, sub):
        # Changed since this update was first tried (as update_customer's): the provider
        # asked again under its key would answer as of then. Read back as it is now, the
        # payment method it bills included (this update's, if the provider took it).
        now = await _gateway(
            ctx,
            "retrieve_subscription",
            lambda: ctx.gateway.retrieve_subscription(
                gw.RetrieveSubscription(provider_subscription_id=sub.provider_subscription_id),
                idempotency_key=ctx.idem,
            ),
        )
        _take_subscription(ctx, sub, now)
        sub.amount = now.amount.amount
        sub.payment_method_id = _billed_method(ctx, sub, now)
        invoices = _invoices(ctx, sub, now)
        missing = _update_not_in_effect(data, sub, pm, now)
        if missing:
            # Never reached the provider, or a newer command changed the same field:
            # sending it now could undo a newer change, answering "updated" would say a
            # price or card is billed that is not. Refused, the read-back still recorded.
            return HandlerResult(
                "subscription.updated",
                sub,
                invoices,
                rejected=Rejection(
                    RejectReason.INVALID_STATE,
                    f"subscription {sub.id} changed since this update was first tried, and "
                    f"the update is not in effect ({'; '.join(missing)}): send it again "
                    "with a new command id to apply it",
                ),
            )
        # (a renewal the read-back finds declined carries its decline, as a refresh's)
        return _subscription_outcome(
            now, sub, invoices, _fell_past_due(ctx, now, previous), previous
        )
    amount = None if data.amount in (None, sub.amount) else data.amount
    # A card given is sent even when the record names it: the provider may bill one set
    # outside paystream, which the record cannot name (_billed_method keeps the recorded
    # one), and this is how the tenant puts its card back (review h77i). One call, and
    # idempotent at the provider.
    method = pm
    at_end = data.cancel_at_period_end
    if at_end == sub.cancel_at_period_end:
        at_end = None
    if amount is None and method is None and at_end is None and data.trial_end is None:
        return HandlerResult("subscription.updated", sub, extra={"previous_status": previous})
    if amount is not None or method is not None or data.trial_end is not None:
        # A new price or card bills more: the tenant's capability, as a create's. A
        # cancel at period end alone, scheduled or resumed, bills nothing new: open to a
        # tenant whose capabilities leave subscriptions out, as subscription.cancel is
        # (the gateway asks the same: gw.unnarrowed).
        _subscriptions_supported(ctx)
    req = gw.UpdateSubscription(
        provider_subscription_id=sub.provider_subscription_id,
        amount=None if amount is None else Money(amount=amount, currency=sub.currency),
        provider_payment_method_id=None if method is None else method.provider_payment_method_id,
        cancel_at_period_end=at_end,
        # (a price change's: with the amount unchanged there is nothing to prorate)
        proration=None
        if amount is None or data.proration in (None, c.Proration.NONE)
        else str(data.proration),
        # (always sent: ending or moving a trial is asked of the provider, never compared
        # with the record, which may be stale)
        trial_end=data.trial_end,
    )
    try:
        res = await _gateway(
            ctx,
            "update_subscription",
            lambda: ctx.gateway.update_subscription(req, idempotency_key=ctx.idem),
        )
    except (GatewayError, Rejection) as exc:
        cause = exc if isinstance(exc, GatewayError) else exc.__cause__
        read = cause.read_back if isinstance(cause, GatewayError) else None
        if not isinstance(read, gw.SubscriptionResult):
            raise
        return _refused_after_read(ctx, data, sub, read, exc, previous)
    if req.proration == "always_invoice":
        sub.pending_proration_net = None  # (its invoice billed the lines pending)
    _take_subscription(ctx, sub, res)
    sub.amount = res.amount.amount
    if method is not None:
        sub.payment_method_id = method.id
    invoices = _invoices(ctx, sub, res)
    error = _fell_past_due(ctx, res, previous)
    done = _subscription_outcome(res, sub, invoices, error, previous)
    ended = data.trial_end == "now" and previous == _SUB_TRIALING.value
    if ended and res.status is not _SUB_TRIALING:
        # (its first period charged now: the fraud rules' attempt, as a create's)
        done.extra["trial_end_charge"] = "paid" if error is None else "declined"
    return done


def _refused_after_read(
    ctx: HandlerContext,
    data: c.UpdateSubscription,
    sub: SubscriptionRecord,
    read: gw.SubscriptionResult,
    exc: GatewayError | Rejection,
    previous: str,
) -> HandlerResult:
    """The provider refused part of an update after another part was applied (Paddle:
    the PATCH of a new amount, then its /activate refused or its charge declined): the
    subscription read back is recorded as it holds it (the new amount in effect). A
    decline is answered `subscription.updated` with it in ``error`` (the trial not
    ended: still trialing at Paddle), any other refusal `command.rejected` as it was."""
    _take_subscription(ctx, sub, read)
    sub.amount = read.amount.amount
    invoices = _invoices(ctx, sub, read)
    if isinstance(exc, GatewayError) and _is_card_error(exc):
        done = _subscription_outcome(read, sub, invoices, exc, previous)
        if data.trial_end == "now" and previous == _SUB_TRIALING.value:
            done.extra["trial_end_charge"] = "declined"
        return done
    if isinstance(exc, Rejection):
        return HandlerResult("subscription.updated", sub, invoices, rejected=exc)
    raise exc


# Stripe's longest trial, from now: a moved trial_end is at most this far ahead.
_TRIAL_END_MAX = timedelta(days=c.MAX_TRIAL_DAYS)


def _trial_end_allowed(
    sub: SubscriptionRecord, data: c.UpdateSubscription, now: datetime | None
) -> None:
    """An update's ``trial_end``: of a trialing subscription only (`invalid_state`), a
    time ahead and at most 730 days from ``now``, the provider's clock (provider_now:
    the simulator's own after `simulator advance`, as a pause's resumes_at; judged by
    the worker's, a trial_end past on the simulator's clock passed here and was refused
    there, one ahead of it refused here) (`validation_error`). Checked here, not in the
    command's model: a replay is answered from its record before this runs, so the same
    command is answered alike once the time has passed (a model checking the clock
    would refuse it then). Not asked of a command let through (its provider may have
    taken it: its key answers)."""
    if data.trial_end is None:
        return
    if sub.status != _SUB_TRIALING.value:
        raise Rejection(
            RejectReason.INVALID_STATE,
            f"subscription {sub.id} is {sub.status}: only a trialing subscription's "
            "trial_end is changed",
        )
    if data.trial_end == "now":
        if sub.cancel_at_period_end and data.cancel_at_period_end is not False:
            raise Rejection(
                RejectReason.INVALID_STATE,
                f"subscription {sub.id} is to be canceled at its trial's end: resume it "
                "(cancel_at_period_end false, in the same update) to end its trial now",
            )
        return
    if now is None:  # (never when a time is given: its caller read the provider's clock)
        now = datetime.now(UTC)
    asked = datetime.fromtimestamp(data.trial_end, UTC)
    if not now < asked <= now + _TRIAL_END_MAX:
        raise Rejection(
            RejectReason.VALIDATION_ERROR,
            f"trial_end {asked.isoformat()} must be ahead, at most {c.MAX_TRIAL_DAYS} days "
            f"from now, by the provider's clock (now {now.isoformat()}) "
            '(or "now", to end the trial at once)',
        )


def _subscription_outcome(
    res: gw.SubscriptionResult,
    sub: SubscriptionRecord,
    invoices: list[EntityRecord],
    error: GatewayError | None,
    previous: str,
) -> HandlerResult:
    """A cancel's, an update's or a refresh's outcome: canceled, or updated (scheduled
    to cancel, changed, renewed, past due, or unchanged)."""
    extra: dict[str, Any] = {"previous_status": previous}
    if res.next_action is not None:
        extra["next_action"] = res.next_action  # (still to be paid at checkout)
    if res.pending_prorations:
        # (a price change's proration lines, on its next invoice: create_prorations)
        extra["pending_prorations"] = [p.model_dump(mode="json") for p in res.pending_prorations]
    if res.status is _SUB_CANCELED:
        return HandlerResult("subscription.canceled", sub, invoices, error=error, extra=extra)
    return HandlerResult("subscription.updated", sub, invoices, error=error, extra=extra)


# ---- payouts and balances -----------------------------------------------------------

_PAYOUTS = gw.Capability.PAYOUTS
_PAYOUT_OUTCOME = {
    gw.PayoutStatus.PENDING: "payout.updated",
    gw.PayoutStatus.IN_TRANSIT: "payout.updated",
    gw.PayoutStatus.PAID: "payout.paid",
    gw.PayoutStatus.FAILED: "payout.failed",
    gw.PayoutStatus.CANCELED: "payout.canceled",
}


def _payouts_supported(ctx: HandlerContext) -> None:
    """A payout's create, or a balance read: `unsupported` before anything is asked of
    the provider, for a tenant whose gateway lacks payouts (Stripe and Square, for now;
    or a tenant whose capabilities leave them out). Not remembered: the tenant's setup,
    not the command. A cancel or a refresh of a payout already made needs only its
    provider's capability, which the gateway checks (gw.UNNARROWED_OPERATIONS), as for
    subscriptions."""
    _capability_required(ctx, _PAYOUTS, "payouts")


# Stripe's payout failure codes (its API reference, "Payout failures") after which a new
# payout to the same bank account may succeed with nothing changed: the bank could not
# process it this time, or the account's balance could not cover it (once funds settle).
# Every other code (account_closed, no_account, account_frozen, declined,
# debit_not_authorized, invalid_currency, invalid_account_number, the account holder's
# details, ...) needs the account, or its details, changed first; so does a code this
# version does not know. docs/stripe.md "Payouts" lists them.
PAYOUT_FAILURES_RETRYABLE = frozenset({"could_not_process", "insufficient_funds"})


def _payout_failure(ctx: HandlerContext, res: gw.PayoutResult) -> GatewayError:
    """A failed payout's reason, in an outcome's `error` (the bank's: Stripe's payout
    failure codes, carried as they are in `object.failure_code`), `retryable` only for
    a code after which the same account may take a new payout (review h74r: a closed
    account's was `retryable`, and a consumer following it sent the money there again,
    held for days)."""
    return GatewayError(
        ErrorCode.PROCESSING_ERROR,
        res.failure_message or f"the payout failed ({res.failure_code or 'unknown reason'})",
        provider=ctx.gateway.provider,
        retryable=res.failure_code in PAYOUT_FAILURES_RETRYABLE,
        decline_code=res.failure_code,
    )


def _take_payout(ctx: HandlerContext, rec: PayoutRecord, res: gw.PayoutResult) -> None:
    """The provider's answer, unless it would move the payout where it cannot go (a
    stale read), which is refused (not remembered: asked again, it answers afresh)."""
    status = res.status.value
    try:
        check_payout_move(rec.status, status)
    except InvalidState as exc:
        raise Rejection(
            RejectReason.INVALID_STATE,
            f"payout {rec.id}: {exc} ({ctx.gateway.provider}'s answer)",
            remember=False,
        ) from exc
    rec.status = status
    rec.arrival_date = res.arrival_date
    rec.failure_code, rec.failure_message = res.failure_code, res.failure_message


def _payout_moved(ctx: HandlerContext, rec: PayoutRecord, res: gw.PayoutResult) -> HandlerResult:
    """A payout already made, moved to its provider's answer (a cancel's or a read's):
    the outcome its new status names, a failed one's reason in ``error``, and the status
    it had before in ``previous_status``."""
    previous = rec.status
    _take_payout(ctx, rec, res)
    error = _payout_failure(ctx, res) if res.status is gw.PayoutStatus.FAILED else None
    return HandlerResult(
        _PAYOUT_OUTCOME[res.status], rec, error=error, extra={"previous_status": previous}
    )


async def create_payout(ctx: HandlerContext, data: c.CreatePayout) -> HandlerResult:
    poid = data.payout_id or ctx.new_id(PayoutRecord, "po")
    ctx.ensure_new(PayoutRecord, poid)
    _payouts_supported(ctx)
    req = gw.CreatePayout(
        amount=Money(amount=data.amount, currency=data.currency),
        method=data.method.value,
        description=data.description,
        statement_descriptor=data.statement_descriptor,
        # Named at a provider that sends webhooks (its payout.* events find the payout by
        # this reference), as payments are.
        metadata=(
            gw.payout_ref(data.metadata, ctx.cmd.tenant_id, poid)
            if _WEBHOOKS in ctx.gateway.capabilities
            else dict(data.metadata)
        ),
    )
    # As payment.create's: a chosen id is the key's scope (one payout per id, however
    # often it is sent), else the command's.
    key = ctx.create_key("payout", data.payout_id)
    try:
        res = await _gateway(
            ctx, "create_payout", lambda: ctx.gateway.create_payout(req, idempotency_key=key)
        )
    except GatewayError as exc:
        if _chosen_id_taken(ctx, exc, data.payout_id):
            raise Rejection(
                RejectReason.INVALID_STATE,
                f"payout id {poid} is taken at the provider by an earlier create of other "
                "parameters: one refused, or one still parked (`paystream dlq list`), which "
                "may have paid out; check before sending this payout under a new id",
            ) from exc
        if exc.code is ErrorCode.BALANCE_INSUFFICIENT:
            # No payout exists at the provider: a rejection (its id stays free here), not
            # a payout.failed (which is a payout the bank returned). The provider keeps
            # this answer under the key (Stripe does, for its idempotency window): the
            # same payout id is answered so again; send a new one once funds settle.
            raise Rejection(
                RejectReason.BALANCE_INSUFFICIENT,
                f"payout {format_minor(data.amount, data.currency)} is more than the "
                f"available balance ({exc.message}); a payout id refused so is refused "
                "again by the provider for its idempotency window: send a new one",
            ) from exc
        raise
    rec = PayoutRecord(
        **_base(ctx, poid),
        status=res.status.value,
        amount=res.amount.amount,
        currency=res.amount.currency,
        method=res.method,
        provider_payout_id=res.provider_payout_id,
        arrival_date=res.arrival_date,
        failure_code=res.failure_code,
        failure_message=res.failure_message,
        description=data.description,
        statement_descriptor=data.statement_descriptor,
        metadata=dict(data.metadata),
    )
    if res.status in (gw.PayoutStatus.PENDING, gw.PayoutStatus.IN_TRANSIT):
        return HandlerResult("payout.created", rec)
    error = _payout_failure(ctx, res) if res.status is gw.PayoutStatus.FAILED else None
    return HandlerResult(_PAYOUT_OUTCOME[res.status], rec, error=error)


_PAYOUT_FINAL = frozenset({gw.PayoutStatus.CANCELED.value, gw.PayoutStatus.FAILED.value})


async def cancel_payout(ctx: HandlerContext, data: c.CancelPayout) -> HandlerResult:
    rec = ctx.load(PayoutRecord, data.payout_id)
    if rec.status in _PAYOUT_FINAL:
        # Even let through (parked after its call, re-driven): canceled by a webhook's
        # refresh (maybe this very cancel's effect, read back) or another command, or
        # failed; the outcome giving its amount back was emitted then, and is emitted
        # once per payout (review finding: a re-driven cancel emitted a second
        # payout.canceled). Its own redelivery is answered from entity memory (load).
        raise Rejection(
            RejectReason.INVALID_STATE,
            f"payout {rec.id} is already {rec.status}: its payout.{rec.status} was "
            "emitted when that was recorded",
        )
    if rec.status != gw.PayoutStatus.PENDING.value and not ctx.let_through:
        # Stripe cancels a pending payout only (one in transit is with the bank).
        raise Rejection(RejectReason.INVALID_STATE, f"cannot cancel a payout that is {rec.status}")
    ctx.at_provider(rec)
    req = gw.CancelPayout(provider_payout_id=rec.provider_payout_id)
    res = await _gateway(
        ctx, "cancel_payout", lambda: ctx.gateway.cancel_payout(req, idempotency_key=ctx.idem)
    )
    return _payout_moved(ctx, rec, res)


async def refresh_payout(ctx: HandlerContext, data: c.RefreshPayout) -> HandlerResult:
    """The payout as its provider holds it now: in transit, paid on arrival, or failed
    (returned by the bank: its amount available again). A read: asked again, the
    provider answers afresh. One canceled or failed is final: answered `payout.updated`
    from its record, unread, so that the outcome that gave its amount back
    (`payout.canceled`, `payout.failed`) is emitted once, however often it is read (a
    provider's webhook sent again included). (Refused `invalid_state`, the webhook's
    refresh queued behind paystream's own cancel, the echo read before its outcome was
    recorded, was a `command.rejected` of a command the tenant never sent: as
    refresh_invoice's, review h81rb F1.) A paid one stays readable: a bank may still
    return it (paid -> failed)."""
    rec = ctx.load(PayoutRecord, data.payout_id)
    if rec.status in _PAYOUT_FINAL:
        return HandlerResult("payout.updated", rec, extra={"previous_status": rec.status})
    ctx.at_provider(rec)
    req = gw.RetrievePayout(provider_payout_id=rec.provider_payout_id)
    res = await _gateway(
        ctx, "retrieve_payout", lambda: ctx.gateway.retrieve_payout(req, idempotency_key=ctx.idem)
    )
    # (Failed now, it was not before: a failed payout's refresh is answered above.)
    return _payout_moved(ctx, rec, res)


async def retrieve_balance(ctx: HandlerContext, data: c.RetrieveBalance) -> HandlerResult:
    """The tenant's balance at its provider now, per currency (a read: no entity changes;
    answered afresh every time it is sent under a new command id)."""
    _payouts_supported(ctx)
    res = await _gateway(
        ctx,
        "retrieve_balance",
        lambda: ctx.gateway.retrieve_balance(gw.RetrieveBalance(), idempotency_key=ctx.idem),
    )
    balances = [
        {"currency": b.currency, "available": b.available, "pending": b.pending}
        for b in res.balances
    ]
    return HandlerResult("balance.retrieved", extra={"balances": balances})


# ---- one-off invoices -----------------------------------------------------------------

_INVOICES = gw.Capability.INVOICES
_INVOICE_PAID = gw.InvoiceStatus.PAID.value
_INVOICE_VOID = gw.InvoiceStatus.VOID.value
# An invoice's status, as a provider's answer moves it → its outcome.
_INVOICE_OUTCOME = {
    gw.InvoiceStatus.DRAFT: "invoice.updated",
    gw.InvoiceStatus.OPEN: "invoice.updated",
    gw.InvoiceStatus.PAID: "invoice.paid",
    gw.InvoiceStatus.VOID: "invoice.voided",
    gw.InvoiceStatus.UNCOLLECTIBLE: "invoice.marked_uncollectible",
}


# Statuses a finalize may reach that are answered as such (invoice.paid, invoice.voided),
# not invoice.finalized (open; or a draft, read back stale).
_FINAL_AT_FINALIZE = frozenset({gw.InvoiceStatus.PAID, gw.InvoiceStatus.VOID})


def _invoices_supported(ctx: HandlerContext) -> None:
    """An invoice's create: `unsupported` before anything is asked of the provider, for
    a tenant whose gateway lacks invoices (Square, Paddle; or a tenant whose
    capabilities leave them out). Not remembered: the tenant's setup, not the command.
    A finalize or a pay needs the tenant's capability too (the gateway checks it before
    any call); a void or a refresh of an invoice already made needs only its provider's
    (gw.UNNARROWED_OPERATIONS), as a payout's cancel."""
    _capability_required(ctx, _INVOICES, "invoices")


def _one_off_invoice(ctx: HandlerContext, invoice_id: str) -> InvoiceRecord:
    """The tenant's one-off invoice ``invoice_id``: a subscription's invoice is its
    provider's to collect (read back by subscription.refresh), never finalized, paid or
    voided by these commands."""
    rec = ctx.load(InvoiceRecord, invoice_id)
    if rec.subscription_id is not None:
        raise Rejection(
            RejectReason.INVALID_STATE,
            f"invoice {rec.id} is subscription {rec.subscription_id}'s: its provider "
            "collects it (subscription.refresh reads it back, subscription.cancel voids it)",
        )
    return rec


def _invoice_transition(rec: InvoiceRecord, verb: str) -> None:
    try:
        check_invoice_transition(rec.status, verb)
    except InvalidState as exc:
        raise Rejection(RejectReason.INVALID_STATE, f"invoice {rec.id}: {exc}") from exc


def _take_invoice(ctx: HandlerContext, rec: InvoiceRecord, res: gw.InvoiceResult) -> None:
    """The provider's answer, unless it would move the invoice where it cannot go (a
    stale read: open after paid), which is refused (not remembered: asked again, it
    answers afresh)."""
    status = res.status.value
    if not invoice_moves(rec.status, status):
        raise Rejection(
            RejectReason.INVALID_STATE,
            f"invoice {rec.id}: an invoice that is {rec.status} cannot become {status} "
            f"({ctx.gateway.provider}'s answer)",
            remember=False,
        )
    rec.status = status
    rec.amount = res.amount.amount
    rec.due_date = res.due_date or rec.due_date
    rec.provider_payment_id = res.provider_payment_id or rec.provider_payment_id
    rec.failure_code, rec.failure_message = res.failure_code, res.failure_message
    if res.tax is not None:
        rec.subtotal, rec.tax, rec.total = res.subtotal, res.tax, res.total
    if res.line_items is not None and res.status is gw.InvoiceStatus.DRAFT:
        # A draft's lines as read with its total (an update whose answer was lost may
        # have replaced them: review h81rx F1): kept together. None (its provider cannot
        # say, or an answer kept by the release before): the record's stand.
        rec.line_items = [_line_record(line) for line in res.line_items]


def _line_record(line: gw.InvoiceLine) -> dict[str, Any]:
    """A line as invoice.create and invoice.update record it (c.InvoiceLineItem's dump;
    one made at the provider may have no description, or a negative amount)."""
    return {"description": line.description, "amount": line.unit_amount, "quantity": line.quantity}


def _invoice_moved(ctx: HandlerContext, rec: InvoiceRecord, res: gw.InvoiceResult) -> HandlerResult:
    """An invoice moved to its provider's answer: the outcome its new status names, with
    the status it had before in ``previous_status``."""
    previous = rec.status
    _take_invoice(ctx, rec, res)
    # (uncollectible read back uncollectible: unchanged, as open read back open)
    outcome = "invoice.updated" if previous == rec.status else _INVOICE_OUTCOME[res.status]
    return HandlerResult(outcome, rec, extra={"previous_status": previous})


def _invoice_method(
    ctx: HandlerContext, payment_method_id: str, customer_id: str
) -> PaymentMethodRecord:
    """A saved payment method an invoice is charged to: the same customer's, attached
    (one let through, the provider may have charged it: taken as it is)."""
    pm = ctx.load(PaymentMethodRecord, payment_method_id)
    if not pm.attached and not ctx.let_through:
        raise Rejection(RejectReason.INVALID_STATE, f"payment method {pm.id} is detached")
    if pm.customer_id != customer_id:
        raise Rejection(
            RejectReason.INVALID_STATE,
            f"payment method {pm.id} belongs to another customer than {customer_id}",
        )
    ctx.at_provider(pm)
    return pm


async def create_invoice(ctx: HandlerContext, data: c.CreateInvoice) -> HandlerResult:
    """A draft one-off invoice at the tenant's provider (nothing charged)."""
    iid = data.invoice_id or ctx.new_id(InvoiceRecord, "in")
    ctx.ensure_new(InvoiceRecord, iid)
    _invoices_supported(ctx)
    customer = (
        ctx.load(CustomerRecord, data.customer_id)
        if ctx.let_through
        else _live_customer(ctx, data.customer_id)
    )
    ctx.at_provider(customer)
    pm = (
        None
        if data.payment_method_id is None
        else _invoice_method(ctx, data.payment_method_id, customer.id)
    )
    tax_rates = _applied_rates(ctx, data.tax_rate_ids or ())
    req = gw.CreateInvoice(
        provider_customer_id=customer.provider_customer_id,
        currency=data.currency,
        lines=_gateway_lines(data.line_items),
        tax_rates=tuple(
            gw.TaxRateRef(
                provider_tax_rate_id=r.provider_tax_rate_id,
                percentage=r.percentage,
                inclusive=r.inclusive,
            )
            for r in tax_rates
        ),
        collection_method=data.collection_method.value,
        days_until_due=data.days_until_due,
        provider_payment_method_id=None if pm is None else pm.provider_payment_method_id,
        description=data.description,
        # Named at a provider that sends webhooks (its invoice.* events find the invoice
        # by this reference, as a payout's), the record keeping the tenant's own.
        metadata=(
            gw.invoice_ref(data.metadata, ctx.cmd.tenant_id, iid)
            if _WEBHOOKS in ctx.gateway.capabilities
            else dict(data.metadata)
        ),
    )
    # As payment.create's: a chosen id is the key's scope (one invoice per id, however
    # often it is sent), else the command's. (A gateway that makes an invoice in several
    # calls derives each call's key from this one.)
    key = ctx.create_key("invoice", data.invoice_id)
    try:
        # One let through may have been first sent without the webhook reference
        # (gw.invoice_ref) or with it: sent again the other way, answered as it was.
        res = await _sent_either_way(
            ctx,
            "create_invoice",
            lambda r: ctx.gateway.create_invoice(r, idempotency_key=key),
            req,
            gw.invoice_ref(data.metadata, ctx.cmd.tenant_id, iid),
            data.metadata,
        )
    except GatewayError as exc:
        if _chosen_id_taken(ctx, exc, data.invoice_id):
            raise Rejection(
                RejectReason.INVALID_STATE,
                f"invoice id {iid} is taken at the provider by an earlier create of other "
                "parameters: one refused, or one still parked (`paystream dlq list`); "
                "create this invoice under a new id",
            ) from exc
        else:
            raise
    rec = InvoiceRecord(
        **_base(ctx, iid),
        customer_id=customer.id,
        status=res.status.value,
        amount=res.amount.amount,
        currency=res.amount.currency,
        provider_invoice_id=res.provider_invoice_id,
        subtotal=res.subtotal if res.tax is not None else None,
        tax=res.tax,
        total=res.total if res.tax is not None else None,
        line_items=[line.model_dump(mode="json") for line in data.line_items],
        tax_rate_ids=[r.id for r in tax_rates] or None,
        collection_method=data.collection_method.value,
        payment_method_id=None if pm is None else pm.id,
        days_until_due=data.days_until_due,
        description=data.description or None,  # ("": none, as its provider holds it)
        metadata=dict(data.metadata),
    )
    return HandlerResult("invoice.created", rec)


def _recorded_lines(lines: Sequence[Mapping[str, Any]]) -> tuple[gw.InvoiceLine, ...]:
    """A one-off invoice's recorded line_items (c.InvoiceLineItem's dumps) as a
    gateway's lines."""
    return tuple(
        gw.InvoiceLine(
            description=str(line["description"]),
            unit_amount=int(line["amount"]),
            quantity=int(line.get("quantity", 1)),
        )
        for line in lines
    )


def _gateway_lines(lines: Sequence[c.InvoiceLineItem]) -> tuple[gw.InvoiceLine, ...]:
    return tuple(
        gw.InvoiceLine(
            description=line.description, unit_amount=line.amount, quantity=line.quantity
        )
        for line in lines
    )


async def update_invoice(ctx: HandlerContext, data: c.UpdateInvoice) -> HandlerResult:
    """A draft changed before it is finalized: its lines replaced whole, its description,
    a sent one's days_until_due, its metadata merged (as Stripe's). Only a draft: an
    open, uncollectible, paid or void one is `invalid_state` before the provider is
    asked. Sent again (redelivered, re-driven), it sets the same lines: the gateway
    replaces them under the command's key, never adding one twice."""
    rec = _one_off_invoice(ctx, data.invoice_id)
    _invoice_transition(rec, "update")
    if data.days_until_due is not None and rec.collection_method != "send_invoice":
        raise Rejection(
            RejectReason.VALIDATION_ERROR,
            f"invoice {rec.id} is collected {rec.collection_method}: days_until_due is for "
            "collection_method send_invoice only",
        )
    merged = gw.merged_metadata(rec.metadata or {}, data.metadata)
    if _invoice_keys_sent(ctx, rec, merged) > gw.METADATA_KEYS_MAX:
        # (as customer.update's: the invoice's keys after the merge; not remembered)
        raise Rejection(
            RejectReason.VALIDATION_ERROR,
            f"invoice {rec.id} would hold more than {gw.METADATA_KEYS_MAX} metadata keys"
            + (
                f" at {ctx.gateway.provider} ({gw.INVOICE_REF_KEY}, paystream's reference "
                "its webhooks find it by, is one of them)"
                if _WEBHOOKS in ctx.gateway.capabilities
                else ""
            ),
            remember=False,
        )
    ctx.at_provider(rec)
    if _changed_since_first_attempt(ctx, rec):
        return await _invoice_update_read_back(ctx, rec)
    # Its rates as they are (archived since or not: its provider bills them, as a
    # repricing takes its subscription's).
    rates = [ctx.load(TaxRateRecord, rid) for rid in rec.tax_rate_ids or ()]
    req = gw.UpdateInvoice(
        provider_invoice_id=rec.provider_invoice_id,
        currency=rec.currency,
        tax_rates=tuple(
            gw.TaxRateRef(
                provider_tax_rate_id=r.provider_tax_rate_id,
                percentage=r.percentage,
                inclusive=r.inclusive,
            )
            for r in rates
        ),
        lines=None if data.line_items is None else _gateway_lines(data.line_items),
        description=data.description,
        days_until_due=data.days_until_due,
        metadata=_sent_invoice_metadata(ctx, data.metadata),
    )
    res = await _gateway(
        ctx, "update_invoice", lambda: ctx.gateway.update_invoice(req, idempotency_key=ctx.idem)
    )
    previous = rec.status
    _take_invoice(ctx, rec, res)
    if data.line_items is not None:
        rec.line_items = [line.model_dump(mode="json") for line in data.line_items]
    if data.description is not None:
        # ("" clears it: Stripe holds none, null, as the simulator does; review h81re F5)
        rec.description = data.description or None
    if data.days_until_due is not None:
        rec.days_until_due = data.days_until_due
    rec.metadata = merged
    return HandlerResult("invoice.updated", rec, extra={"previous_status": previous})


async def _invoice_update_read_back(ctx: HandlerContext, rec: InvoiceRecord) -> HandlerResult:
    """An update re-driven after another command changed the invoice since it was first
    tried (as customer.update's and subscription.update's): not sent again. Sent, it
    deleted the newer update's items and set its own lines over them; answered from its
    keys at Stripe (the items it made then, deleted since), it left the draft with
    neither's lines; the simulator answered as of then, the record taking lines the
    provider no longer held (review h81re F1). The invoice is read back (its status,
    total and a draft's lines as the provider holds them) and the update refused, to be
    sent again under a new command id."""
    req = gw.RetrieveInvoice(provider_invoice_id=rec.provider_invoice_id)
    now = await _gateway(
        ctx, "retrieve_invoice", lambda: ctx.gateway.retrieve_invoice(req, idempotency_key=ctx.idem)
    )
    previous = rec.status
    _take_invoice(ctx, rec, now)
    return HandlerResult(
        "invoice.updated",
        rec,
        extra={"previous_status": previous},
        rejected=Rejection(
            RejectReason.INVALID_STATE,
            f"invoice {rec.id} changed since this update was first tried, and the update "
            "is not sent again (it would undo the newer change): read back as its provider "
            "holds it; send it again with a new command id to apply it",
        ),
    )


def _invoice_keys_sent(ctx: HandlerContext, rec: InvoiceRecord, merged: Mapping[str, str]) -> int:
    """The metadata keys an invoice would hold at its provider after an update merged
    ``merged`` (the record's, the tenant's own): at one sending webhooks, paystream's
    reference (gw.INVOICE_REF_KEY) in place of a tenant's key of that name, counted when
    the invoice carries it. invoice.create sends it unless the tenant's keys were 50
    already (gw.invoice_ref), and no update sends or removes it, so an invoice
    recorded with fewer carries it (review h81re F4: 49 keys and the reference passed
    as 49, and Stripe refused the 51st)."""
    if _WEBHOOKS not in ctx.gateway.capabilities:
        return len(merged)
    own = [k for k in rec.metadata or {} if k != gw.INVOICE_REF_KEY]
    carried = len(own) < gw.METADATA_KEYS_MAX
    return len([k for k in merged if k != gw.INVOICE_REF_KEY]) + carried


def _sent_invoice_metadata(
    ctx: HandlerContext, metadata: Mapping[str, str] | None
) -> dict[str, str] | None:
    """An update's metadata as sent to its provider: at one sending webhooks, without
    paystream's reference (gw.INVOICE_REF_KEY), which its invoice.* events find the
    invoice by; the tenant's value under it ("" removing it, another invoice's naming
    that one) never reaches it, as gw.invoice_ref replaces it at the create (review
    h81re). None when nothing else is left to send."""
    if metadata is None:
        return None
    if _WEBHOOKS not in ctx.gateway.capabilities:
        return dict(metadata)
    sent = {k: v for k, v in metadata.items() if k != gw.INVOICE_REF_KEY}
    return sent or None


async def finalize_invoice(ctx: HandlerContext, data: c.FinalizeInvoice) -> HandlerResult:
    """A draft made open: its total fixed, to be paid (`invoice.pay`, or by the customer
    on the provider's page: a sent invoice)."""
    rec = _one_off_invoice(ctx, data.invoice_id)
    # A paid or void one even let through (parked, re-driven after a refresh or a
    # webhook recorded it so): its outcome was emitted then, once per invoice; the
    # provider's replay of this finalize (paid as it was finalized) would emit
    # invoice.paid again (review h79r_c).
    if not ctx.let_through or rec.status in (_INVOICE_PAID, _INVOICE_VOID):
        _invoice_transition(rec, "finalize")
    ctx.at_provider(rec)
    req = gw.FinalizeInvoice(
        provider_invoice_id=rec.provider_invoice_id,
        lines=None if rec.line_items is None else _recorded_lines(rec.line_items),
    )
    res = await _gateway(
        ctx,
        "finalize_invoice",
        lambda: ctx.gateway.finalize_invoice(req, idempotency_key=ctx.idem),
    )
    previous = rec.status
    _take_invoice(ctx, rec, res)
    # The status it reached: finalized is paid at once when nothing is left to charge
    # (Stripe: a customer's credit balance covers it), and answered as paid, its
    # invoice.paid emitted once here (counted as paid: analytics, the day's volume).
    extra = {"previous_status": previous}
    if res.status in _FINAL_AT_FINALIZE:
        return HandlerResult(_INVOICE_OUTCOME[res.status], rec, extra=extra)
    return HandlerResult("invoice.finalized", rec, extra=extra)


async def pay_invoice(ctx: HandlerContext, data: c.PayInvoice) -> HandlerResult:
    """Charge an open invoice to its saved payment method (or ``payment_method_id``). A
    decline is `invoice.payment_failed` (the card's answer in ``error``, as a
    payment.failed's); the invoice stays open: pay it again under a new command id (with
    another card, say). A pay redelivered, or re-driven after a crash, is sent under the
    same key: the provider answers with its first answer, never a second charge."""
    rec = _one_off_invoice(ctx, data.invoice_id)
    if rec.status in (_INVOICE_PAID, _INVOICE_VOID):
        # Even let through (re-driven after a refresh recorded it paid): invoice.paid was
        # emitted when that was recorded, and is emitted once per invoice.
        raise Rejection(
            RejectReason.INVALID_STATE,
            f"invoice {rec.id} is already {rec.status}"
            + (": refund its payment to give the money back" if rec.status == "paid" else ""),
        )
    if not ctx.let_through:
        _invoice_transition(rec, "pay")
    method_id = data.payment_method_id or rec.payment_method_id
    if method_id is None:
        raise Rejection(
            RejectReason.INVALID_STATE,
            f"invoice {rec.id} names no payment method: send invoice.pay with "
            f"payment_method_id (a saved one of customer {rec.customer_id}'s)",
        )
    pm = _invoice_method(ctx, method_id, rec.customer_id)
    ctx.at_provider(rec)
    req = gw.PayInvoice(
        provider_invoice_id=rec.provider_invoice_id,
        provider_payment_method_id=pm.provider_payment_method_id,
    )
    try:
        res = await _gateway(
            ctx, "pay_invoice", lambda: ctx.gateway.pay_invoice(req, idempotency_key=ctx.idem)
        )
    except GatewayError as exc:
        if exc.retryable or not _is_card_error(exc):
            raise
        # The card's answer: recorded on the invoice, which stays open (its provider
        # made a failed payment: its id names it).
        rec.failure_code = exc.decline_code or exc.code.value
        rec.failure_message = exc.message
        rec.provider_payment_id = exc.provider_payment_id or rec.provider_payment_id
        return HandlerResult("invoice.payment_failed", rec, error=exc)
    rec.payment_method_id = pm.id
    return _invoice_moved(ctx, rec, res)


async def void_invoice(ctx: HandlerContext, data: c.VoidInvoice) -> HandlerResult:
    """A draft or open invoice voided: never to be paid. A paid one is refused
    (`invalid_state`): refund its payment instead."""
    rec = _one_off_invoice(ctx, data.invoice_id)
    if rec.status == _INVOICE_VOID:
        raise Rejection(RejectReason.INVALID_STATE, f"invoice {rec.id} is already void")
    if not ctx.let_through:
        _invoice_transition(rec, "void")
    ctx.at_provider(rec)
    req = gw.VoidInvoice(
        provider_invoice_id=rec.provider_invoice_id,
        draft_amount=Money(amount=rec.amount, currency=rec.currency)
        if rec.status == gw.InvoiceStatus.DRAFT.value
        else None,
    )
    res = await _gateway(
        ctx, "void_invoice", lambda: ctx.gateway.void_invoice(req, idempotency_key=ctx.idem)
    )
    return _invoice_moved(ctx, rec, res)


async def mark_invoice_uncollectible(
    ctx: HandlerContext, data: c.MarkInvoiceUncollectible
) -> HandlerResult:
    """An open invoice written off: `uncollectible`, no longer expected to be paid, yet
    still payable (`invoice.pay`, or its customer on the provider's page) or voidable.
    Its pays parked keep their holds (it may still be paid). A draft, paid or void one is
    `invalid_state` before the provider is asked."""
    rec = _one_off_invoice(ctx, data.invoice_id)
    # Even let through (re-driven after a refresh or a webhook recorded it so, or paid or
    # void): its outcome was emitted then, once.
    _invoice_transition(rec, "mark_uncollectible")
    ctx.at_provider(rec)
    req = gw.MarkInvoiceUncollectible(provider_invoice_id=rec.provider_invoice_id)
    res = await _gateway(
        ctx,
        "mark_invoice_uncollectible",
        lambda: ctx.gateway.mark_invoice_uncollectible(req, idempotency_key=ctx.idem),
    )
    return _invoice_moved(ctx, rec, res)


async def refresh_invoice(ctx: HandlerContext, data: c.RefreshInvoice) -> HandlerResult:
    """A one-off invoice as its provider holds it now: paid by its customer (a sent one,
    on the provider's page) or voided there since; a draft's lines with its total (an
    update's, its answer lost; one added at the provider). A read: asked again, the provider
    answers afresh. One paid or void is final: answered `invoice.updated` from its
    record, unread, so that its `invoice.paid` or `invoice.voided` is emitted once,
    however often it is read. (Refused `invalid_state`, the webhook's refresh queued
    behind paystream's own pay or void, the echo read before its outcome was recorded,
    was a `command.rejected` of a command the tenant never sent: review h81rb F1.)"""
    rec = _one_off_invoice(ctx, data.invoice_id)
    if rec.status in (_INVOICE_PAID, _INVOICE_VOID):
        return HandlerResult("invoice.updated", rec, extra={"previous_status": rec.status})
    _invoice_transition(rec, "refresh")
    ctx.at_provider(rec)
    req = gw.RetrieveInvoice(provider_invoice_id=rec.provider_invoice_id)
    res = await _gateway(
        ctx,
        "retrieve_invoice",
        lambda: ctx.gateway.retrieve_invoice(req, idempotency_key=ctx.idem),
    )
    return _invoice_moved(ctx, rec, res)


# ---- tax ------------------------------------------------------------------------------

_TAX = gw.Capability.TAX
# How long a tax.calculate's answer may be named by a payment (Stripe Tax keeps a
# calculation 90 days; a payment follows its checkout's calculation within the day).
TAX_CALCULATION_TTL = timedelta(hours=24)


def _tax_supported(ctx: HandlerContext) -> None:
    """Tax refused `unsupported` for a tenant whose gateway lacks it (Square) or whose
    capabilities leave it out: what starts something taxed, before anything is asked of
    the provider or recorded (tax_rate.create; tax.calculate, though it asks no provider;
    a payment.create naming a tax_calculation_id; a subscription.create with
    tax_rate_ids). Narrowing `tax` stops taxing anew, as narrowing `payouts` stops
    payouts (review h74t). An archive needs only the provider's capability
    (gw.UNNARROWED_OPERATIONS: a stop, as a cancel is), and a create let through (the
    provider may have charged or subscribed already) is not refused for it. Not
    remembered: the tenant's setup, not the command (as _subscriptions_supported)."""
    _capability_required(ctx, _TAX, "tax rates")


def _active_rate(ctx: HandlerContext, rate_id: str) -> TaxRateRecord:
    """The tenant's tax rate ``rate_id`` (another tenant's is not found), to apply to
    something new: an archived one is refused."""
    rate = ctx.load(TaxRateRecord, rate_id)
    try:
        check_tax_rate_transition(rate.status, "apply")
    except InvalidState as exc:
        raise Rejection(RejectReason.INVALID_STATE, f"tax rate {rate.id}: {exc}") from exc
    return rate


def _applied_rates(ctx: HandlerContext, rate_ids: Sequence[str]) -> list[TaxRateRecord]:
    """A subscription's tax rates, made at the tenant's provider. One let through (the
    provider may have subscribed) takes them as they are (archived since, or not, or the
    tenant's `tax` narrowed out since)."""
    if rate_ids and not ctx.let_through:
        _tax_supported(ctx)
    rates = []
    for rate_id in rate_ids:
        rate = ctx.load(TaxRateRecord, rate_id) if ctx.let_through else _active_rate(ctx, rate_id)
        ctx.at_provider(rate)  # (its provider id means nothing at another provider)
        rates.append(rate)
    return rates


async def create_tax_rate(ctx: HandlerContext, data: c.CreateTaxRate) -> HandlerResult:
    rid = data.tax_rate_id or ctx.new_id(TaxRateRecord, "txr")
    ctx.ensure_new(TaxRateRecord, rid)
    _tax_supported(ctx)
    req = gw.CreateTaxRate(
        display_name=data.display_name,
        percentage=data.percentage,
        inclusive=data.inclusive,
        country=data.country,
        state=data.state,
        jurisdiction=data.jurisdiction,
        tax_type=data.tax_type,
        description=data.description,
        metadata=dict(data.metadata),
    )
    key = ctx.create_key("tax_rate", data.tax_rate_id)
    try:
        res = await _gateway(
            ctx, "create_tax_rate", lambda: ctx.gateway.create_tax_rate(req, idempotency_key=key)
        )
    except GatewayError as exc:
        if _chosen_id_taken(ctx, exc, data.tax_rate_id):
            raise Rejection(
                RejectReason.INVALID_STATE,
                f"tax rate id {rid} is taken at the provider by an earlier create of other "
                "parameters (refused, or still parked: `paystream dlq list`); create this "
                "rate under a new id",
            ) from exc
        raise
    rec = TaxRateRecord(
        **_base(ctx, rid),
        status="active" if res.active else "archived",
        display_name=data.display_name,
        percentage=data.percentage,
        inclusive=data.inclusive,
        country=data.country,
        state=data.state,
        jurisdiction=data.jurisdiction,
        tax_type=data.tax_type,
        description=data.description,
        metadata=dict(data.metadata),
        provider_tax_rate_id=res.provider_tax_rate_id,
    )
    return HandlerResult("tax_rate.created", rec)


async def archive_tax_rate(ctx: HandlerContext, data: c.ArchiveTaxRate) -> HandlerResult:
    rec = ctx.load(TaxRateRecord, data.tax_rate_id)
    if not ctx.let_through:
        try:
            check_tax_rate_transition(rec.status, "archive")
        except InvalidState as exc:
            raise Rejection(RejectReason.INVALID_STATE, str(exc)) from exc
    ctx.at_provider(rec)
    req = gw.ArchiveTaxRate(provider_tax_rate_id=rec.provider_tax_rate_id)
    try:
        await _gateway(
            ctx,
            "archive_tax_rate",
            lambda: ctx.gateway.archive_tax_rate(req, idempotency_key=ctx.idem),
        )
    except Rejection as refused:
        # Archived there already (in the provider's dashboard, or by this very command
        # before its answer was lost): archived here too.
        if refused.reason is not RejectReason.INVALID_STATE:
            raise
    rec.status = "archived"
    return HandlerResult("tax_rate.archived", rec)


async def calculate_tax(ctx: HandlerContext, data: c.CalculateTax) -> HandlerResult:
    """The tax on the lines by the tenant's tax rates, computed here (paystream.tax, the
    arithmetic Stripe Billing applies to the same rates): no provider is asked, so it is
    the same for every gateway, and costs no provider call on a checkout's path."""
    cid = ctx.new_id(TaxCalculationRecord, "taxcalc")
    ctx.ensure_new(TaxCalculationRecord, cid)
    _tax_supported(ctx)
    rates: dict[str, taxes.Rate] = {}
    for line in data.line_items:
        for rate_id in line.tax_rate_ids if line.tax_rate_ids is not None else ():
            rates.setdefault(rate_id, _rate(ctx, rate_id))
    for rate_id in data.tax_rate_ids or ():
        rates.setdefault(rate_id, _rate(ctx, rate_id))
    lines = [
        taxes.Line(
            amount=line.amount,
            quantity=line.quantity,
            rates=[
                rates[r]
                for r in (line.tax_rate_ids if line.tax_rate_ids is not None else data.tax_rate_ids)
                or ()
            ],
            reference=line.reference,
        )
        for line in data.line_items
    ]
    # (each tax to the currency's chargeable increment: a KWD total stays chargeable)
    calc = taxes.calculate(lines, data.currency)
    if calc.amount_total > MAX_MINOR_AMOUNT:
        raise Rejection(
            RejectReason.VALIDATION_ERROR,
            f"the amount_total {calc.amount_total} is more than a payment may be",
        )
    rec = TaxCalculationRecord(
        **_base(ctx, cid),
        currency=data.currency,
        line_items=[
            {
                "reference": r.reference,
                "amount": r.amount,
                "quantity": r.quantity,
                "taxable_amount": r.taxable_amount,
                "amount_tax": r.amount_tax,
                "amount_total": r.amount_total,
                "taxes": [
                    {
                        "tax_rate_id": t.tax_rate_id,
                        "percentage": t.percentage,
                        "inclusive": t.inclusive,
                        "taxable_amount": t.taxable_amount,
                        "amount": t.amount,
                    }
                    for t in r.taxes
                ],
            }
            for r in calc.lines
        ],
        amount_subtotal=calc.amount_subtotal,
        amount_tax=calc.amount_tax,
        amount_tax_inclusive=calc.amount_tax_inclusive,
        amount_tax_exclusive=calc.amount_tax_exclusive,
        amount_total=calc.amount_total,
        tax_by_rate=calc.tax_by_rate,
        expires_at=_calculated_at(ctx) + TAX_CALCULATION_TTL,
    )
    return HandlerResult("tax.calculated", rec)


def _calculated_at(ctx: HandlerContext) -> datetime:
    """When a calculation's day starts: the command's ``time`` (the same on every
    redelivery; one answered before is answered from its record), capped at the worker's
    clock plus the skew the tenant limits allow a record's time (limits._at:
    MAX_FUTURE_SKEW_MS). The ``time`` is the producer's: ten years ahead, it made a
    calculation payments could name for ten years, never swept (review h74h)."""
    latest = datetime.fromtimestamp(time.time() + MAX_FUTURE_SKEW_MS / 1000, UTC)
    return min(ctx.cmd.time, latest)


def _rate(ctx: HandlerContext, rate_id: str) -> taxes.Rate:
    rate = _active_rate(ctx, rate_id)
    return taxes.Rate(rate.id, taxes.parse_percentage(rate.percentage), rate.inclusive)


def _table_rates(
    rates_table: Mapping[str, Any], tenant_id: str, rate_ids: Iterable[str], *, archived_ok: bool
) -> list[taxes.Rate] | None:
    """The tenant's tax rates ``rate_ids`` as its table holds them, for the limits to
    price a command by. None if one is unknown, its percentage unreadable, or it is not
    active unless ``archived_ok`` (the handler would refuse it, or it was let through)."""
    rates = []
    for rate_id in rate_ids:
        raw = rates_table.get(entity_key(tenant_id, rate_id))
        if not isinstance(raw, Mapping) or (raw.get("status") != "active" and not archived_ok):
            return None
        try:
            percentage = taxes.parse_percentage(str(raw.get("percentage")))
        except ValueError:
            return None
        rates.append(taxes.Rate(rate_id, percentage, bool(raw.get("inclusive"))))
    return rates


def _lines_total(line_items: Iterable[Any], rates: list[taxes.Rate], currency: str) -> int:
    """Invoice lines' total with ``rates``' exclusive tax on every line (paystream.tax)."""
    items = list(line_items)
    lines = [taxes.Line(line.amount, line.quantity, rates) for line in items]
    try:
        return taxes.calculate(lines, currency).amount_total
    except ValueError:  # (a rate named twice: the command's model refuses it first)
        return sum(line.amount * line.quantity for line in items)


def subscription_charge(
    rates_table: Mapping[str, Any], tenant_id: str, data: Any, let_through: bool
) -> int | None:
    """A taxed ``subscription.create``'s per-period charge, as its invoices will carry it
    (its ``amount`` plus the exclusive tax of its ``tax_rate_ids``, paystream.tax in its
    currency), for the tenant limits to admit it by (review h74h: the pre-tax amount let
    a 19.99 + 20% subscription under a 20.00 cap). The rates are read from the tenant's
    tax rate table, local to its partition as the command is. None (the untaxed amount
    stands) for a subscription without rates, or naming one that is unknown, or archived
    unless let through: create_subscription refuses those (not_found, invalid_state) as
    it would anyway; one let through takes its rates as they are, as the handler does."""
    rate_ids = getattr(data, "tax_rate_ids", None)
    if not rate_ids:
        return None
    rates = _table_rates(rates_table, tenant_id, rate_ids, archived_ok=let_through)
    if rates is None:
        return None
    try:
        line = taxes.Line(int(data.amount), 1, rates)
        return taxes.calculate([line], str(data.currency)).amount_total
    except ValueError:  # (a rate named twice: the command's model refuses it first)
        return None


def subscription_repricing(
    subscriptions: Mapping[str, Any], tenant_id: str, data: c.UpdateSubscription
) -> Repricing | None:
    """What the tenant limits hold a ``subscription.update`` to: its new amount in the
    subscription's currency, with its tax rates (its data names neither: read from the
    subscription's table, local to its partition as the command is). None, nothing to
    check, when no amount is given or it is the recorded one, or for a subscription
    update_subscription refuses whatever the limits (unknown, or not live: not_found,
    invalid_state)."""
    if data.amount is None:
        return None
    raw = subscriptions.get(entity_key(tenant_id, data.subscription_id))
    if not isinstance(raw, Mapping) or raw.get("amount") == data.amount:
        return None
    try:
        check_subscription_transition(str(raw.get("status")), "update")
    except InvalidState:
        return None
    rates = raw.get("tax_rate_ids")
    return Repricing(data.amount, str(raw["currency"]), tuple(rates) if rates else None)


def subscription_pending_charge(
    subscriptions: Mapping[str, Any],
    rates_table: Mapping[str, Any],
    tenant_id: str,
    data: c.UpdateSubscription,
    repricing: Repricing,
) -> int:
    """What the proration lines still pending on the subscription an update names add
    to its always_invoice's invoice (which bills them with its own lines): their net as
    recorded (SubscriptionRecord.pending_proration_net), with the exclusive tax of the
    subscription's rates; 0 for none, or a net credit (it only lowers the charge)."""
    raw = subscriptions.get(entity_key(tenant_id, data.subscription_id))
    net = raw.get("pending_proration_net") if isinstance(raw, Mapping) else None
    if not isinstance(net, int) or net <= 0:
        return 0
    with_lines = repricing._replace(amount=repricing.amount + net)
    taxed = subscription_charge(rates_table, tenant_id, with_lines, True)
    alone = subscription_charge(rates_table, tenant_id, repricing, True)
    return net if taxed is None or alone is None else taxed - alone


# What a trial ended now, let through and re-driven, is held at: its subscription live
# (the trial may have ended under its key, then been recorded so by a refresh, and the
# subscription even paused since).
_TRIAL_END_LET_THROUGH = (_SUB_TRIALING.value, "active", "past_due", _SUB_PAUSED.value)


def subscription_trial_charge(
    subscriptions: Mapping[str, Any],
    tenant_id: str,
    data: c.UpdateSubscription,
    let_through: bool = False,
) -> ProrationCharge | None:
    """What the tenant limits hold a ``subscription.update`` ending its trial now
    (``trial_end: "now"``) to: its first period's charge, as a ``subscription.create``
    without a trial is held (its amount, the new one if given, in its currency, with the
    exclusive tax of its rates: to ``max_payment_amount``, held against the day's volume
    and counted at what its invoice was paid), charged now under the update's key. None,
    nothing to hold, for any other update, or a subscription update_subscription refuses
    it for whatever the limits (unknown, or not recorded trialing: invalid_state). One
    ``let_through`` (parked, re-driven) is held while its subscription is live, trialing
    or not: the provider may have ended the trial under its key (charged), and a
    refresh recorded it since (active), which the handler does not refuse; paused since
    too (a pause of the active one: still live, its charge made all the same; review
    h82x)."""
    if data.trial_end != "now":
        return None
    raw = subscriptions.get(entity_key(tenant_id, data.subscription_id))
    held = _TRIAL_END_LET_THROUGH if let_through else (_SUB_TRIALING.value,)
    if not isinstance(raw, Mapping) or raw.get("status") not in held:
        return None
    rates = raw.get("tax_rate_ids")
    amount = data.amount if data.amount is not None else int(raw["amount"])
    return ProrationCharge(amount, str(raw["currency"]), tuple(rates) if rates else None)


# Providers whose resume charges a new period at once (the gateways' resume_subscription:
# Paddle's start_new_billing_period). Stripe's and the simulator's charge nothing then.
RESUME_CHARGES_NOW = frozenset({"paddle"})


def subscription_resume_charge(
    subscriptions: Mapping[str, Any],
    tenant_id: str,
    data: c.ResumeSubscription,
    let_through: bool = False,
) -> ProrationCharge | None:
    """What the tenant limits hold a ``subscription.resume`` to where its provider
    charges a new period at the resume (RESUME_CHARGES_NOW): a period's charge of the
    subscription's amount with its tax rates, as an always_invoice's (a ProrationCharge:
    counted at what its invoice was paid). None, nothing held, elsewhere, or for one
    resume_subscription refuses whatever the limits (unknown, not paused). One
    ``let_through`` (parked, re-driven) is held while its subscription is live, paused or
    not: its provider may have resumed it (charged), and a refresh (a webhook's)
    recorded it since (active), which the handler does not refuse (review h82re M4)."""
    raw = subscriptions.get(entity_key(tenant_id, data.subscription_id))
    if not isinstance(raw, Mapping) or raw.get("provider") not in RESUME_CHARGES_NOW:
        return None
    held = (_SUB_PAUSED.value, "active", "past_due") if let_through else (_SUB_PAUSED.value,)
    if raw.get("status") not in held:
        return None
    rates = raw.get("tax_rate_ids")
    return ProrationCharge(
        int(raw["amount"]), str(raw["currency"]), tuple(rates) if rates else None
    )


def subscription_trialing(
    subscriptions: Mapping[str, Any], tenant_id: str, data: c.UpdateSubscription
) -> bool:
    """Is the subscription an update names recorded trialing, its trial_end ahead? Its
    price change bills nothing now (its first invoice is at the new price). A record may
    be stale (the trial ended at the provider, unread): past its trial_end it is not."""
    raw = subscriptions.get(entity_key(tenant_id, data.subscription_id))
    if not isinstance(raw, Mapping) or raw.get("status") != "trialing":
        return False
    end = raw.get("trial_end")
    if isinstance(end, str):
        end = datetime.fromisoformat(end)
    return isinstance(end, datetime) and end > datetime.now(UTC)


# ---- connected accounts (Stripe Connect) ----------------------------------------------

_CONNECTED_ACCOUNTS = gw.Capability.CONNECTED_ACCOUNTS

# ---- transfers (separate charges and transfers) ---------------------------------------


def _transfer_source(ctx: HandlerContext, data: c.CreateTransfer) -> PaymentRecord | None:
    """The tenant's payment a transfer's funds come from (Stripe's source_transaction):
    another tenant's or none `not_found`; one not succeeded, or a destination charge
    (its funds went to its account already), `invalid_state`; another currency, or more
    than is left of it (captured, less refunded, less transferred from it already),
    `validation_error`. All before any call. One let through (the provider may have
    transferred) is not refused for what changed since: the provider decides."""
    if data.payment_id is None:
        return None
    payment = ctx.load(PaymentRecord, data.payment_id)
    ctx.at_provider(payment)
    if ctx.let_through:
        return payment
    if payment.connected_account_id is not None:
        raise Rejection(
            RejectReason.INVALID_STATE,
            f"payment {payment.id} is a destination charge: its funds went to connected "
            f"account {payment.connected_account_id} when captured",
            remember=False,
        )
    if payment.status != _SUCCEEDED_STATUS:
        raise Rejection(
            RejectReason.INVALID_STATE,
            f"payment {payment.id} is {payment.status}: a transfer's source payment must "
            "have succeeded (captured)",
            remember=False,
        )
    if payment.currency != data.currency:
        raise Rejection(
            RejectReason.VALIDATION_ERROR,
            f"payment {payment.id} is in {payment.currency}, not {data.currency}",
            remember=False,
        )
    lost, dispute_status = _disputed_away(ctx, payment)
    left = _transferable(payment, lost)
    if data.amount > left:
        charged_back = (
            f"less {format_minor(lost, payment.currency)} "
            + (
                "charged back (dispute lost), "
                if dispute_status == gw.DisputeStatus.LOST
                else f"withdrawn by its open dispute ({dispute_status}), "
            )
            if lost
            else ""
        )
        raise Rejection(
            RejectReason.VALIDATION_ERROR,
            f"transfer {format_minor(data.amount, data.currency)} is more than is left of "
            f"payment {payment.id} ({format_minor(left, payment.currency)}: captured, less "
            f"refunded, {charged_back}less transferred from it)",
            remember=False,
        )
    return payment


# The dispute statuses whose amount the platform no longer holds: Stripe withdraws the
# disputed amount from the balance when a dispute opens (its "Chargeback withdrawal"
# balance transaction, charge.dispute.funds_withdrawn) and reinstates it only if won.
# (Stripe's inquiries, warning_*, withdraw nothing, but paystream reads them as these
# two: held back too, until the dispute closes; the safe side for money.)
_DISPUTE_WITHDRAWN = frozenset(
    {gw.DisputeStatus.NEEDS_RESPONSE, gw.DisputeStatus.UNDER_REVIEW, gw.DisputeStatus.LOST}
)


def _disputed_away(ctx: HandlerContext, payment: PaymentRecord) -> tuple[int, str | None]:
    """What a dispute of ``payment`` took from the platform (the dispute it names, as a
    refund's check reads it: _refund_allowed_by_dispute), and its status: lost (the
    cardholder has that money), or open (withdrawn while it is decided: a transfer of it
    would move money the platform does not hold; review h80r F1). 0 for none, or won."""
    if payment.dispute_id is None:
        return 0, None
    raw = ctx.tables.disputes.get(entity_key(ctx.cmd.tenant_id, payment.dispute_id))
    if raw is None or raw.get("status") not in _DISPUTE_WITHDRAWN:
        return 0, None
    return int(raw.get("amount") or 0), str(raw["status"])


def _transferable(payment: PaymentRecord, lost: int = 0) -> int:
    """Captured, less refunded, less charged back (``lost``), less transferred."""
    return max(
        0,
        payment.amount_captured
        - payment.amount_refunded
        - lost
        - (payment.amount_transferred or 0),
    )


async def create_transfer(ctx: HandlerContext, data: c.CreateTransfer) -> HandlerResult:
    tid = data.transfer_id or ctx.new_id(TransferRecord, "tr")
    ctx.ensure_new(TransferRecord, tid)
    destination = _destination(ctx, data.connected_account_id, "transfers", "a transfer")
    payment = _transfer_source(ctx, data)
    req = gw.CreateTransfer(
        amount=Money(amount=data.amount, currency=data.currency),
        destination_account=destination,
        source_payment_id=None if payment is None else payment.provider_payment_id,
        transfer_group=data.transfer_group,
        description=data.description,
        # Named at a provider that sends webhooks (its transfer.* events find the
        # transfer by this reference: a reversal made outside paystream), as payouts are.
        metadata=(
            gw.transfer_ref(data.metadata, ctx.cmd.tenant_id, tid)
            if _WEBHOOKS in ctx.gateway.capabilities
            else dict(data.metadata)
        ),
    )
    # As payout.create's: a chosen id is the key's scope (one transfer per id, however
    # often it is sent), else the command's.
    key = ctx.create_key("transfer", data.transfer_id)
    try:
        # One let through may have been first sent without the webhook reference
        # (gw.transfer_ref) or with it: sent again the other way, answered as it was.
        res = await _sent_either_way(
            ctx,
            "create_transfer",
            lambda r: ctx.gateway.create_transfer(r, idempotency_key=key),
            req,
            gw.transfer_ref(data.metadata, ctx.cmd.tenant_id, tid),
            data.metadata,
        )
    except GatewayError as exc:
        if _chosen_id_taken(ctx, exc, data.transfer_id):
            raise Rejection(
                RejectReason.INVALID_STATE,
                f"transfer id {tid} is taken at the provider by an earlier create of other "
                "parameters: one refused, or one still parked (`paystream dlq list`), which "
                "may have transferred; check before sending this transfer under a new id",
            ) from exc
        if exc.code is ErrorCode.BALANCE_INSUFFICIENT:
            # Nothing moved; as a payout's: the provider keeps this answer under the key.
            raise Rejection(
                RejectReason.BALANCE_INSUFFICIENT,
                f"transfer {format_minor(data.amount, data.currency)} is more than the "
                f"platform's available balance ({exc.message}); a transfer id refused so "
                "is refused again by the provider for its idempotency window: send a new one",
            ) from exc
        raise
    rec = TransferRecord(
        **_base(ctx, tid),
        status=transfer_status(res.amount.amount, res.amount_reversed),
        amount=res.amount.amount,
        currency=res.amount.currency,
        amount_reversed=res.amount_reversed,
        connected_account_id=data.connected_account_id,
        payment_id=data.payment_id,
        transfer_group=res.transfer_group,
        provider_transfer_id=res.provider_transfer_id,
        description=data.description,
        metadata=dict(data.metadata),
    )
    if payment is None:
        return HandlerResult("transfer.created", rec)
    payment.amount_transferred = (payment.amount_transferred or 0) + rec.amount
    return HandlerResult("transfer.created", rec, [payment])


async def reverse_transfer(ctx: HandlerContext, data: c.ReverseTransfer) -> HandlerResult:
    """All (``amount`` left out) or part of a transfer back from its connected account:
    never more than is left (`validation_error`); one reversed entirely `invalid_state`.
    Its source payment, if any, may give what came back to a new transfer."""
    # (Loaded first: its own redelivery is answered from the transfer's memory, whatever
    # the tenant's gateway is now.)
    rec = ctx.load(TransferRecord, data.transfer_id)
    _capability_required(ctx, _CONNECTED_ACCOUNTS, "transfers (connected accounts)")
    ctx.at_provider(rec)
    left = rec.amount - rec.amount_reversed
    if not ctx.let_through:
        if left <= 0:
            raise Rejection(
                RejectReason.INVALID_STATE,
                f"transfer {rec.id} is reversed: nothing is left of it",
                remember=False,
            )
        if data.amount is not None and data.amount > left:
            raise Rejection(
                RejectReason.VALIDATION_ERROR,
                f"reversal {format_minor(data.amount, rec.currency)} is more than is left "
                f"of transfer {rec.id} ({format_minor(left, rec.currency)})",
                remember=False,
            )
    req = gw.ReverseTransfer(
        provider_transfer_id=rec.provider_transfer_id,
        amount=data.amount,
        metadata=dict(data.metadata),
    )
    res = await _gateway(
        ctx, "reverse_transfer", lambda: ctx.gateway.reverse_transfer(req, idempotency_key=ctx.idem)
    )
    previous = rec.status
    return _transfer_reversed(ctx, rec, previous, _take_transfer(ctx, rec, res))


def _take_transfer(ctx: HandlerContext, rec: TransferRecord, res: gw.TransferResult) -> int:
    """The provider's answer about ``rec``: what it says is reversed of it now (by a
    reverse, or outside paystream), never less than recorded (one let through is
    answered under its key as it was then: the simulator's cached answer, before
    reversals recorded since). Returns what grew since the record
    (``amount_reversed_now``): counted from the record, so a reversal is learnt once
    however often it is read (nothing grown: 0, a let-through reverse's answer)."""
    reversed_before = rec.amount_reversed
    reversed_now = max(rec.amount_reversed, res.amount_reversed)
    status = transfer_status(res.amount.amount, reversed_now)
    if status != rec.status:
        try:
            check_transfer_move(rec.status, status)
        except InvalidState as exc:
            raise Rejection(
                RejectReason.INVALID_STATE,
                f"transfer {rec.id}: {exc} ({ctx.gateway.provider}'s answer)",
                remember=False,
            ) from exc
    rec.status, rec.amount_reversed = status, reversed_now
    return max(0, rec.amount_reversed - reversed_before)


def _transfer_reversed(
    ctx: HandlerContext, rec: TransferRecord, previous: str, back: int
) -> HandlerResult:
    """`transfer.reversed` of ``rec`` (``previous``, its status before the answer was
    taken), ``back`` given back to its payment's ``amount_transferred``."""
    extra = {"previous_status": previous, "amount_reversed_now": back}
    if rec.payment_id is None:
        return HandlerResult("transfer.reversed", rec, extra=extra)
    payment = ctx.load_kept(PaymentRecord, rec.payment_id)
    if payment is None:  # (gone past retention: the transfer alone)
        return HandlerResult("transfer.reversed", rec, extra=extra)
    payment.amount_transferred = max(0, (payment.amount_transferred or 0) - back)
    return HandlerResult("transfer.reversed", rec, [payment], extra=extra)


async def refresh_transfer(ctx: HandlerContext, data: c.RefreshTransfer) -> HandlerResult:
    """The transfer as its provider holds it now: reversed since outside paystream too
    (the provider's dashboard; Stripe recovering a connected account's negative balance).
    What was reversed since is `transfer.reversed`, as a transfer.reverse's (its payment
    may refund and transfer it again); nothing, `transfer.updated` (its payment unread).
    A read: asked again, the provider answers afresh, and what it learnt is emitted once
    (counted from the record). One reversed entirely is final: answered
    `transfer.updated` from its record, unread (refused `invalid_state`, the webhook's
    refresh queued behind paystream's own transfer.reverse of all of it, the echo read
    before its outcome was recorded, was a `command.rejected` of a command the tenant
    never sent: as refresh_payout's). Needs only the provider's capability
    (gw.UNNARROWED_OPERATIONS), as a connected account's refresh."""
    rec = ctx.load(TransferRecord, data.transfer_id)
    if rec.status == gw.TransferStatus.REVERSED.value:
        return HandlerResult("transfer.updated", rec, extra={"previous_status": rec.status})
    ctx.at_provider(rec)
    req = gw.RetrieveTransfer(provider_transfer_id=rec.provider_transfer_id)
    res = await _gateway(
        ctx,
        "retrieve_transfer",
        lambda: ctx.gateway.retrieve_transfer(req, idempotency_key=ctx.idem),
    )
    previous = rec.status
    back = _take_transfer(ctx, rec, res)
    if back == 0:
        return HandlerResult("transfer.updated", rec, extra={"previous_status": previous})
    return _transfer_reversed(ctx, rec, previous, back)


def _connected_accounts_supported(ctx: HandlerContext) -> None:
    """A connected account's create or onboarding link: `unsupported` before anything is
    asked of the provider, for a tenant whose gateway lacks connected accounts (Square,
    Paddle) or whose capabilities leave them out. Not remembered: the tenant's setup."""
    _capability_required(ctx, _CONNECTED_ACCOUNTS, "connected accounts")


def _take_account(rec: ConnectedAccountRecord, res: gw.ConnectedAccountResult) -> None:
    """The provider's answer, its status derived from its flags and the account's status
    (state_machines.connected_account_status): always a move the account may make, so a
    read is never refused, a webhook's refresh included. (Once refused as a "stale read",
    a custom account disabled after it was enabled stayed enabled here: review h78m F1.)"""
    status = connected_account_status(
        res.charges_enabled,
        res.payouts_enabled,
        res.details_submitted,
        res.disabled_reason,
        was=rec.status,
        takes_charges=account_takes_charges(rec.capabilities),
    )
    rec.status = status
    rec.charges_enabled, rec.payouts_enabled = res.charges_enabled, res.payouts_enabled
    rec.details_submitted = res.details_submitted
    rec.currently_due = list(res.currently_due)
    rec.disabled_reason = res.disabled_reason


async def create_connected_account(
    ctx: HandlerContext, data: c.CreateConnectedAccount
) -> HandlerResult:
    aid = data.connected_account_id or ctx.new_id(ConnectedAccountRecord, "ca")
    ctx.ensure_new(ConnectedAccountRecord, aid)
    _connected_accounts_supported(ctx)
    req = gw.CreateConnectedAccount(
        type=gw.ConnectedAccountType(data.type.value),
        country=data.country,
        email=data.email,
        business_type=data.business_type,
        capabilities=tuple(data.capabilities),
        # Named at a provider that sends webhooks (its account.updated finds the account
        # by this reference), as payouts are.
        metadata=(
            gw.connected_account_ref(data.metadata, ctx.cmd.tenant_id, aid)
            if _WEBHOOKS in ctx.gateway.capabilities
            else dict(data.metadata)
        ),
    )
    # As payout.create's: a chosen id is the key's scope (one account per id, however
    # often it is sent), else the command's.
    key = ctx.create_key("connected_account", data.connected_account_id)
    try:
        res = await _gateway(
            ctx,
            "create_connected_account",
            lambda: ctx.gateway.create_connected_account(req, idempotency_key=key),
        )
    except GatewayError as exc:
        if _chosen_id_taken(ctx, exc, data.connected_account_id):
            raise Rejection(
                RejectReason.INVALID_STATE,
                f"connected account id {aid} is taken at the provider by an earlier create "
                "of other parameters (refused, or still parked: `paystream dlq list`), "
                "which may have made an account; check before sending it under a new id",
            ) from exc
        raise
    rec = ConnectedAccountRecord(
        **_base(ctx, aid),
        status="pending",
        type=res.type,
        country=res.country or data.country,
        business_type=data.business_type,
        capabilities=list(data.capabilities),
        metadata=dict(data.metadata),
        provider_account_id=res.provider_account_id,
    )
    _take_account(rec, res)
    return HandlerResult("connected_account.created", rec)


async def create_onboarding_link(ctx: HandlerContext, data: c.CreateAccountLink) -> HandlerResult:
    """An onboarding link for the account's holder. Its URL is a bearer credential: in
    this command's outcome only (HandlerResult.unkept), never in a table, the ledger or
    a log. A replay of the command (a redelivery, the same id sent again, a new id under
    the same idempotency key) is answered from what was kept: ``url`` null; send a new
    command id and idempotency key for a new link (the command lookup says so: tables/
    commands_view.LINK_NOT_KEPT). (Making a
    new link on a replay would hand a live credential to whoever repeats an id, once per
    repeat, and give one command two answers.)"""
    _connected_accounts_supported(ctx)
    rec = ctx.load(ConnectedAccountRecord, data.connected_account_id)
    if rec.status == "rejected":
        raise Rejection(
            RejectReason.INVALID_STATE,
            f"connected account {rec.id} is rejected: it cannot be onboarded",
        )
    ctx.at_provider(rec)
    req = gw.CreateAccountLink(
        provider_account_id=rec.provider_account_id,
        refresh_url=data.refresh_url,
        return_url=data.return_url,
    )
    res = await _gateway(
        ctx,
        "create_account_link",
        lambda: ctx.gateway.create_account_link(req, idempotency_key=ctx.idem),
    )
    if res.expires_at.timestamp() <= time.time():
        # The provider's answer kept under the key from an earlier try (a parked command
        # re-driven later): expired. A link changes nothing at the provider, so a new one
        # is asked for under a key of this attempt's own.
        fresh = f"{ctx.idem}:{int(time.time())}"
        res = await _gateway(
            ctx,
            "create_account_link",
            lambda: ctx.gateway.create_account_link(req, idempotency_key=fresh),
        )
    return HandlerResult(
        "connected_account.onboarding_link_created",
        extra={
            "connected_account_id": rec.id,
            "url": None,
            "expires_at": res.expires_at.isoformat(),
        },
        unkept={"url": res.url},
    )


async def refresh_connected_account(
    ctx: HandlerContext, data: c.RefreshConnectedAccount
) -> HandlerResult:
    """The account as its provider holds it now: enabled, restricted or rejected since,
    and what its holder must still give. A read: asked again, it answers afresh. A
    rejected one is final: answered `connected_account.updated` from its record, unread
    (refused `invalid_state`, the second of several ``account.updated`` events queued
    while it was not rejected here was a `command.rejected` of a command the tenant never
    sent: as refresh_payout's). Needs only the provider's capability
    (gw.UNNARROWED_OPERATIONS: an account made stays the tenant's to read back)."""
    rec = ctx.load(ConnectedAccountRecord, data.connected_account_id)
    if rec.status == "rejected":
        return HandlerResult(
            "connected_account.updated", rec, extra={"previous_status": rec.status}
        )
    ctx.at_provider(rec)
    req = gw.RetrieveConnectedAccount(provider_account_id=rec.provider_account_id)
    res = await _gateway(
        ctx,
        "retrieve_connected_account",
        lambda: ctx.gateway.retrieve_connected_account(req, idempotency_key=ctx.idem),
    )
    previous = rec.status
    _take_account(rec, res)
    return HandlerResult("connected_account.updated", rec, extra={"previous_status": previous})


def invoice_total(
    rates_table: Mapping[str, Any], tenant_id: str, data: c.CreateInvoice
) -> InvoiceTotal:
    """What the tenant limits hold an ``invoice.create`` to: its total with its tax
    rates' exclusive tax, as its provider will bill it (paystream.tax, every rate on
    every line), in its currency. The rates are read from the tenant's tax rate table
    (local to its partition, as the command is); one unknown or archived, which
    create_invoice refuses, leaves the untaxed total, as subscription_charge does."""
    rate_ids = data.tax_rate_ids or ()
    rates = _table_rates(rates_table, tenant_id, rate_ids, archived_ok=False) or []
    return InvoiceTotal(_lines_total(data.line_items, rates, data.currency), data.currency)


def invoice_update_total(
    invoices: Mapping[str, Any],
    rates_table: Mapping[str, Any],
    tenant_id: str,
    data: c.UpdateInvoice,
) -> InvoiceTotal | None:
    """What the tenant limits hold an ``invoice.update`` replacing a draft's lines to:
    its new total with its rates' exclusive tax, in the invoice's currency, as an
    ``invoice.create``'s (:func:`invoice_total`). Its rates are the invoice's, as they are
    (archived since or not: its provider bills them). None (nothing checked) for an
    update keeping the lines, or of an invoice update_invoice refuses whatever the
    limits: unknown here, a subscription's, not a draft."""
    raw = invoices.get(entity_key(tenant_id, data.invoice_id))
    if (
        data.line_items is None
        or not isinstance(raw, Mapping)
        or raw.get("subscription_id") is not None
        or raw.get("status") not in INVOICE_TRANSITIONS["update"]
    ):
        return None
    currency = str(raw.get("currency"))
    rate_ids = raw.get("tax_rate_ids") or ()
    rates = _table_rates(rates_table, tenant_id, rate_ids, archived_ok=True) or []
    return InvoiceTotal(_lines_total(data.line_items, rates, currency), currency)


def invoice_charge(
    invoices: Mapping[str, Any], tenant_id: str, data: c.PayInvoice
) -> InvoiceCharge:
    """What the tenant limits hold an ``invoice.pay`` to: its one-off invoice's amount
    due and currency, read from the invoice's table (local to its partition, as the
    command is). Nothing (amount 0) for an invoice pay_invoice refuses whatever the
    limits: unknown here, a subscription's, or not payable (a draft, paid, void; an
    uncollectible one is payable, as an open one)."""
    raw = invoices.get(entity_key(tenant_id, data.invoice_id))
    if (
        not isinstance(raw, Mapping)
        or raw.get("subscription_id") is not None
        or raw.get("status") not in INVOICE_TRANSITIONS["pay"]
    ):
        return InvoiceCharge(0, "")
    return InvoiceCharge(int(raw.get("amount") or 0), str(raw.get("currency")), data.invoice_id)


HANDLERS: dict[str, Handler] = {
    "customer.create": create_customer,
    "customer.update": update_customer,
    "customer.delete": delete_customer,
    "customer.erase": erase_customer,
    "customer.export": export_customer,
    "payment_method.attach": attach_payment_method,
    "payment_method.detach": detach_payment_method,
    "payment.create": create_payment,
    "payment.capture": capture_payment,
    "payment.cancel": cancel_payment,
    "payment.refresh": refresh_payment,
    "refund.create": create_refund,
    "refund.refresh": refresh_refund,
    "dispute.submit_evidence": submit_dispute_evidence,
    "dispute.accept": accept_dispute,
    "subscription.create": create_subscription,
    "subscription.cancel": cancel_subscription,
    "subscription.update": update_subscription,
    "subscription.pause": pause_subscription,
    "subscription.resume": resume_subscription,
    "subscription.refresh": refresh_subscription,
    "payout.create": create_payout,
    "payout.cancel": cancel_payout,
    "payout.refresh": refresh_payout,
    "balance.retrieve": retrieve_balance,
    "invoice.create": create_invoice,
    "invoice.update": update_invoice,
    "invoice.finalize": finalize_invoice,
    "invoice.pay": pay_invoice,
    "invoice.void": void_invoice,
    "invoice.mark_uncollectible": mark_invoice_uncollectible,
    "invoice.refresh": refresh_invoice,
    "tax_rate.create": create_tax_rate,
    "tax_rate.archive": archive_tax_rate,
    "tax.calculate": calculate_tax,
    "connected_account.create": create_connected_account,
    "connected_account.onboarding_link": create_onboarding_link,
    "connected_account.refresh": refresh_connected_account,
    "transfer.create": create_transfer,
    "transfer.reverse": reverse_transfer,
    "transfer.refresh": refresh_transfer,
}

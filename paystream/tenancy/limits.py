"""Per-tenant rate limits and payment quotas, enforced by the command agent.

A tenant's registry record may carry :class:`TenantLimits`:

* ``commands_per_second`` / ``burst``: a token bucket over the tenant's commands. Over
  it, a command is rejected ``rate_limited`` with ``retry_after_ms`` (as a provider
  answers HTTP 429); nothing is remembered under its idempotency key, so the same
  command sent again later goes through.
* ``max_payment_amount``: the largest single ``payment.create`` per currency, and the
  largest per-period charge of a ``subscription.create`` (each period charges it): its
  ``amount`` plus the exclusive tax of its ``tax_rate_ids`` (the caller gives that
  ``amount``: paystream.agents.handlers.subscription_charge reads the rates from the
  tenant's tax rate table; an unknown or archived rate, which the handler refuses, leaves
  the untaxed amount).
* ``daily_payment_volume``: per currency and UTC day, the sum of payments that were
  authorised, captured or are awaiting authentication, counted from when the limit is
  set, plus the payments admitted and not yet answered (in flight, or parked after the
  provider failed): each *holds* its amount under its idempotency key until its outcome
  counts it or releases it (against its day and the next: it is counted on the day it
  is answered), so payments parked during an outage and re-driven later cannot take the
  day over its quota. At most :data:`MAX_HOLDS` payments hold at once (``limit:
  pending_payments`` past it; transfers and payouts have rooms of their own, below).
  Over either limit, the command is rejected ``quota_exceeded`` (``limit`` names
  which). A
  ``subscription.create`` is admitted as a payment of its first charge (its first
  invoice, taxed as above; none during a free trial): held, counted when
  ``subscription.created`` says it was paid, released otherwise. Renewals are billed
  by the provider on its own clock: paystream admits no command for them, and they are
  not counted.
* A ``subscription.update`` that changes the amount is held to ``max_payment_amount``
  (and ``only_listed_currencies``) as a ``subscription.create`` of its new per-period
  charge in the subscription's currency is: its data carries no currency, so the
  pipeline reads the subscription from its table and passes a :class:`Repricing`. It
  charges nothing now (the new amount is billed from the next period on): nothing held
  or counted toward the day. An update that leaves the amount as it is passes
  unchecked (a cap lowered since does not stop a payment method or cancel change).
  One ending its subscription's trial now (``trial_end: "now"``) charges its first
  period now: admitted as a :class:`ProrationCharge` of that period's charge (nothing
  pending), held and counted as a ``subscription.create``'s first charge without a
  trial is (handlers.subscription_trial_charge); one moving the trial's end charges
  nothing now.
* A ``subscription.resume`` at a provider whose resume charges a new period at once
  (Paddle: handlers.RESUME_CHARGES_NOW) is admitted as a :class:`ProrationCharge` of
  the subscription's per-period charge (handlers.subscription_resume_charge), counted
  at its invoice paid or being collected; elsewhere it charges nothing and passes
  unchecked.
* An ``invoice.pay`` is admitted as a payment of its invoice's amount due in its
  currency (its data names neither: the pipeline reads the invoice from its table and
  passes an :class:`InvoiceCharge`): held to ``max_payment_amount`` and
  ``only_listed_currencies``, held against the day's volume, counted when
  ``invoice.paid`` says it was paid, released otherwise. An invoice learnt paid by
  another command (``invoice.refresh``: paid on the provider's page, or by a pay whose
  answer was lost, parked) is counted then, once, and the holds of its pays released
  (:meth:`LimitGate.count_learnt`); one a pay paid releases the holds of its other
  pays, parked, as that pay is counted (:meth:`LimitGate.release_invoice_holds`), and
  so does one learnt void (:func:`learnt_void`), counting nothing.
* An ``invoice.create`` is held to ``max_payment_amount`` and ``only_listed_currencies``
  as a payment of its total with its exclusive tax (an :class:`InvoiceTotal`, worked out
  by the pipeline): a ``send_invoice`` invoice is paid by its customer on the provider's
  page, never by an ``invoice.pay``. It charges nothing now: nothing held or counted.
* ``only_listed_currencies``: the money limits name currencies, with no conversion; with
  this, a payment in a currency neither names is rejected ``quota_exceeded`` (``limit:
  currencies``) instead of moving unlimited.
* ``daily_transfer_volume``: per currency and UTC day, the sum of ``transfer.create``
  amounts made (``transfer.created``), held and counted exactly as the daily payment
  volume is (a hold under the command's key until its outcome counts or releases it;
  a redelivery or a replay counts once), in a volume of its own: a transfer never
  counts toward ``daily_payment_volume``, nor a payment toward it (the state keys a
  transfer's volume and holds by :data:`TRANSFER_VOLUME` + currency). A reversal gives
  nothing back, as a refund gives nothing back to the day's payments: the day took the
  exposure on. With ``only_listed_currencies`` and a transfer volume set, a transfer in a
  currency it does not name is rejected ``limit: currencies``. Unset: transfers held to
  the rate limit only, as before.
* ``daily_payout_volume``: per currency and UTC day, the sum of ``payout.create``
  amounts paid out (answered ``payout.created``, or ``payout.paid`` at once), held and
  counted as the transfers' volume is, in a volume of its own (:data:`PAYOUT_VOLUME` +
  currency). A payout that fails or is canceled after it was created gives nothing back
  (the day took the exposure on); one the provider answers ``payout.failed`` or
  ``payout.canceled`` at its create moved nothing, and is not counted (as a declined
  payment). ``only_listed_currencies`` with a payout volume set refuses a payout in a
  currency it does not name. Unset: payouts held to the rate limit only.

Both are checked by one function (:func:`_outflow_quota`), parametrized by an
:class:`_Outflow` (:data:`_OUTFLOWS`): the bucket prefix, the limit and the wording.
Each kind (payments, transfers, payouts) has a room of its own for :data:`MAX_HOLDS`
holds not yet answered (``limit: pending_payments``, ``pending_transfers``,
``pending_payouts``): one shared room let a flood of parked payouts refuse the
customers' payments (review h80r L2).

**Time** is the command record's Kafka timestamp, not the worker's clock: a worker that
catches up on a backlog must not reject commands that were sent at an allowed pace.
Timestamps are taken as non-decreasing per tenant (an older one refills nothing) and
capped at the worker's clock plus :data:`MAX_FUTURE_SKEW_MS` (a future one would refill
the bucket). Token arithmetic is in integer milli-tokens: no floats.

**Redelivery.** A crash may persist any subset of a batch's writes, and the batch's
commands come again with the same offsets. So the state (one record per tenant in the
``limits`` table, on the tenant's partition) keeps each recent record's decision, by
offset and command id: a redelivered record gets its decision again (the same rejection
event, or admission without spending again) and its payment volume is counted once,
whenever its payment first succeeds. A rejection is kept in full (reason, message and
data, as the release before kept it and can read it) while the state keeps fewer than
:data:`FULL_REFUSALS` so; past that, as what made it (its builder in :data:`_REFUSALS`
and the arguments), not as its message, and made again from that: the state, all of it
kept however long a commit stalls, stays under :data:`LIMITS_RECORD_MAX_BYTES`. The
caller accounts records that an idempotency record answers
(:meth:`LimitGate.account_answered`), so the state cannot fall behind the idempotency
table. A command that was admitted before (parked, or in flight at a crash)
is let through again without checks: the provider may already have acted on it.
A command paystream sends itself (a webhook's sealed refresh: paystream/origin_seal.py) is
``exempt``: neither checked nor spending a token, on every delivery alike.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import time
from collections.abc import Callable, Collection, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator

from paystream.money import MAX_MINOR_AMOUNT, format_minor, normalise_currency

__all__ = [
    "FULL_REFUSALS",
    "HOLDING_LIMITS",
    "LIMITS_RECORD_MAX_BYTES",
    "LIMIT_NAMES",
    "MAX_FUTURE_SKEW_MS",
    "MAX_HOLDS",
    "MONEY_COMMANDS",
    "OUTFLOW_COMMANDS",
    "OUTFLOW_VOLUMES",
    "PAYOUT_COMMANDS",
    "PAYOUT_VOLUME",
    "REPLAY_MEMORY",
    "TRANSFER_COMMANDS",
    "TRANSFER_VOLUME",
    "UNREAD",
    "VOLUME_OUTCOMES",
    "Admission",
    "InvoiceCharge",
    "InvoiceTotal",
    "LimitGate",
    "LimitRejection",
    "ProrationCharge",
    "Repricing",
    "TenantLimits",
    "charge_now",
    "learnt_paid",
    "learnt_void",
    "money_command",
    "volume_command",
]

# ``stored`` not given (kept_rejection, admit): the tenant's state is read from the table.
UNREAD: Any = object()

# How far past the worker's clock a record timestamp is believed.
MAX_FUTURE_SKEW_MS = 60_000
# Decisions kept per tenant for redeliveries (the oldest quarter goes when full). Only
# uncommitted records come again (a batch is at most 500 commands and offsets are
# committed every second); a record whose decision was dropped is decided afresh.
REPLAY_MEMORY = 2_048
# Outcomes of payment.create that count toward the daily volume.
VOLUME_OUTCOMES = frozenset(
    {
        "payment.authorized",
        "payment.succeeded",
        "payment.requires_action",
        "payment.processing",
        # (its first invoice paid; one in a trial charged nothing, and held nothing)
        "subscription.created",
        # (a first period to be paid at checkout, as payment.requires_action)
        "subscription.requires_action",
        # (a one-off invoice charged by invoice.pay)
        "invoice.paid",
        # (transfer.create: counted toward ``daily_transfer_volume``, not the payments')
        "transfer.created",
        # (payout.create: toward ``daily_payout_volume``; a payout the create's answer
        # says failed or canceled moved nothing, as a declined payment)
        "payout.created",
        "payout.paid",
    }
)
# The commands admitted as payments: their amount against ``max_payment_amount``, the
# charge they make now against ``daily_payment_volume`` (see _money_of).
MONEY_COMMANDS = frozenset({"payment.create", "subscription.create", "invoice.pay"})
# The commands that move the platform's balance out, against ``daily_transfer_volume``.
TRANSFER_COMMANDS = frozenset({"transfer.create"})
# What a transfer's volume and holds are kept under in the state, before its currency:
# apart from the payments' (a currency code never has a colon).
TRANSFER_VOLUME = "transfer:"
# The commands that pay the tenant's balance out to its bank, against
# ``daily_payout_volume``; their volume and holds are kept under PAYOUT_VOLUME + currency.
PAYOUT_COMMANDS = frozenset({"payout.create"})
PAYOUT_VOLUME = "payout:"


class _Outflow(NamedTuple):
    """A command moving money out against a daily volume of its own (not a payment's):
    what its bucket is kept under, the limit (a :class:`TenantLimits` field, and the
    ``limit`` of its refusal), and how its refusal is worded."""

    prefix: str
    limit: str
    pending: str  # the ``limit`` of a refusal for too many of them not yet answered
    noun: str  # "transfer"
    verb: str  # what the tenant did with the day's volume: "moved out by transfers"

    def cap(self, limits: TenantLimits) -> dict[str, int]:
        caps: dict[str, int] = getattr(limits, self.limit)
        return caps


_OUTFLOWS = {
    "transfer.create": _Outflow(
        TRANSFER_VOLUME, "daily_transfer_volume", "pending_transfers", "transfer",
        "moved out by transfers",
    ),
    "payout.create": _Outflow(
        PAYOUT_VOLUME, "daily_payout_volume", "pending_payouts", "payout", "paid out"
    ),
}  # fmt: skip
OUTFLOW_COMMANDS = frozenset(_OUTFLOWS)
# Each outflow command's bucket prefix and limit, for the pipeline's cheap room check.
OUTFLOW_VOLUMES = {command: (o.prefix, o.limit) for command, o in _OUTFLOWS.items()}
# The outcomes of an outflow command that count toward its volume.
_OUTFLOW_MOVED = frozenset({"transfer.created", "payout.created", "payout.paid"})

_MILLI = 1000  # milli-tokens per command
# Unanswered payments (in flight, parked) one tenant may hold against its daily volume at
# once. Every admission sums them, and they live in one changelog record: an outage
# parking tens of thousands made each admission 40x slower and the record too big for
# the broker (failing its batch on every redelivery). Past it, new payments wait. As
# many transfers and as many payouts, each kind in a room of its own (a flood of one
# kind must not refuse another: review h80r L2): at most three times this in the
# record (some 290 KB of holds at the most).
MAX_HOLDS = 1_000
# The largest the tenant's state (one changelog record) may grow to, worst case: every
# kept decision and hold at its cap, every value at its longest
# (tests/tenancy/test_limits_record_size.py). As a dead letter's kept command, 768 KiB:
# what every topic paystream writes must take is 1 MiB (streams/admin.py:
# RECORD_MAX_BYTES; Kafka's default), the rest is for the key (a tenant id of up to 255
# characters) and the record's framing. Over it the broker refuses the record: the
# batch fails on every redelivery and the worker exits (commands.py: _NEVER_TAKEN), as
# does each next owner of the partition. Not the entities' 512 KiB
# (tables/changelog.py: CHANGELOG_VALUE_MAX_BYTES), at which an entity sheds old
# outcomes: none of this state may be shed (every decision of an uncommitted record,
# every hold).
LIMITS_RECORD_MAX_BYTES = 768 * 1024
# Refusals kept in full (reason, message and data: the very entry the release before
# wrote, and all it can read) while the tenant's state keeps fewer than this many so;
# past it, as what made them (``why``: :data:`_REFUSALS`). During a rolling upgrade a
# partition can move back to a worker of the release before, which dead-letters a
# redelivery it meets a ``why`` for (KeyError: a second answer, internal_error, after the
# first refusal; review h81rd M1): only a tenant refused this many times in records not
# yet committed (a flood, a stalled commit) gets ``why``s. At their longest (a currency
# refusal listing 50 codes: 774 bytes in full, 199 as ``why``) they take the worst-case
# record from 720 KB to 777 KB, under LIMITS_RECORD_MAX_BYTES
# (tests/tenancy/test_limits_record_size.py).
FULL_REFUSALS = 100


class TenantLimits(BaseModel):
    """Limits on one tenant's traffic and money movement; unset means unlimited."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    commands_per_second: StrictInt | None = Field(default=None, ge=1, le=1_000_000)
    burst: StrictInt | None = Field(default=None, ge=1, le=10_000_000)
    max_payment_amount: dict[str, StrictInt] = {}
    daily_payment_volume: dict[str, StrictInt] = {}
    # What transfer.create may move out per currency and UTC day (review h79 L5: a leaked
    # key could move the platform's whole available balance to one of its accounts).
    daily_transfer_volume: dict[str, StrictInt] = {}
    # What payout.create may pay out per currency and UTC day (a leaked key could pay
    # the whole available balance out to the bank in one day).
    daily_payout_volume: dict[str, StrictInt] = {}
    # Money limits name currencies, with no conversion: without this, a tenant capped in
    # USD could pay any amount in EUR or JPY. With it, only the currencies named move.
    only_listed_currencies: bool = False

    @field_validator(
        "max_payment_amount", "daily_payment_volume", "daily_transfer_volume", "daily_payout_volume"
    )
    @classmethod
    def _per_currency(cls, value: dict[str, int]) -> dict[str, int]:
        out: dict[str, int] = {}
        for currency, amount in value.items():
            if not 0 <= amount <= MAX_MINOR_AMOUNT * 1000:
                raise ValueError(f"{currency}: amount must be a non-negative minor-unit integer")
            code = normalise_currency(currency)
            if code in out:
                raise ValueError(f"{code} is given twice")
            out[code] = amount
        return out

    @model_validator(mode="after")
    def _burst_needs_rate(self) -> TenantLimits:
        if self.burst is not None and self.commands_per_second is None:
            raise ValueError("burst needs commands_per_second")
        return self

    @model_validator(mode="after")
    def _currencies_listed(self) -> TenantLimits:
        if self.only_listed_currencies and not self.listed_currencies:
            raise ValueError(
                "only_listed_currencies needs a max_payment_amount or daily_payment_volume"
            )
        return self

    @property
    def listed_currencies(self) -> set[str]:
        return {*self.max_payment_amount, *self.daily_payment_volume}

    @property
    def enforced(self) -> bool:
        return bool(
            self.commands_per_second
            or self.max_payment_amount
            or self.daily_payment_volume
            or self.daily_transfer_volume
            or self.daily_payout_volume
        )

    def describe(self) -> str:
        """One line for operators, amounts in major units: "100/s (burst 200) · ..."."""
        parts = []
        if self.commands_per_second is not None:
            burst = self.burst or self.commands_per_second
            parts.append(f"{self.commands_per_second}/s (burst {burst})")
        parts += [
            f"≤ {format_minor(a, c)} per payment"
            for c, a in sorted(self.max_payment_amount.items())
        ]
        parts += [
            f"≤ {format_minor(a, c)} per day" for c, a in sorted(self.daily_payment_volume.items())
        ]
        parts += [
            f"≤ {format_minor(a, c)} transferred per day"
            for c, a in sorted(self.daily_transfer_volume.items())
        ]
        parts += [
            f"≤ {format_minor(a, c)} paid out per day"
            for c, a in sorted(self.daily_payout_volume.items())
        ]
        if self.only_listed_currencies:
            parts.append(f"only {', '.join(sorted(self.listed_currencies))}")
        return " · ".join(parts) or "none"


class Repricing(NamedTuple):
    """What the limits check of a ``subscription.update`` changing its amount (in place
    of its data, which carries no currency): the new ``amount``, the subscription's
    ``currency`` and its ``tax_rate_ids`` (its per-period charge, with their exclusive
    tax, is the ``amount`` given to :meth:`LimitGate.admit`)."""

    amount: int
    currency: str
    tax_rate_ids: tuple[str, ...] | None = None


class ProrationCharge(NamedTuple):
    """What the limits hold a ``subscription.update`` with ``proration:
    always_invoice`` to: a :class:`Repricing` that also charges now (and one ending its
    trial now, ``trial_end: "now"``: its first period's charge, nothing pending). Its own net
    proration (the remaining time at the new price less the unused time at the old) is
    known only at the provider's clock, and is never more than the new per-period
    charge: that charge (with exclusive tax) is checked against ``max_payment_amount``.
    Its invoice also bills the lines still pending from an earlier create_prorations
    (``pending``: their net as recorded on the subscription, when positive, with its
    exclusive tax): the day's volume holds the new charge plus them (review h79r_e M2).
    What its proration invoice was paid is counted (:meth:`LimitGate.settle` ``moved``;
    nothing for a credit or a decline)."""

    amount: int
    currency: str
    tax_rate_ids: tuple[str, ...] | None = None
    # Its subscription's record trialing (its trial_end ahead): the change bills nothing
    # now, so nothing is held (its price still checked against the cap; review h79r_e L1).
    trialing: bool = False
    pending: int = 0


def money_command(command_type: str, data: Any) -> bool:
    """Does this command (as the limits see its data) charge now?"""
    return command_type in MONEY_COMMANDS or isinstance(data, ProrationCharge)


def volume_command(command_type: str, data: Any) -> bool:
    """Does this command hold against a daily volume (a payment's, a transfer's or a
    payout's)?"""
    return command_type in OUTFLOW_COMMANDS or money_command(command_type, data)


def _kind(bucket: str) -> str:
    """Which room a hold of ``bucket`` takes: its outflow's prefix (``transfer:``,
    ``payout:``), or "" for a payment's (a bucket that is its currency alone)."""
    return bucket[: bucket.find(":") + 1]


def _waiting(holds: Iterable[Sequence[Any]], bucket: str) -> int:
    """How many of ``holds`` are of ``bucket``'s kind (payments, transfers or payouts,
    whatever their currency): each kind's room is its own. (Counted only once the
    holds of every kind together fill one room.)"""
    kind = _kind(bucket)
    return sum(1 for h in holds if _kind(str(h[1])) == kind)


def _daily_cap(limits: TenantLimits, bucket: str) -> int | None:
    """The daily volume limit of ``bucket`` (a currency, or an outflow's prefix, as
    :data:`TRANSFER_VOLUME`, and one)."""
    for outflow in _OUTFLOWS.values():
        if bucket.startswith(outflow.prefix):
            return outflow.cap(limits).get(bucket[len(outflow.prefix) :])
    return limits.daily_payment_volume.get(bucket)


class InvoiceCharge(NamedTuple):
    """What the limits hold an ``invoice.pay`` to, in place of its data (which names no
    amount): the one-off invoice's amount due and its currency, read from its record by
    the pipeline (handlers.invoice_charge), admitted as a payment of it (cap, listed
    currencies, held and counted toward the day's volume when `invoice.paid`). ``amount``
    0: nothing the handler would charge (no such invoice here, not open, a
    subscription's): nothing checked, nothing held. ``invoice_id``: its hold names the
    invoice, released when another command learns the invoice paid and counts it
    (:meth:`LimitGate.count_learnt`)."""

    amount: int
    currency: str
    invoice_id: str = ""


class InvoiceTotal(NamedTuple):
    """What the limits hold an ``invoice.create`` to, in place of its data (its lines):
    the one-off invoice's total with its exclusive tax, in its currency
    (handlers.invoice_total). Checked as a payment of it against ``max_payment_amount``
    and ``only_listed_currencies``, as a :class:`Repricing` is: a ``send_invoice``
    invoice is paid on the provider's page, never by an ``invoice.pay`` the limits see
    (review h78o M4). It charges nothing now: nothing held or counted toward the day."""

    amount: int
    currency: str


# The data the quotas check as a price, though its command charges nothing now.
_PRICED = (Repricing, InvoiceTotal)


@dataclass(frozen=True, slots=True)
class LimitRejection:
    """A command over a limit: the rejection reason and its outcome data."""

    reason: str  # "rate_limited" | "quota_exceeded"
    message: str
    extra: dict[str, Any]
    replay: bool = False  # decided before, for this same record
    # What the state keeps of it for a redelivery (see _REFUSALS): the builder's name
    # and its arguments, from which the same builder makes this very rejection again.
    why: tuple[Any, ...] = field(default=(), compare=False)


class Admission(NamedTuple):
    """A command let through; :meth:`LimitGate.settle` counts its payment volume.

    (A NamedTuple, immutable as the frozen dataclass it was, made for every admission at
    half the cost; callers test it by ``isinstance`` and ``is not None``, as before.)"""

    tenant_id: str
    offset: int
    day: str
    currency: str | None = None  # set when its volume is to be counted
    amount: int = 0
    hold: str | None = None  # the tag its amount is held under until settled


class Record(NamedTuple):
    """Where a command record sits and when it was written, as the limits see it.

    (A NamedTuple, immutable as the frozen dataclass it was: made for every command, it
    costs half as much to make, 0.41 -> 0.19 us.)"""

    command_id: str
    partition: int
    offset: int  # -1: not read from Kafka (never a redelivery)
    timestamp_ms: int


class LimitGate:
    """Applies a tenant's limits to its commands, keeping the state in ``table``."""

    def __init__(
        self,
        table: MutableMapping[str, Any],
        clock_ms: Callable[[], int] | None = None,
        committed: Callable[[int], int] | None = None,
    ) -> None:
        """``committed(partition)``: the partition's committed offset (-1: unknown); the
        records before it are never redelivered, so their decisions are dropped."""
        self.table = table
        self._clock_ms = clock_ms or _now_ms
        self._committed = committed or (lambda partition: -1)

    @staticmethod
    def key(tenant_id: str) -> str:
        return f"{tenant_id}:limits"

    def applies(self, tenant_id: str, limits: TenantLimits) -> bool:
        """Whether :meth:`admit` has anything to do for this tenant (limits, or decisions
        kept from when it had some)."""
        return limits.enforced or self.key(tenant_id) in self.table

    def counted(self, tenant_id: str, rec: Record) -> bool:
        """Did this very record count its payment's money toward the day (its decision,
        kept until the record is committed, says so)?"""
        decided = _kept(self.table.get(self.key(tenant_id)), rec)
        return bool(decided is not None and decided.get("counted"))

    def stored(self, tenant_id: str) -> Any:
        """The tenant's state as the table holds it (None: none), for a caller that asks
        :meth:`kept_rejection` and then :meth:`admit` of one command to read it once."""
        return self.table.get(self.key(tenant_id))

    def kept_rejection(
        self, tenant_id: str, rec: Record, stored: Any = UNREAD
    ) -> LimitRejection | None:
        """The rejection this very record got before, if it did: it stands, whatever
        happened since (a retry of the same key that finished, limits removed).
        ``stored``: what :meth:`stored` just returned (nothing written since)."""
        raw = self.table.get(self.key(tenant_id)) if stored is UNREAD else stored
        decided = _kept(raw, rec)
        return None if decided is None or decided["admit"] else _replayed(decided)

    def forget_decision(self, tenant_id: str, rec: Record) -> None:
        """Drop this record's kept decision, so that it is decided again (a command the
        limits just refused turned out to have taken effect before a crash)."""
        key = self.key(tenant_id)
        raw = self.table.get(key)
        if raw is None or rec.offset < 0 or _kept(raw, rec) is None:
            return
        decided = dict(raw.get("decided") or {})
        forgotten = decided.pop(str(rec.offset))
        state = {**raw, "decided": decided}
        if forgotten.get("spent") and state.get("tokens") is not None:
            # Its rate token back: decided again, the command must not pay twice (taken
            # just now, so it fits the bucket).
            state["tokens"] = int(state["tokens"]) + _MILLI
        self.table[key] = state

    def admit(
        self,
        tenant_id: str,
        limits: TenantLimits,
        rec: Record,
        command_type: str,
        data: Any,
        *,
        admitted_before: bool = False,
        resent: bool = False,
        exempt: bool = False,
        hold_key: str | None = None,
        former_hold_key: str | None = None,
        request: str | None = None,
        stored: Any = UNREAD,
        day_ms: int | None = None,
        amount: int | None = None,
    ) -> Admission | LimitRejection | None:
        """Decide on one command; None when the tenant has no limits to apply.

        ``admitted_before``: its idempotency record says it was let through once (parked,
        or in flight at a crash): it passes unchecked, though it spends a token as any
        admission does (the state must not depend on what the idempotency table held).
        ``resent``: with ``admitted_before``, another command of that request (a new
        command id): held to the rate limit, not to the quotas.
        ``exempt``: paystream's own command (a webhook's sealed refresh: the record says
        so, the same on every delivery), neither checked nor spending the tenant's tokens.
        ``hold_key``: the command's idempotency key; an admitted payment under a daily
        volume limit holds its amount under it until :meth:`settle` (the record's command
        id stands in when none is given). ``former_hold_key``: what an older version held
        the same payment under; such a hold is carried over to ``hold_key``. ``request``:
        what the command asks (its request hash): a hold is the request's that placed it
        (see :func:`_hold_of`). ``stored``: what :meth:`stored` returned, if nothing was
        written to the table since (the state is read once for :meth:`kept_rejection` and
        this: the same object the table would give again, so the same decision).
        ``amount``: a money command's per-period charge when it is not its ``amount`` (a
        subscription's with its exclusive tax); None: its ``amount``.
        """
        key = self.key(tenant_id)
        enforced = limits.enforced  # (a property: worked out once here)
        if not enforced and key not in self.table:
            return None  # nothing to apply or answer (`in`: a tenth of a missed get)
        state = self._state(self.table.get(key) if stored is UNREAD else stored, rec)
        hold = _tag(hold_key or rec.command_id)
        owner = None if request is None else _tag(request)
        former = _former_hold(state, former_hold_key, owner)
        carried = former is not None
        if carried:
            held = dict(state["held"])
            held[hold] = held.pop(former)
            state["held"] = held
        decided = _kept(state, rec)
        if decided is not None:
            if carried:
                self.table[key] = state
            if not decided["admit"]:
                return _replayed(decided)
            mine = _hold_of(state, hold_key or rec.command_id, owner, hold)
            return Admission(tenant_id, rec.offset, decided["day"], *_volume_of(decided), mine)
        holding = not enforced and bool(_holds_of_day(state, _day(self._at(state, rec))))
        if not enforced and not (volume_command(command_type, data) and holding):
            # Limits since removed: only earlier decisions still stand, until committed.
            # (Not while payments hold against the day: one of them re-driven now is
            # admitted below, so that its answer releases its hold; review h67e. Nor is
            # the state dropped meanwhile by another command: review h67i.)
            self._forget_committed(state, rec.partition)
            if not state["decided"] and not holding:
                del self.table[key]
            return None
        at_ms = self._at(state, rec)
        # (``day_ms``: the day's time, later than the record's: its hold's day only, the
        # bucket's clock stays on the broker's times.)
        day = _day(at_ms if day_ms is None else max(at_ms, day_ms))
        hold_of_this = _hold_of(state, hold_key or rec.command_id, owner, hold)
        spent = False
        if exempt:
            # Neither checked nor spending; its time refills the bucket as any other's.
            decision = None
            _refill(state, limits, at_ms)
        elif admitted_before and resent:
            decision = _rate(state, limits, at_ms)
        elif admitted_before:
            decision = None
            _spend(state, limits, at_ms)
        else:
            decision = _rate(state, limits, at_ms)
            if decision is None:
                # A quota refusal past the rate limit keeps its token, as any command the
                # tenant sends counts toward its rate; `forget_decision` gives it back.
                spent = limits.commands_per_second is not None
                decision = _quota(state, limits, day, command_type, data, hold_of_this, amount)
        if limits.commands_per_second is None:
            state["tokens"] = None  # a rate limit set later starts with a full bucket
        state["at_ms"] = at_ms
        tag = _tag(rec.command_id)
        if isinstance(decision, LimitRejection):
            entry: dict[str, Any] = {"id": tag, "day": day, "admit": False}
            self._forget_committed(state, rec.partition)  # (counted uncommitted only)
            if decision.why and not _room_in_full(state["decided"]):
                entry["why"] = list(decision.why)  # (its builder's arguments: _REFUSALS)
            else:
                # (The keys in the order the release before wrote them: FULL_REFUSALS.)
                entry.update(reason=decision.reason, message=decision.message, extra=decision.extra)
            if spent:
                entry["spent"] = True
            self._decide(key, state, rec, entry)
            return decision
        currency: str | None = None
        charged: int | None = None
        # (Also with no daily volume set now: a hold placed while one was, a parked
        # payment's, is released when this payment is answered.)
        if money_command(command_type, data) and (limits.daily_payment_volume or state.get("held")):
            currency, charged = str(data.currency), charge_now(command_type, data, amount)
            if not charged:
                currency = None  # (a subscription's trial: nothing charged, nothing held)
            elif currency in limits.daily_payment_volume:
                state["held"] = _holds_of_day(state, day)
                state["held"][hold_of_this] = [day, currency, charged, owner]
                if isinstance(data, InvoiceCharge) and data.invoice_id:
                    # (the invoice it pays: count_learnt releases it)
                    state["held"][hold_of_this].append(_invoice_tag(data.invoice_id))
            else:
                charged = 0  # (none counted while its currency is not limited: from then)
        elif (outflow := _OUTFLOWS.get(command_type)) is not None and (
            outflow.cap(limits) or state.get("held")
        ):
            # Its own volume (TRANSFER_VOLUME / PAYOUT_VOLUME + currency); as a payment's
            # otherwise.
            currency, charged = outflow.prefix + str(data.currency), int(data.amount)
            if str(data.currency) in outflow.cap(limits):
                state["held"] = _holds_of_day(state, day)
                state["held"][hold_of_this] = [day, currency, charged, owner]
            else:
                charged = 0
        # (The keys in the order kept decisions have always had them.)
        entry = {"id": tag, "day": day, "admit": True, "counted": False,
                 "currency": currency, "amount": charged}  # fmt: skip
        self._decide(key, state, rec, entry)
        return Admission(tenant_id, rec.offset, day, currency, charged or 0, hold_of_this)

    def volume_room(self, tenant_id: str, limits: TenantLimits, currency: str, amount: int) -> bool:
        """Would a payment of ``amount`` fit the daily volume (and its kind's room for
        holds awaiting an answer) whatever the day, with every hold counted? A cheap bound:
        then :meth:`admit` cannot refuse it by either. (``currency``: a transfer's or a
        payout's is its prefix, :data:`TRANSFER_VOLUME` or :data:`PAYOUT_VOLUME`, and its
        currency.)"""
        daily = _daily_cap(limits, currency)
        if daily is None:
            return True
        state = self.table.get(self.key(tenant_id)) or {}
        held = state.get("held") or {}
        if len(held) + 1 >= MAX_HOLDS and _waiting(held.values(), currency) + 1 >= MAX_HOLDS:
            return False
        used = int((state.get("volume") or {}).get(currency, 0))
        return used + sum(int(h[2]) for h in held.values()) + amount <= daily

    def trial(self, tenant_id: str, *args: Any, **kwargs: Any) -> Admission | LimitRejection | None:
        """What :meth:`admit` (same arguments) would decide now, writing nothing: it runs
        on a copy of the tenant's state."""
        key = self.key(tenant_id)
        raw = self.table.get(key)
        scratch: dict[str, Any] = {}
        if raw is not None:
            # (admit changes these in place; the rest it replaces.)
            scratch[key] = {
                **raw,
                "decided": dict(raw.get("decided") or {}),
                "held": dict(raw.get("held") or {}),
            }
        kwargs["stored"] = UNREAD
        return LimitGate(scratch, self._clock_ms, self._committed).admit(tenant_id, *args, **kwargs)

    def settle(self, admission: Admission, outcome_type: str, moved: int | None = None) -> None:
        """An admitted payment answered: count its amount once if its outcome says money
        moved, and release what it held. Not called for a parked payment: it keeps its
        hold until it is re-driven and answered. ``moved``: what it charged, where its
        outcome type does not tell (a proration invoice's: :class:`ProrationCharge`;
        0: nothing, a credit or a decline)."""
        counts = outcome_type in VOLUME_OUTCOMES if moved is None else moved > 0
        if moved is not None:
            admission = admission._replace(amount=moved)
        if admission.currency is None:
            # Nothing held by this delivery; but one of its earlier deliveries may have
            # held (an invoice.pay parked while its invoice was open, re-driven once a
            # refresh read it paid: admitted as an InvoiceCharge of 0). Its answer
            # releases that hold, which would else stay against the day (review h78o M1).
            self._release(admission)
            return
        key = self.key(admission.tenant_id)
        state = dict(self.table.get(key) or _fresh(-1))
        held = dict(state.get("held") or {})
        released = held.pop(admission.hold, None) if admission.hold is not None else None
        if released is not None:
            state["held"] = held
        if not counts:
            if released is not None:
                self.table[key] = state
            return
        decided = state["decided"].get(str(admission.offset)) if admission.offset >= 0 else None
        if decided is not None:
            if decided.get("counted"):
                if released is not None:
                    self.table[key] = state
                return
            decided["counted"] = True
        _add_volume(state, admission.day, admission.currency, admission.amount)
        self.table[key] = state

    def count_learnt(
        self,
        admission: Admission,
        limits: TenantLimits,
        currency: str,
        amount: int,
        invoice_id: str,
        requests: Collection[str] = (),
    ) -> None:
        """A one-off invoice learnt paid by a command that did not charge it (an
        ``invoice.refresh``; an ``invoice.finalize`` its provider paid at once): its
        ``amount`` counted toward the day's volume, once (this record's decision says so
        when it is delivered again), and the holds of pays of it released (one parked
        after its provider charged: that charge is this one, now counted; re-driven, it
        is refused "already paid"). A paid invoice counts once however it is learnt: an
        ``invoice.pay`` answered `invoice.paid` counts through :meth:`settle`, and no
        command moves an invoice to paid twice (review h78o M1b). ``requests``: what a
        pay of it asks (see :func:`_without_invoice_holds`)."""
        key = self.key(admission.tenant_id)
        raw = self.table.get(key)
        if raw is None:
            return
        state = dict(raw)
        released = _without_invoice_holds(state, invoice_id, requests)
        kept = state.get("decided") or {}
        decided = kept.get(str(admission.offset)) if admission.offset >= 0 else None
        counts = bool(amount) and currency in limits.daily_payment_volume
        if counts and not (decided is not None and decided.get("counted")):
            if decided is not None:
                decided["counted"] = True
            _add_volume(state, admission.day, currency, amount)
        elif not released:
            return
        self.table[key] = state

    def release_invoice_holds(
        self, tenant_id: str, invoice_id: str, requests: Collection[str] = ()
    ) -> None:
        """An ``invoice.pay`` answered `invoice.paid` (counted by its settle): the holds
        of other pays of that invoice go too. One parked before its provider saw it can
        charge nothing now (the invoice is paid: re-driven, it is refused "already
        paid"), and held on until then, it kept the day's volume short of what was
        counted (review h79r_c F6). So do they when the invoice is learnt void
        (:func:`learnt_void`). Dropping holds that are gone already changes nothing:
        safe on every delivery of the command that learnt it."""
        key = self.key(tenant_id)
        raw = self.table.get(key)
        if raw is None:
            return
        state = dict(raw)
        if _without_invoice_holds(state, invoice_id, requests):
            self.table[key] = state

    def _release(self, admission: Admission) -> None:
        """Drop the hold ``admission`` names, if there is one (nothing counted)."""
        if admission.hold is None:
            return
        key = self.key(admission.tenant_id)
        state = self.table.get(key) or {}
        if admission.hold in (state.get("held") or ()):  # (no copy made for most commands)
            held = dict(state["held"])
            del held[admission.hold]
            self.table[key] = {**state, "held": held}

    def account_answered(
        self,
        tenant_id: str,
        limits: TenantLimits,
        rec: Record,
        command_type: str,
        outcome_type: str,
        outcome_data: Mapping[str, Any],
        *,
        hold_key: str | None = None,
        former_hold_key: str | None = None,
        request: str | None = None,
        exempt: bool = False,
        amount: int | None = None,
        invoice_requests: Collection[str] = (),
    ) -> None:
        """Account a record answered from its own idempotency record (a redelivery whose
        limits state was lost): as the admission it was, spending and counting once, and
        releasing what it held (under an older version's key too). ``amount``: what its
        admission took as its charge (a taxed subscription's), else its outcome's.
        ``invoice_requests``: an invoice learnt paid, what a pay of it asks."""
        if rec.offset < 0 or not limits.enforced:
            return
        key = self.key(tenant_id)
        state = self._state(self.table.get(key), rec)
        decided = _kept(state, rec)
        obj = outcome_data.get("object") or {}
        learnt = learnt_paid(command_type, outcome_type, obj)
        if decided is not None and learnt:
            # (its count lost with its settle: counted now, once)
            if decided.get("admit"):
                admission = Admission(tenant_id, rec.offset, decided["day"])
                self.count_learnt(
                    admission,
                    limits,
                    str(obj.get("currency")),
                    int(obj.get("amount") or 0),
                    str(obj["id"]),
                    invoice_requests,
                )
            return
        if decided is not None:
            # Decided already. Admitted but not settled (its answer kept, its settle
            # lost): settled now, counting once and releasing its hold.
            if decided.get("admit") and decided.get("currency") and not decided.get("counted"):
                owner = None if request is None else _tag(request)
                self.settle(
                    Admission(
                        tenant_id,
                        rec.offset,
                        decided["day"],
                        decided["currency"],
                        int(decided.get("amount") or 0),
                        _hold_of(state, hold_key or rec.command_id, owner),
                    ),
                    outcome_type
                    if command_type in MONEY_COMMANDS or command_type in OUTFLOW_COMMANDS
                    else "command.rejected",
                )
            return
        if learnt:
            _without_invoice_holds(state, str(obj.get("id")), invoice_requests)
        held = dict(state.get("held") or {})
        owner = None if request is None else _tag(request)
        held.pop(_hold_of(state, hold_key or rec.command_id, owner), None)
        former = _former_hold(state, former_hold_key, owner)
        if former is not None:
            held.pop(former, None)
        state["held"] = held
        at_ms = self._at(state, rec)
        day = _day(at_ms)
        if exempt:  # as admit decided it: nothing spent
            _refill(state, limits, at_ms)
        else:
            _spend(state, limits, at_ms)
        state["at_ms"] = at_ms
        counted = False
        if (
            ((command_type in MONEY_COMMANDS and outcome_type in VOLUME_OUTCOMES) or learnt)
            and obj.get("currency") in limits.daily_payment_volume
            and not (command_type == "subscription.create" and _in_trial(obj))
        ):
            charged = int(obj.get("amount") or 0) if amount is None else amount
            _add_volume(state, day, str(obj["currency"]), charged)
            counted = True
        elif (
            (outflow := _OUTFLOWS.get(command_type)) is not None
            and outcome_type in _OUTFLOW_MOVED
            and obj.get("currency") in outflow.cap(limits)
        ):
            # (a transfer's or a payout's own volume, counted once as a payment's is)
            _add_volume(state, day, outflow.prefix + str(obj["currency"]), int(obj["amount"]))
            counted = True
        entry = {"id": _tag(rec.command_id), "day": day, "admit": True, "counted": counted}
        self._decide(key, state, rec, {**entry, "currency": None, "amount": None})

    # ---- state --------------------------------------------------------------------

    def _state(self, raw: Any, rec: Record) -> dict[str, Any]:
        state = dict(raw or _fresh(rec.partition))
        if rec.partition >= 0 and state.get("partition") != rec.partition:
            # The tenant's commands now come from another partition (a new topic, or
            # more partitions): offsets from the old log mean nothing here.
            state.update(partition=rec.partition, decided={})
        # Mutated in place: the state is always written back right after.
        state["decided"] = state.get("decided") or {}
        return state

    def _at(self, state: dict[str, Any], rec: Record) -> int:
        capped = min(rec.timestamp_ms, self._clock_ms() + MAX_FUTURE_SKEW_MS)
        return max(int(state["at_ms"]), capped)

    def _decide(self, key: str, state: dict[str, Any], rec: Record, entry: dict[str, Any]) -> None:
        if rec.offset >= 0:
            decided = state["decided"]
            decided[str(rec.offset)] = entry
            self._forget_committed(state, rec.partition)
            if len(decided) > REPLAY_MEMORY:  # a commit stalled: oldest first
                for old in list(itertools.islice(decided, REPLAY_MEMORY // 4)):
                    del decided[old]
        self.table[key] = state

    def _forget_committed(self, state: dict[str, Any], partition: int) -> None:
        """Drop the decisions of committed records (kept in offset order, mostly)."""
        floor = self._committed(partition)
        decided = state["decided"]
        while decided:
            oldest = next(iter(decided))
            if int(oldest) >= floor:
                break
            del decided[oldest]


def _in_trial(obj: Mapping[str, Any]) -> bool:
    """Is this subscription.create's outcome a free trial (nothing charged): ``trialing``,
    or at a checkout that starts one (Paddle's ``requires_action`` with a
    ``trial_end``)?"""
    return obj.get("status") == "trialing" or (
        obj.get("status") == "requires_action" and bool(obj.get("trial_end"))
    )


def charge_now(command_type: str, data: Any, amount: int | None = None) -> int:
    """What a money command charges at once: a payment its ``amount``; a subscription its
    first period's charge (``amount``: with its exclusive tax; None: ``data.amount``), or
    nothing while a free trial runs (``trial_days``); an :class:`InvoiceTotal` nothing (a
    draft), a :class:`Repricing` nothing (billed
    from the next period on), a :class:`ProrationCharge` its new charge and the lines
    still pending (nothing for a trialing subscription)."""
    if isinstance(data, _PRICED) or (isinstance(data, ProrationCharge) and data.trialing):
        return 0
    if isinstance(data, ProrationCharge):
        return (int(data.amount) if amount is None else amount) + data.pending
    if command_type == "subscription.create" and int(getattr(data, "trial_days", 0) or 0):
        return 0
    return int(data.amount) if amount is None else amount


def learnt_paid(command_type: str, outcome_type: str, obj: Mapping[str, Any]) -> bool:
    """Is this outcome a one-off invoice learnt paid by a command that did not charge
    it (see :meth:`LimitGate.count_learnt`)? ``obj``: the outcome's object."""
    return (
        outcome_type == "invoice.paid"
        and command_type not in MONEY_COMMANDS
        and obj.get("subscription_id") is None
        and bool(obj.get("id"))
    )


def learnt_void(outcome_type: str, obj: Mapping[str, Any]) -> bool:
    """Is this outcome a one-off invoice voided (by invoice.void, or read back so by a
    refresh)? Nothing will be collected on it: the holds of its pays, parked, can charge
    nothing (a voided invoice was never paid; re-driven, they are refused "already
    void"), so they go (:meth:`LimitGate.release_invoice_holds`; review h79r_c F7).
    Not an ``uncollectible`` one (invoice.marked_uncollectible): its provider still
    takes a payment of it (invoice.pay, or its customer's), so its pays keep their
    holds."""
    return (
        outcome_type == "invoice.voided"
        and obj.get("subscription_id") is None
        and bool(obj.get("id"))
    )


def _invoice_tag(invoice_id: str) -> str:
    return _tag(f"invoice\x1f{invoice_id}")


def _without_invoice_holds(
    state: dict[str, Any], invoice_id: str, requests: Collection[str] = ()
) -> bool:
    """Drop from ``state`` the holds of pays of ``invoice_id`` (an InvoiceCharge's hold
    names its invoice); whether there were any.

    A hold placed before holds named their invoice (four elements) is found by the
    request that placed it (its fourth, see :func:`_hold_of`): ``requests``, the request
    hashes a pay of ``invoice_id`` has (naming no payment method, or the invoice's own),
    a hash of the invoice's id, so a match is a pay of it. One naming another method of
    its customer's is not found: it holds until it is re-driven or its day is over, as
    every such hold did (review h79r_c F7)."""
    held = state.get("held")
    if not held:
        return False
    tag = _invoice_tag(invoice_id)
    owners = {_tag(r) for r in requests} if requests else ()
    kept = {
        t: h
        for t, h in held.items()
        if not ((len(h) >= 5 and h[4] == tag) or (len(h) == 4 and h[3] in owners))
    }
    if len(kept) == len(held):
        return False
    state["held"] = kept
    return True


def _now_ms() -> int:
    """The worker's clock in epoch milliseconds (``time.time()``, which is what
    ``datetime.now`` reads, without building a datetime on every command)."""
    return int(time.time() * 1000)


def _fresh(partition: int) -> dict[str, Any]:
    return {"partition": partition, "at_ms": 0, "tokens": None, "day": "", "volume": {},
            "decided": {}, "held": {}}  # fmt: skip


def _holds_of_day(state: Mapping[str, Any], day: str) -> dict[str, list[Any]]:
    """The holds that still count on ``day``: those placed on it or the day before. A
    payment parked before midnight and answered after counts on the day it is answered,
    so until then it holds against that day too; older ones are dropped (the provider's
    idempotency window is 24 h: `dlq replay` holds back what is older)."""
    held = state.get("held")
    if not held:
        return {}  # (as the comprehension makes of none: a new dict, callers fill it)
    since = _day_before(day)
    return {tag: h for tag, h in held.items() if h[0] >= since}


def _held(state: Mapping[str, Any], day: str, currency: str, own: str) -> int:
    """What payments not yet answered hold against ``day``, but ``own``'s."""
    if not state.get("held"):
        return 0  # (nothing held: the sum of none)
    return sum(
        int(h[2]) for tag, h in _holds_of_day(state, day).items() if h[1] == currency and tag != own
    )


def _former_hold(
    state: Mapping[str, Any], former_hold_key: str | None, owner: str | None
) -> str | None:
    """The tag of the hold an older version placed for this payment, if there is one and
    it is this request's (or names none). The former key of a chosen payment id is also
    what a client's idempotency key "payment:<id>" is held under today: that payment's
    hold is its own, neither carried over nor released by this one (it was, and the
    tenant went past its daily volume)."""
    if former_hold_key is None:
        return None
    tag = _tag(former_hold_key)
    held = (state.get("held") or {}).get(tag)
    if held is None:
        return None
    placed_by = held[3] if len(held) >= 4 else None
    return tag if placed_by is None or owner is None or placed_by == owner else None


def _hold_of(
    state: Mapping[str, Any], hold_key: str, owner: str | None, tag: str | None = None
) -> str:
    """The tag the request ``owner`` holds (or would hold) its payment under.

    ``hold_key``'s own tag, when free or held by the same request (a chosen-id payment
    sent again under a new command id: one payment, held once). Another request naming
    the same payment id shares its provider key; it must neither take over nor release
    the first one's hold, and it holds its own amount under a tag of its own (parked
    before the provider saw either, it may be the one that charges). (Holds placed by
    older versions name no request: they are anyone's.) ``tag``: ``_tag(hold_key)``,
    when the caller has it already."""
    tag = _tag(hold_key) if tag is None else tag
    holds = state.get("held")
    if owner is None or not holds:
        # (With nothing held, neither tag is taken: the checks below come to ``tag``
        # without the own tag's hash.)
        return tag
    own = _tag(f"{hold_key}\x1f{owner}")
    if own in holds:
        return own
    held = holds.get(tag)
    if held is None or len(held) < 4 or held[3] is None or held[3] == owner:
        return tag
    return own


@functools.lru_cache(maxsize=64)  # a few distinct days, asked on every payment
def _day_before(day: str) -> str:
    return (date.fromisoformat(day) - timedelta(days=1)).isoformat()


def _kept(state: Mapping[str, Any] | None, rec: Record) -> dict[str, Any] | None:
    """The decision kept for this very record (same partition, offset and command)."""
    if state is None or rec.offset < 0 or state.get("partition") != rec.partition:
        return None
    decided = (state.get("decided") or {}).get(str(rec.offset))
    if decided is None or decided["id"] != _tag(rec.command_id):
        return None
    return decided


def _room_in_full(decided: Mapping[str, Any]) -> bool:
    """May one more refusal be kept in full: do the kept decisions hold fewer than
    :data:`FULL_REFUSALS` refusals so (the release before's included)? (Counted only
    once there are that many decisions: a flood, a stalled commit; the full ones are the
    oldest, so the count soon stops.)"""
    if len(decided) < FULL_REFUSALS:
        return True
    full = 0
    for d in decided.values():
        if full >= FULL_REFUSALS:
            break
        if not d["admit"] and "why" not in d:
            full += 1
    return full < FULL_REFUSALS


def _replayed(decided: Mapping[str, Any]) -> LimitRejection:
    """The rejection kept in ``decided``: made again by its builder from its arguments
    (``why``), or, kept by an earlier release, as it was kept (reason, message, data)."""
    why = decided.get("why")
    if why is None:
        return LimitRejection(decided["reason"], decided["message"], decided["extra"], replay=True)
    made = _REFUSALS[why[0]](*why[1:])
    return LimitRejection(made.reason, made.message, made.extra, replay=True, why=tuple(why))


def _tag(command_id: str) -> str:
    """A command id as kept in the state: short whatever the id's length.

    ``hashlib.blake2b(command_id.encode(), digest_size=8).hexdigest()`` (_full_tag),
    from a copy of an unkeyed 8-byte BLAKE2b that has taken nothing yet: the same
    digest (the parameters are the state's from the start), for two thirds of the cost
    of setting one up (several per admission)."""
    blake = _BLAKE2B_8.copy()
    blake.update(command_id.encode())
    return blake.hexdigest()


def _full_tag(command_id: str) -> str:
    """What _tag returns, as first written (tests compare the two)."""
    return hashlib.blake2b(command_id.encode(), digest_size=8).hexdigest()


_BLAKE2B_8 = hashlib.blake2b(digest_size=8)


def _spend(state: dict[str, Any], limits: TenantLimits, at_ms: int) -> None:
    """Take a token as an admission that was (or must be) let through: none left is zero."""
    if limits.commands_per_second is not None and _rate(state, limits, at_ms) is not None:
        state["tokens"] = 0


def _refill(state: dict[str, Any], limits: TenantLimits, at_ms: int) -> None:
    """Bring the bucket up to ``at_ms`` taking nothing (before ``at_ms`` moves on)."""
    rate = limits.commands_per_second
    if rate is None or state.get("tokens") is None:
        return
    elapsed = max(0, at_ms - int(state["at_ms"]))
    state["tokens"] = min((limits.burst or rate) * _MILLI, int(state["tokens"]) + elapsed * rate)


def _day(at_ms: int) -> str:
    """The UTC day of ``at_ms`` (epoch milliseconds), as an ISO date."""
    return _day_of(at_ms // _DAY_MS)


_DAY_MS = 86_400_000


@functools.lru_cache(maxsize=64)  # the same day or two for every command of a tenant
def _day_of(day_number: int) -> str:
    # (UTC days are all 86 400 s of epoch time: day n starts at n * 86 400.)
    return datetime.fromtimestamp(day_number * 86_400, tz=UTC).date().isoformat()


def _volume_of(decided: Mapping[str, Any]) -> tuple[str | None, int]:
    if decided.get("counted") or decided.get("currency") is None:
        return None, 0
    return str(decided["currency"]), int(decided["amount"])


def _add_volume(state: dict[str, Any], day: str, currency: str, amount: int) -> None:
    if state.get("day") is not None and day < state["day"]:
        # A redelivered admission from a day already over (ISO dates sort as days do): its
        # day's quota is gone, and the current day's volume must not be reset by it.
        return
    volume = dict(state["volume"]) if state.get("day") == day else {}
    volume[currency] = volume.get(currency, 0) + amount
    state["day"], state["volume"] = day, volume


def _rate(state: dict[str, Any], limits: TenantLimits, at_ms: int) -> LimitRejection | None:
    """Token bucket in milli-tokens; takes one command's worth from ``state`` if it can."""
    rate = limits.commands_per_second
    if rate is None:
        return None
    capacity = (limits.burst or rate) * _MILLI
    tokens = state.get("tokens")
    if tokens is None:  # first command under this limit: a full bucket
        tokens = capacity
    else:
        # ``rate`` commands a second is ``rate`` milli-tokens a millisecond.
        elapsed = max(0, at_ms - int(state["at_ms"]))
        tokens = min(capacity, int(tokens) + elapsed * rate)
    if tokens >= _MILLI:
        state["tokens"] = tokens - _MILLI
        return None
    state["tokens"] = tokens
    retry_after_ms = -(-(_MILLI - tokens) // rate)  # ceiling division
    return _refusal("rate", rate, capacity // _MILLI, retry_after_ms)


def _rate_limited(rate: int, burst: int, retry_after_ms: int) -> LimitRejection:
    return LimitRejection(
        "rate_limited",
        f"tenant over its rate limit of {rate} commands/s (burst {burst}); "
        f"retry after {retry_after_ms} ms",
        {"limit": "commands_per_second", "retry_after_ms": retry_after_ms},
    )


def _quota(
    state: dict[str, Any],
    limits: TenantLimits,
    day: str,
    command_type: str,
    data: Any,
    hold: str,
    charge: int | None = None,
) -> LimitRejection | None:
    if (outflow := _OUTFLOWS.get(command_type)) is not None:
        return _outflow_quota(state, limits, day, data, hold, outflow)
    if not money_command(command_type, data) and not isinstance(data, _PRICED):
        return None
    if isinstance(data, InvoiceCharge) and not data.amount:
        return None  # (the handler refuses it: nothing to charge)
    # (A subscription's per-period charge, ``charge`` with its tax, against the cap; its
    # charge now, none in a trial, against the day's volume.)
    currency = str(data.currency)
    amount = int(data.amount) if charge is None else charge
    if limits.only_listed_currencies and currency not in limits.listed_currencies:
        return _currencies_refused("payment", currency, limits.listed_currencies)
    cap = limits.max_payment_amount.get(currency)
    if cap is not None and amount > cap:
        return _refusal("cap", amount, currency, cap)
    daily = limits.daily_payment_volume.get(currency)
    amount = charge_now(command_type, data, charge)
    if daily is None or not amount:
        return None
    return _daily_volume(
        state, day, hold, currency, amount, daily, limit="daily_payment_volume", bucket=currency
    )


def _outflow_quota(
    state: dict[str, Any], limits: TenantLimits, day: str, data: Any, hold: str, outflow: _Outflow
) -> LimitRejection | None:
    """A ``transfer.create`` or ``payout.create`` against its own daily volume
    (``outflow.limit``: its volume and holds under ``outflow.prefix`` + currency), as a
    payment against the payments'."""
    caps = outflow.cap(limits)
    if not caps:
        return None  # (unset: unlimited, as before the limit; only_listed_currencies too)
    currency, amount = str(data.currency), int(data.amount)
    noun = outflow.noun
    daily = caps.get(currency)
    if daily is None:
        if not limits.only_listed_currencies:
            return None
        return _currencies_refused(noun, currency, caps)
    return _daily_volume(
        state, day, hold, currency, amount, daily,
        limit=outflow.limit, bucket=outflow.prefix + currency,
    )  # fmt: skip


def _daily_volume(
    state: dict[str, Any],
    day: str,
    hold: str,
    currency: str,
    amount: int,
    daily: int,
    *,
    limit: str,
    bucket: str,
) -> LimitRejection | None:
    """``amount`` against a daily volume of ``daily`` (what the day's ``bucket`` used and
    holds other than ``hold``), refused too (its ``pending`` limit) once the day holds
    ``MAX_HOLDS`` others of its kind (payments, transfers or payouts; see
    :func:`_waiting`): the payments' and the outflows' checks, in their own words
    (:data:`_WORDS`, by ``limit``)."""
    holds = _holds_of_day(state, day)
    if len(holds) >= MAX_HOLDS and hold not in holds:
        waiting = _waiting(holds.values(), bucket)
        if waiting >= MAX_HOLDS:
            return _refusal("pending", limit, waiting, currency, MAX_HOLDS)
    used = int((state.get("volume") or {}).get(bucket, 0)) if state.get("day") == day else 0
    held = _held(state, day, bucket, hold)
    if used + held + amount <= daily:
        return None
    return _refusal("daily", limit, amount, currency, day, used, held, daily)


class _Words(NamedTuple):
    """How a daily volume's refusals word it: "{lead} 5.00 USD would take {what} ...",
    "... held by {holders} not yet answered"; ``pending``: the ``limit`` of a refusal for
    too many of them awaiting an answer."""

    lead: str
    what: str
    holders: str
    pending: str


_WORDS = {
    "daily_payment_volume": _Words("amount", "the tenant's volume", "payments", "pending_payments"),
    **{
        o.limit: _Words(o.noun, f"what the tenant {o.verb}", f"{o.noun}s", o.pending)
        for o in _OUTFLOWS.values()
    },
}
# The ``limit`` of every refusal by what unanswered commands hold (a daily volume, or too
# many of them pending): the dailies, then their pending partners, in _WORDS' order.
HOLDING_LIMITS = (*_WORDS, *(w.pending for w in _WORDS.values()))
# The ``limit`` of every refusal: the rate, the cap, those above, the currencies.
LIMIT_NAMES = ("commands_per_second", "max_payment_amount", *HOLDING_LIMITS, "currencies")


def _over_daily(
    limit: str, amount: int, currency: str, day: str, used: int, held: int, daily: int
) -> LimitRejection:
    lead, what, holders, _ = _WORDS[limit]
    return LimitRejection(
        "quota_exceeded",
        f"{lead} {format_minor(amount, currency)} would take {what} on {day} to "
        f"{format_minor(used + held + amount, currency)}, over its daily limit of "
        f"{format_minor(daily, currency)}"
        + (
            f" ({format_minor(held, currency)} of it held by {holders} not yet answered)"
            if held
            else ""
        ),
        {
            "limit": limit,
            "currency": currency,
            "allowed": daily,
            "used": used,
            "held": held,
            "day": day,
        },
    )


def _too_many_waiting(limit: str, waiting: int, currency: str, allowed: int) -> LimitRejection:
    words = _WORDS[limit]
    return LimitRejection(
        "quota_exceeded",
        f"{waiting:,} {words.holders} of the tenant are awaiting their provider's answer "
        f"(at most {allowed:,} at once); send this one again once they are answered",
        {"limit": words.pending, "currency": currency, "allowed": allowed},
    )


def _not_listed(noun: str, currency: str, listed: list[str]) -> LimitRejection:
    return LimitRejection(
        "quota_exceeded",
        f"{noun}s in {currency} are not allowed for this tenant (only {', '.join(listed)})",
        {"limit": "currencies", "currency": currency, "allowed": listed},
    )


def _not_listed_coded(noun: str, currency: str, codes: str) -> LimitRejection:
    """:func:`_not_listed` of the codes kept as a bit mask (:func:`_codes`)."""
    return _not_listed(noun, currency, _listed(codes))


def _currencies_refused(noun: str, currency: str, allowed: Collection[str]) -> LimitRejection:
    """A ``noun`` in ``currency`` refused, only ``allowed`` being: kept as a bit mask of
    them, or in full if one has no place in :data:`_CODE_ORDER` (a code added to the
    accepted ones and not to it; review h81rd L2): a refusal rather than a failed
    command. (Never in a release: tests/tenancy/test_limits_record_size.py pins every
    accepted code's place, and the size bound counts on it.)"""
    try:
        codes = _codes(allowed)
    except KeyError:
        return _not_listed(noun, currency, sorted(allowed))
    return _refusal("currencies", noun, currency, codes)


def _over_cap(amount: int, currency: str, cap: int) -> LimitRejection:
    return LimitRejection(
        "quota_exceeded",
        f"amount {format_minor(amount, currency)} is over the tenant's per-payment "
        f"limit of {format_minor(cap, currency)}",
        {"limit": "max_payment_amount", "currency": currency, "allowed": cap},
    )


# The builders of every refusal the limits keep for a redelivery, by the name its kept
# decision gives (``why``: [name, *arguments]). A kept refusal is its arguments (tens of
# bytes), not its message and data (up to 800: a currency refusal lists the allowed
# ones twice): 2,048 kept in full made the tenant's record too big for the broker (the
# first :data:`FULL_REFUSALS` are kept in full still, for the release before). The same
# builder makes it first and again, so a redelivery's outcome is the same bytes. A
# stored format: a builder's wording or arguments never change under its name (a new
# wording is a new name; the old one stays, for refusals kept before).
_REFUSALS: dict[str, Callable[..., LimitRejection]] = {
    "rate": _rate_limited,
    "currencies": _not_listed_coded,
    "cap": _over_cap,
    "daily": _over_daily,
    "pending": _too_many_waiting,
}


def _refusal(name: str, *args: Any) -> LimitRejection:
    """The refusal ``_REFUSALS[name]`` makes of ``args``, knowing how to make it again."""
    made = _REFUSALS[name](*args)
    return LimitRejection(made.reason, made.message, made.extra, why=(name, *args))


# Currency codes in the order a kept refusal's set of them is a bit mask over
# (:func:`_codes`): append-only, a code's place never changes (refusals kept by an earlier
# release name codes by it). Every accepted code is here (tests/tenancy/test_limits_record_size.py).
_CODE_ORDER = (
    "AED",
    "AUD",
    "BGN",
    "BHD",
    "BIF",
    "BRL",
    "CAD",
    "CHF",
    "CLP",
    "CNY",
    "CZK",
    "DJF",
    "DKK",
    "EUR",
    "GBP",
    "GNF",
    "HKD",
    "HUF",
    "IDR",
    "ILS",
    "INR",
    "JOD",
    "JPY",
    "KMF",
    "KRW",
    "KWD",
    "MGA",
    "MXN",
    "MYR",
    "NOK",
    "NZD",
    "OMR",
    "PHP",
    "PLN",
    "PYG",
    "RON",
    "RWF",
    "SEK",
    "SGD",
    "THB",
    "TND",
    "TRY",
    "TWD",
    "UGX",
    "USD",
    "VND",
    "VUV",
    "XAF",
    "XOF",
    "XPF",
    "ZAR",
)
_CODE_BIT = {code: i for i, code in enumerate(_CODE_ORDER)}


def _codes(currencies: Iterable[str]) -> str:
    """A set of currency codes as a kept refusal holds it: a bit mask in hex."""
    return format(sum(1 << _CODE_BIT[c] for c in set(currencies)), "x")


def _listed(codes: str) -> list[str]:
    """The sorted codes :func:`_codes` made ``codes`` of (a new list: it goes into a
    rejection's data)."""
    return list(_listed_once(codes))


@functools.lru_cache(maxsize=256)  # a tenant's few sets, refused again and again
def _listed_once(codes: str) -> tuple[str, ...]:
    mask = int(codes, 16)
    return tuple(sorted(c for i, c in enumerate(_CODE_ORDER) if mask >> i & 1))

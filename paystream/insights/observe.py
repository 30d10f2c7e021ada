"""What analytics and fraud rules read of one outcome event."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from cloudevents.core.v1.event import CloudEvent

from paystream.gateways.base import (
    INVOICES_LISTED_MAX,
    DisputeStatus,
    InvoiceStatus,
    PayoutStatus,
    SubscriptionStatus,
)
from paystream.gateways.errors import CARD_ERROR_CODES, DECLINE_CODES, ISSUER_DECLINES, card_failure
from paystream.money import CURRENCY_EXPONENTS, MAX_MINOR_AMOUNT
from paystream.streams.commands import COMMAND_PREFIX
from paystream.streams.outcomes import OUTCOME_PREFIX
from paystream.streams.pan import contains_card_number

__all__ = ["CARD_DECLINES", "LABEL_MAX_CHARS", "Observed", "observe"]

# Error codes (paystream's, on `payment.failed`) that mean the card's issuer refused the
# payment: what card testing produces, as opposed to the provider failing.
CARD_DECLINES = frozenset(code.value for code in ISSUER_DECLINES)


@dataclass(frozen=True, slots=True)
class Observed:
    """One outcome as the insights see it. Amounts are integer minor units."""

    event_id: str
    tenant_id: str
    outcome: str  # e.g. "payment.succeeded" (without the com.paystream. prefix)
    time_ms: int  # the command's time (stable across re-emissions of the outcome)
    currency: str | None = None
    authorized: int = 0  # held on the card (payment.authorized)
    captured: int = 0  # money taken (payment.succeeded: what the payment captured)
    refunded: int = 0  # money given back (refund.succeeded, or pending at the provider)
    # a refund counted given back when made, read back failed since (refund.refresh)
    refunds_failed: int = 0
    declined: int = 0  # asked for and refused by the card's issuer (payment.failed)
    decline_code: str | None = None  # why a payment failed (decline code or error code)
    card_declined: bool = False  # the issuer refused it (not a provider failure)
    # A payment attempt (what card testing shows up as): a payment's creation, not the
    # later capture of a manual one; a card saved; the issuer's answer read back later.
    attempt: bool = False
    # ... a payment its issuer answered: not one left waiting on its customer or bank,
    # nor a card saved, which cost a tester nothing (the flood rule counts these).
    answered: bool = False
    # A card saved to a customer, or declined as it was (the issuer answered a save):
    # the flood rule holds save declines to saves, payment declines to payments.
    save: bool = False
    reject_reason: str | None = None  # command.rejected's reason
    customer_id: str | None = None
    payment_method_id: str | None = None
    # Disputes (chargebacks) this outcome opened, and those it found lost: (currency,
    # amount) each, in integer minor units (see _disputes for what counts, once).
    disputes_opened: tuple[tuple[str, int], ...] = ()
    disputes_lost: tuple[tuple[str, int], ...] = ()
    # Subscriptions (see _invoices): invoices this outcome found paid, (currency, amount)
    # each; invoice payments it found declined, (currency, decline or error code) each;
    # and whether it started a subscription (created active or trialing, or an incomplete
    # one read back paid) or ended a live one (canceled), in ``currency``.
    invoices_paid: tuple[tuple[str, int], ...] = ()
    invoices_declined: tuple[tuple[str, str], ...] = ()
    subscription_created: bool = False
    subscription_canceled: bool = False
    # Payouts (see _payout_facts): what this outcome did to one payout, in ``currency``:
    # ``created`` and/or the status it reached (``paid``, ``failed``, ``canceled``;
    # ``returned`` too for a paid one that failed), each once; its amount, and a failed
    # one's failure code (screened as decline codes are).
    payout_moves: tuple[str, ...] = ()
    payout_amount: int = 0
    payout_failure: str | None = None
    # Tax collected (see _payment_tax and _invoices): (currency, "payments" | "invoices",
    # amount in minor units) each: a payment's ``amount_tax`` when it succeeded (the
    # worker's record says its share of a partial capture), a paid invoice's ``tax``,
    # once as they are counted.
    tax_collected: tuple[tuple[str, str, int], ...] = ()
    # A destination charge that succeeded: the application fee its platform (the tenant)
    # kept, in ``currency`` (the worker's record caps it at what a partial capture took);
    # None for any other outcome. Counted once, as ``captured`` is.
    application_fee: int | None = None
    # Transfers (separate charges and transfers): what a ``transfer.created`` moved to a
    # connected account, and what a ``transfer.reversed`` took back of one (its
    # ``amount_reversed_now``), in ``currency``; 0 for any other outcome. Each outcome
    # counted once (the runner's counted ids), as payouts' are.
    transfer_created: int = 0
    transfer_reversed: int = 0


# A payment's creation answered otherwise than succeeded: each is an attempt. A payment
# waiting on its customer (3-D Secure) or its bank (a debit) is one too, though paystream
# hears nothing after: left out, a tenant whose payments mostly ask for authentication
# had its few declines taken for half its attempts, a card-testing burst (review finding).
_CREATION_ANSWERS = frozenset(
    {"payment.authorized", "payment.failed", "payment.requires_action", "payment.processing"}
)


# Payments waiting on their customer (3-D Secure) or their bank: no issuer answer yet.
_WAITING = frozenset({"payment.requires_action", "payment.processing"})
_PENDING = frozenset({"requires_action", "processing"})
# A payment read back that its issuer took (failed, only a decline is its issuer's answer:
# a failed 3-D Secure step is the customer's).
_ISSUER_TOOK = frozenset({"payment.authorized", "payment.succeeded"})
_ATTACH_FAILED = "payment_method.attach_failed"
_ATTACHED = "payment_method.attached"

# The one outcome whose type is in the commands' namespace.
_REJECTED = OUTCOME_PREFIX + "command.rejected"


def observe(event: CloudEvent) -> Observed | None:
    """The facts of a paystream outcome; None for events that are not outcomes."""
    kind = event.get_type()
    if not kind.startswith(OUTCOME_PREFIX) or (
        kind.startswith(COMMAND_PREFIX) and kind != _REJECTED
    ):
        return None
    tenant = event.get_extension("tenantid")
    when = event.get_time()
    if not isinstance(tenant, str) or not tenant or when is None:
        return None
    outcome = kind.removeprefix(OUTCOME_PREFIX)
    if len(outcome) > LABEL_MAX_CHARS:
        return None  # not a type paystream emits (and no key for a window's counts)
    data = event.get_data()
    data = data if isinstance(data, dict) else {}
    if data.get("answered_by"):
        return None  # another command's outcome (counted under its own id), re-answered
    obj = data.get("object")
    obj = obj if isinstance(obj, dict) else {}
    error = data.get("error")
    error = error if isinstance(error, dict) else {}
    event_id = event.get_id()
    # Nothing that holds a card number is kept (windows, alerts, the counted ids' keys;
    # review h67r): one scan of every string kept, each looked at alone only if it finds
    # one (a scan per string doubled observe's cost).
    # (A subscription outcome's invoices: their failure codes are kept as decline codes.)
    paid, declined, invoice_tax = (
        _invoices(tenant, data)
        if outcome.startswith(_SUBSCRIPTION)
        else _one_off_invoice(tenant, outcome, obj)
        if outcome in _ONE_OFF_INVOICE
        else ((), (), ())
    )
    payout = outcome.startswith(_PAYOUT)
    kept = (
        outcome, error.get("decline_code"), error.get("code"), data.get("reason"),
        obj.get("customer_id"), obj.get("payment_method_id"), data.get("customer_id"),
        *(code for _, code in declined),
        *((obj.get("failure_code"),) if payout else ()),
    )  # fmt: skip
    short = [v for v in kept if isinstance(v, str) and len(v) <= ID_MAX_CHARS]
    suspect = contains_card_number(event_id, short)
    if suspect and contains_card_number(outcome, event_id):
        return None  # (its id is a key of the counted ids' table)
    _label = functools.partial(_screened_label, suspect)
    _id = functools.partial(_screened_id, suspect)
    currency = _text(obj.get("currency"))
    if currency not in CURRENCY_EXPONENTS:
        currency = None  # only what paystream accepts: a key of the window's money
    amount = _minor(obj.get("amount"))
    facts: dict[str, Any] = {}
    # An outcome naming the status the payment had before (a payment.refresh, or a
    # re-driven capture or cancel a refresh already showed): its creation was the
    # attempt, counted then, and a status it already had moved no money again.
    previous = data.get("previous_status")
    had_status = isinstance(previous, str)
    unchanged = had_status and outcome == f"payment.{previous}"
    if unchanged and previous == "failed":
        # Failed again: new only if another card was declined (through the client
        # secret): another charge where the provider names them (cards declined alike
        # read as one failure by code: review finding), else another failure code.
        charge, before = obj.get("provider_charge_id"), data.get("previous_charge_id")
        if isinstance(charge, str) and isinstance(before, str):
            unchanged = charge == before
        else:
            unchanged = obj.get("failure_code") == data.get("previous_failure_code")
    if unchanged:
        pass  # (still waiting, still authorised, or the same failure: nothing new)
    elif outcome == "payment.authorized":
        facts["authorized"] = amount
    elif outcome == "payment.succeeded":
        facts["captured"] = _minor(obj.get("amount_captured"))
        tax = _payment_tax(obj, facts["captured"])
        if tax and currency is not None:
            facts["tax_collected"] = ((currency, "payments", tax),)
        if isinstance(obj.get("connected_account_id"), str) and currency is not None:
            fee = _minor(obj.get("application_fee_amount"))  # (0: none, or malformed)
            facts["application_fee"] = fee if fee <= facts["captured"] else 0
    elif outcome in ("refund.succeeded", "refund.pending"):
        # Pending: committed at the provider (the payment already counts it refunded);
        # left out, it was never counted (review). Read back (refund.refresh), it was
        # counted when made: a pending one settling moves no money again.
        if not had_status:
            facts["refunded"] = amount
    elif outcome == "refund.failed" and previous in ("succeeded", "pending"):
        # Read back failed after it was counted given back (the card closed): the money
        # stayed with the merchant after all.
        facts["refunds_failed"] = amount
    elif outcome == "payment.failed":
        code = _label(error.get("decline_code")) or _label(error.get("code"))
        card = _text(error.get("code")) in CARD_DECLINES
        facts.update(declined=amount if card else 0, decline_code=code, card_declined=card)
    elif outcome == _ATTACH_FAILED:
        # A card checked as it was saved to a customer and declined: card testing by
        # attaching cards (review finding: seen by neither rule). An attempt that moves
        # no money, pinned on the customer.
        card = _text(error.get("code")) in CARD_DECLINES
        facts.update(
            card_declined=card, attempt=card, save=card, customer_id=_id(data.get("customer_id"))
        )
    elif outcome == _ATTACHED:
        # A card saved: an attempt the issuer answered too, so that declined saves are
        # held to their share of saves (counted alone, a merchant whose customers save
        # cards at an ordinary decline rate read as all declines; review h59e).
        facts.update(attempt=True, save=True)
    elif outcome == "command.rejected":
        facts["reject_reason"] = _label(data.get("reason"))
    if not had_status and (
        outcome in _CREATION_ANSWERS
        or (outcome == "payment.succeeded" and obj.get("capture_method") != "manual")
    ):
        facts["attempt"] = True  # (a manual payment succeeds when captured: counted once)
    elif (
        had_status
        and not unchanged
        and (previous in _PENDING or previous == "failed")
        and (outcome in _ISSUER_TOOK or facts.get("card_declined"))
    ):
        # The issuer's answer read back (after 3-D Secure or a bank's wait, or another
        # card through the client secret): an attempt of its own window. Its decline
        # alone there, its creation counted in an earlier one, made a merchant reading
        # back a day's payments at an ordinary decline rate a card-testing burst
        # (review h59g).
        facts["attempt"] = True
    if (
        facts.get("attempt")
        and outcome.startswith("payment.")
        and outcome not in _WAITING
        and (outcome != "payment.failed" or facts.get("card_declined"))
    ):
        # A payment its issuer answered: not one waiting, nor one the provider failed,
        # nor a card saved, which costs a tester nothing either (review h59i).
        facts["answered"] = True
    if outcome.startswith("payment."):
        facts.update(
            customer_id=_id(obj.get("customer_id")),
            payment_method_id=_id(obj.get("payment_method_id")),
        )
    if outcome.startswith(_SUBSCRIPTION):
        facts.update(_subscription_facts(outcome, data, obj, error, paid, currency))
        facts["invoices_declined"] = tuple(
            (cur, _label(code) or _CARD_DECLINED) for cur, code in declined
        )
        if facts.get("attempt"):
            facts.update(
                customer_id=_id(obj.get("customer_id")),
                payment_method_id=_id(obj.get("payment_method_id")),
            )
        if invoice_tax:
            facts["tax_collected"] = tuple((cur, "invoices", tax) for cur, tax in invoice_tax)
    if outcome in _ONE_OFF_INVOICE:
        # (counted in the window as a subscription's invoices are; not fraud-rule
        # attempts: the README's Invoices says what is not built)
        if paid:
            facts["invoices_paid"] = paid
        if declined:
            facts["invoices_declined"] = tuple(
                (cur, _label(code) or _CARD_DECLINED) for cur, code in declined
            )
        if invoice_tax:
            facts["tax_collected"] = tuple((cur, "invoices", tax) for cur, tax in invoice_tax)
    if payout and currency is not None and amount:
        moves = _payout_moves(outcome, data, obj)
        if moves:
            facts.update(payout_moves=moves, payout_amount=amount)
            if "failed" in moves:
                code = _label(obj.get("failure_code")) or _label(error.get("decline_code"))
                facts["payout_failure"] = code or "unknown"
    if currency is not None and data.get("entity_type") == "transfer":
        if outcome == "transfer.created":
            facts["transfer_created"] = amount
        elif outcome == "transfer.reversed":
            # (this reversal's: a let-through one that took nothing back counts nothing)
            facts["transfer_reversed"] = _minor(data.get("amount_reversed_now"))
    opened, lost = _disputes(tenant, outcome, data)
    if opened:
        facts["disputes_opened"] = opened
    if lost:
        facts["disputes_lost"] = lost
    return Observed(
        event_id=event_id,
        tenant_id=tenant,
        outcome=outcome,
        time_ms=int(when.timestamp() * 1000),
        currency=currency,
        **facts,
    )


# A dispute lost: the card network decided for the cardholder, or the merchant accepted
# it (Stripe's "lost" either way; a Stripe inquiry closed is not one: no money moved).
# (A StrEnum: equal to the decoded outcome's string.)
_LOST = DisputeStatus.LOST
# Related entries looked at per outcome (paystream's carry one dispute at most, or a
# subscription read's invoices new or moved on: at most the INVOICES_LISTED_MAX a read
# lists, 24): a forged outcome listing thousands costs no more than this.
_RELATED_MAX = max(16, INVOICES_LISTED_MAX)


def _disputes(
    tenant: str, outcome: str, data: dict[str, Any]
) -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, int], ...]]:
    """The disputes an outcome opened and those it found lost: (currency, amount) each.

    Each is counted once, by outcome id (a re-emission carries the same id: the runner's
    counted ids), by these rules:

    * Opened: a dispute in `related` created by this outcome's own command: its
      ``created_by`` is the outcome's ``command_id`` and its ``version`` is 1 (each
      command that changes an entity adds one; created, it is 1). A dispute is created by
      one command only (the charge or capture that raised it, or the refresh that read
      it first; a second dispute on the payment after a decided one is another entity,
      opened by the refresh that records it), and every later outcome that carries it
      (read back as it moves on, evidence, accepted) names it at a later version, made by
      an earlier command: never opened again. (A command resent under its idempotency
      key gets its stored outcome, the same event; one answered by another's outcome
      carries ``answered_by`` and is not counted at all.)
    * Lost: a dispute in `related` with status lost (the handlers put a dispute there
      only when it is new or has moved on: a lost one there became lost in this outcome),
      or the `dispute.closed` of an accept whose dispute is lost and was not lost before
      (``previous_status``: a parked accept re-driven after a refresh had read its
      dispute lost is not counted again). A dispute reopened at the provider (a decision
      appealed: a new evidence deadline) and lost again counts again: each loss is one.
      A reversal (lost, then won on appeal) takes nothing back.

    Nothing else: an entry of another tenant, or not a dispute, or without a currency
    paystream accepts and a positive integer amount, is malformed and left out. Only the
    currency (one of paystream's) and the amount are kept: no string of the outcome's, so
    nothing that could hold a card number."""
    opened: list[tuple[str, int]] = []
    lost: list[tuple[str, int]] = []
    command = data.get("command_id")
    related = data.get("related")
    # (Each dispute once per outcome: paystream's never list an entity twice, nor the
    # primary again in `related`.)
    seen: set[str] = set()
    if data.get("entity_type") == "dispute" and isinstance(data.get("entity_id"), str):
        seen.add(data["entity_id"])
    for part in related[:_RELATED_MAX] if isinstance(related, list) else ():
        if not isinstance(part, dict) or part.get("entity_type") != "dispute":
            continue
        entity = part.get("entity_id")
        if not isinstance(entity, str) or entity in seen:
            continue
        seen.add(entity)
        found = _entity_money(tenant, part.get("object"))
        if found is None:
            continue
        obj = part["object"]
        version = part.get("version")
        created_here = isinstance(command, str) and obj.get("created_by") == command
        if created_here and type(version) is int and version == 1:
            opened.append(found)
        if obj.get("status") == _LOST:
            lost.append(found)
    if (
        outcome == "dispute.closed"
        and data.get("entity_type") == "dispute"
        and data.get("previous_status") != _LOST
        and isinstance(data.get("object"), dict)
        and data["object"].get("status") == _LOST
    ):
        found = _entity_money(tenant, data["object"])
        if found is not None:
            lost.append(found)
    return tuple(opened), tuple(lost)


def _entity_money(tenant: str, obj: Any) -> tuple[str, int] | None:
    """A dispute's or an invoice's currency and amount, if it is the tenant's and both are
    paystream's."""
    if not isinstance(obj, dict) or obj.get("tenant_id") != tenant:
        return None
    currency, amount = obj.get("currency"), _minor(obj.get("amount"))
    if not isinstance(currency, str) or currency not in CURRENCY_EXPONENTS or not amount:
        return None
    return currency, amount


_SUBSCRIPTION = "subscription."
_PAID = InvoiceStatus.PAID
_OPEN = InvoiceStatus.OPEN
_VOID = InvoiceStatus.VOID
_INCOMPLETE = SubscriptionStatus.INCOMPLETE
# Recorded before its first period was paid: counted created once read back live.
_NOT_YET_LIVE = frozenset({_INCOMPLETE, "requires_action"})
# A subscription that is live: billed, or to be once its trial ends or it is resumed
# (a paused one bills nothing, but its customer has not left: its cancel is churn).
_LIVE = frozenset(
    {
        SubscriptionStatus.TRIALING,
        SubscriptionStatus.ACTIVE,
        SubscriptionStatus.PAST_DUE,
        SubscriptionStatus.PAUSED,
    }
)
_CARD_DECLINED = "card_declined"


def _invoices(
    tenant: str, data: dict[str, Any]
) -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str], ...], tuple[tuple[str, int], ...]]:
    """The invoices a subscription outcome found paid, (currency, amount) each, those
    whose payment it found declined, (currency, code) each, the code named as a
    `payment.failed` names its decline (the decline code, else paystream's error code),
    and the tax of those paid, (currency, tax) each: an invoice's ``tax`` (exclusive tax
    added to its subtotal, or inclusive tax within it), once as the invoice is counted
    paid; none for an invoice without (untaxed, or recorded before tax), nor one whose
    tax is not a positive integer within its amount (malformed).

    Each invoice is counted once, as disputes are (see _disputes), by these rules:

    * Paid: an invoice in `related` with status paid that is new here (``created_by`` the
      outcome's ``command_id``, ``version`` 1: the create that charged the first one, or
      the refresh that read a renewal first), or one that moved on to paid (``version``
      past 1: an open one paid by a retry, found by the refresh that reads it). The
      handlers list an invoice only when it is new or has moved on, and paid is final:
      no later outcome carries it again.
    * Declined: an invoice new here (as above) that is open (its payment declined: a
      first invoice, `subscription.failed`; a renewal, `past_due`), or void with a
      failure code (declined, then voided before paystream read it). An open invoice
      declined again at a retry is not listed again (its status did not move), so each
      invoice's decline counts once; its later payment counts as paid.

    Nothing else: an entry of another tenant, or not an invoice, or without a currency
    paystream accepts and a positive integer amount, is malformed and left out. Only the
    currency, the amount, the tax and the code (screened for card numbers, by observe)
    are kept."""
    paid: list[tuple[str, int]] = []
    declined: list[tuple[str, str]] = []
    taxes: list[tuple[str, int]] = []
    command = data.get("command_id")
    related = data.get("related")
    seen: set[str] = set()
    for part in related[:_RELATED_MAX] if isinstance(related, list) else ():
        if not isinstance(part, dict) or part.get("entity_type") != "invoice":
            continue
        entity = part.get("entity_id")
        if not isinstance(entity, str) or entity in seen:
            continue
        seen.add(entity)
        found = _entity_money(tenant, part.get("object"))
        version = part.get("version")
        if found is None or type(version) is not int:
            continue
        obj = part["object"]
        status = obj.get("status")
        new = isinstance(command, str) and obj.get("created_by") == command and version == 1
        if status == _PAID and (new or version > 1):
            paid.append(found)
            tax = _minor(obj.get("tax"))
            # (within its total: more than what was charged where the provider took a
            # part from a credit balance, review h74h; an invoice without: its amount)
            if tax and tax <= max(found[1], _minor(obj.get("total"))):
                taxes.append((found[0], tax))
        elif new and (status == _OPEN or (status == _VOID and obj.get("failure_code"))):
            declined.append((found[0], _decline_label(obj.get("failure_code"))))
    return tuple(paid), tuple(declined), tuple(taxes)


# A one-off invoice's outcomes that move money, counted where subscriptions' invoices are.
_ONE_OFF_INVOICE = frozenset({"invoice.paid", "invoice.payment_failed"})


def _one_off_invoice(
    tenant: str, outcome: str, obj: dict[str, Any]
) -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str], ...], tuple[tuple[str, int], ...]]:
    """A one-off invoice's (invoice.*) as _invoices counts a subscription's: paid once
    (`invoice.paid` is emitted once per invoice), with its tax; each declined pay (a
    charge attempt of its own, as a `payment.failed`)."""
    found = _entity_money(tenant, obj)
    if found is None and outcome == "invoice.paid":
        found = _paid_by_credit(tenant, obj)
    if found is None or obj.get("subscription_id") is not None:
        return (), (), ()
    if outcome == "invoice.paid" and not found[1]:
        return (found,), (), ()  # (nothing charged: no tax collected by a charge either)
    if outcome == "invoice.payment_failed":
        return (), ((found[0], _decline_label(obj.get("failure_code"))),), ()
    tax = _minor(obj.get("tax"))
    taxed = ((found[0], tax),) if tax and tax <= max(found[1], _minor(obj.get("total"))) else ()
    return (found,), (), taxed


def _paid_by_credit(tenant: str, obj: Any) -> tuple[str, int] | None:
    """A one-off invoice paid with nothing left to charge (its customer's credit balance
    covered it as it was finalized: its amount 0, exactly): counted paid, of 0."""
    if not isinstance(obj, dict) or obj.get("tenant_id") != tenant:
        return None
    currency, amount = obj.get("currency"), obj.get("amount")
    if obj.get("status") != _PAID.value or type(amount) is not int or amount != 0:
        return None
    return (currency, 0) if isinstance(currency, str) and currency in CURRENCY_EXPONENTS else None


def _payment_tax(obj: dict[str, Any], captured: int) -> int:
    """The tax a succeeded payment collected: its ``amount_tax``, which the worker keeps
    as the tax of what it collects (the tax its calculation put within ``amount``; captured
    in part, that tax's share of the capture, pro-rated half up once by
    handlers._tax_collected: review h74h), so it is not pro-rated again here. None for a
    payment without (untaxed, or recorded before tax), nor for one whose tax or captured
    amount is not within its amount (malformed)."""
    tax, amount = _minor(obj.get("amount_tax")), _minor(obj.get("amount"))
    if not (tax and captured and amount) or tax > amount or captured > amount:
        return 0
    return tax


_PAYOUT = "payout."
# A payout's outcomes that say where it went: paid (arrived), failed (returned by the
# bank, at once or after it was paid), canceled (before it left); created in flight.
_PAYOUT_REACHED = {
    "payout.paid": PayoutStatus.PAID,
    "payout.failed": PayoutStatus.FAILED,
    "payout.canceled": PayoutStatus.CANCELED,
}
_PAYOUT_IN_FLIGHT = frozenset({PayoutStatus.PENDING, PayoutStatus.IN_TRANSIT})


def _payout_moves(outcome: str, data: dict[str, Any], obj: dict[str, Any]) -> tuple[str, ...]:
    """What a payout outcome counts, each once (the runner's counted ids take care of an
    outcome redelivered or re-emitted):

    * ``created``: the create's outcome (no ``previous_status``; every later one, a
      cancel's or a refresh's, names the status it had), in flight (``payout.created``,
      pending or in transit) or already where it went (the provider answered it paid,
      failed or canceled at once: created and that, both in this window).
    * ``paid``, ``failed``, ``canceled``: the outcome that finds it so, moved there from
      another status (``previous_status``): a refresh repeating `payout.paid` for a paid
      payout (a webhook sent again, a tenant reading it back) moves nothing. A paid payout
      that later fails (the bank returned it) counts ``failed`` then, and ``returned``:
      its ``paid`` stays where it was counted, and payouts in flight change by created
      less paid, canceled and failed that were not returned (README).

    Nothing for a payout outcome whose object's status is not the outcome's (malformed),
    nor for ``payout.updated`` (pending to in transit: still in flight)."""
    if data.get("entity_type") != "payout":
        return ()
    status = obj.get("status")
    reached = _PAYOUT_REACHED.get(outcome)
    previous = data.get("previous_status")
    moves: list[str] = []
    if previous is None:
        if outcome == "payout.created" and status in _PAYOUT_IN_FLIGHT:
            return ("created",)
        if reached is None or status != reached:
            return ()
        moves.append("created")
    elif (
        reached is None
        or status != reached
        or previous == reached
        or not isinstance(previous, str)
        or previous not in _PAYOUT_STATUSES
    ):
        return ()
    moves.append(str(reached))
    if reached == PayoutStatus.FAILED and previous == PayoutStatus.PAID:
        moves.append("returned")
    return tuple(moves)


_PAYOUT_STATUSES = frozenset(PayoutStatus)


def _decline_label(failure: Any) -> str:
    """An invoice's failure code as a `payment.failed` names it: the provider's decline
    code, else paystream's error code (as the handlers build a subscription's error)."""
    code = failure if isinstance(failure, str) and failure else None
    ours = card_failure(code, code)
    if code is not None and (code not in CARD_ERROR_CODES or code in DECLINE_CODES):
        return code
    return ours.value


def _subscription_facts(
    outcome: str,
    data: dict[str, Any],
    obj: dict[str, Any],
    error: dict[str, Any],
    paid: tuple[tuple[str, int], ...],
    currency: str | None,
) -> dict[str, Any]:
    """A subscription outcome's facts beyond its invoices.

    * Created: `subscription.created` (active, its first invoice paid, or trialing), or
      an `incomplete` one read back live (its first invoice paid after all), or a
      `requires_action` one (Paddle's, paid at checkout since). Canceled: a
      `subscription.canceled` of one that was live (``previous_status``): not of an
      incomplete one, never counted created, nor one canceled already (a parked cancel
      re-driven after a refresh read it canceled). So created less canceled is the
      window's change in live subscriptions.
    * The fraud rules: a subscription's creation charging its first invoice is a payment
      attempt the issuer answered, as a `payment.create` is (a card tester may create
      subscriptions instead of payments), and its first invoice declined by the issuer
      (`subscription.failed`, its ``error`` as a `payment.failed`'s) a card decline of the
      customer and payment method. A trial charges nothing: no attempt; ended now by a
      `subscription.update` (``trial_end_charge`` paid or declined), its first charge
      is one, counted as a create's. Renewals are not
      attempts: the provider charges them on its schedule (off-session), not a client,
      so their declines (cards expired, funds short) are churn, counted in the window
      (``invoices_declined``), never a card-testing signal: a tenant renewing a customer's
      five subscriptions on one expired card is not five card tests."""
    facts: dict[str, Any] = {}
    previous = data.get("previous_status")
    status = obj.get("status")
    if currency is not None:
        if outcome == "subscription.created" or (
            outcome == "subscription.updated" and previous in _NOT_YET_LIVE and status in _LIVE
        ):
            facts["subscription_created"] = True
        elif outcome == "subscription.canceled" and previous in _LIVE:
            facts["subscription_canceled"] = True
    if previous is None and outcome == "subscription.failed":
        card = _text(error.get("code")) in CARD_DECLINES
        facts.update(attempt=True, card_declined=card, answered=card)
    elif previous is None and outcome == "subscription.created" and paid:
        facts.update(attempt=True, answered=True)
    elif outcome == "subscription.updated" and previous == "trialing":
        # A trial ended now (`subscription.update` ``trial_end: "now"``) charges its first
        # period at the client's request, as a create does: its attempt (a card tester
        # may create trials and end them now), its decline a card decline.
        charge = data.get("trial_end_charge")
        if charge == "paid":
            facts.update(attempt=True, answered=True)
        elif charge == "declined":
            card = _text(error.get("code")) in CARD_DECLINES
            facts.update(attempt=True, card_declined=card, answered=card)
    if paid:
        facts["invoices_paid"] = paid
    return facts


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


# What one table record may hold of a string the outcome's producer chose: a forged
# outcome's megabyte-long code would otherwise be copied into the tenant's record.
LABEL_MAX_CHARS = 64  # outcome types, decline codes, reasons (paystream's are short)
ID_MAX_CHARS = 255  # customer and payment method ids (as for every id paystream takes)


def _screened_label(suspect: bool, value: Any) -> str | None:
    text = _text(value)
    if text is None:
        return None
    # (Nor a card number: copied into windows and alerts, kept and shown; review h67r.)
    if len(text) > LABEL_MAX_CHARS or (suspect and contains_card_number(text)):
        return "other"
    return text


def _screened_id(suspect: bool, value: Any) -> str | None:
    text = _text(value)
    if text is None or len(text) > ID_MAX_CHARS or (suspect and contains_card_number(text)):
        return None
    return text


def _minor(value: Any) -> int:
    # Outcomes carry integer minor units; anything else (a newer shape) counts nothing,
    # nor does an amount past what paystream accepts (not an outcome of its own): a
    # window's sums must stay within 64 bits, which is all the table's encoder writes.
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_MINOR_AMOUNT:
        return value
    return 0

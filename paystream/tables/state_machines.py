"""Explicit state machines: which command may act on an entity in which state."""

from __future__ import annotations

from paystream.errors import PaystreamError

__all__ = [
    "CONNECTED_ACCOUNT_MOVES",
    "INVOICE_MOVES",
    "INVOICE_TRANSITIONS",
    "PAYMENT_TRANSITIONS",
    "PAYOUT_MOVES",
    "SUBSCRIPTION_MOVES",
    "SUBSCRIPTION_TRANSITIONS",
    "TAX_RATE_TRANSITIONS",
    "TRANSFER_MOVES",
    "InvalidState",
    "check_invoice_transition",
    "check_payment_transition",
    "check_payout_move",
    "check_subscription_move",
    "check_subscription_transition",
    "check_tax_rate_transition",
    "check_transfer_move",
    "connected_account_status",
    "invoice_moves",
    "transfer_status",
]


class InvalidState(PaystreamError):
    """The command is not allowed in the entity's current state (`invalid_state`)."""


# payment status → command verbs allowed in it
PAYMENT_TRANSITIONS: dict[str, frozenset[str]] = {
    # the customer's step (3-D Secure) or the bank settles it at the provider: a
    # refresh reads the outcome back; a cancel is the provider's to refuse or grant
    "requires_action": frozenset({"cancel", "refresh"}),
    "processing": frozenset({"cancel", "refresh"}),
    # (an authorisation the provider let lapse reads back canceled)
    "authorized": frozenset({"capture", "cancel", "refresh"}),
    # (a read: a cardholder may dispute it days later, and the network decide that
    # dispute; only the provider knows, and a refresh reads it back)
    "succeeded": frozenset({"refund", "refresh"}),
    "canceled": frozenset(),
    "failed": frozenset(),
}


# A failed payment whose next action (a client secret) went to the customer is failed
# here, but its provider keeps it open (Stripe: requires_payment_method, after a failed
# 3-D Secure step or a decline after a passed one): the customer's browser may still pay
# it with another card. It may be read back, or canceled to close it at the provider.
_REOPENED = frozenset({"refresh", "cancel"})


def check_payment_transition(status: str, verb: str, open_at_provider: bool = False) -> None:
    allowed = PAYMENT_TRANSITIONS.get(status, frozenset())
    if status == "failed" and open_at_provider:
        allowed = _REOPENED
    if verb not in allowed:
        raise InvalidState(f"cannot {verb} a payment that is {status}")


# subscription status → command verbs allowed in it. A canceled one is final: nothing
# is billed again, and the provider reads it back as it is.
# "update" (subscription.update: its price, payment method or cancel at period end) is
# a live subscription's only: an incomplete one never billed a period to change, and a
# canceled one bills nothing again.
# "pause" is an active one's only (Paddle and Square pause an active subscription only;
# a trial bills nothing yet, a past_due one owes an invoice a pause would not settle).
# A paused one is resumed, canceled now, or read back: not updated (Paddle refuses
# changes to a paused subscription; resume it first), nor canceled at a period's end
# (none is billed to end).
SUBSCRIPTION_TRANSITIONS: dict[str, frozenset[str]] = {
    "trialing": frozenset({"cancel", "cancel_at_period_end", "update", "refresh"}),
    "active": frozenset({"cancel", "cancel_at_period_end", "update", "refresh", "pause"}),
    "past_due": frozenset({"cancel", "cancel_at_period_end", "update", "refresh"}),
    # (its first invoice declined: no period paid for to end, so canceled now only)
    "incomplete": frozenset({"cancel", "refresh"}),
    # (its customer has not paid the first period at checkout: nothing to end or change)
    "requires_action": frozenset({"cancel", "refresh"}),
    "paused": frozenset({"cancel", "resume", "refresh"}),
    "canceled": frozenset(),
}

# subscription status → the statuses it may move to (a provider's answer, a cancel). A
# read that would move it elsewhere (a stale answer: canceled read back active) is
# refused, never recorded.
# (paused: a pause, or one paused in the provider's dashboard read back; it leaves for
# active by a resume or at its resumes_at, or past_due where an invoice from before it
# is still open; or trialing: Stripe takes pause_collection on a trialing subscription
# too, so a trial paused in its dashboard is trialing again once resumed)
SUBSCRIPTION_MOVES: dict[str, frozenset[str]] = {
    "trialing": frozenset({"trialing", "active", "past_due", "paused", "canceled"}),
    "active": frozenset({"active", "past_due", "paused", "canceled"}),
    "past_due": frozenset({"past_due", "active", "paused", "canceled"}),
    "paused": frozenset({"paused", "active", "past_due", "trialing", "canceled"}),
    "incomplete": frozenset({"incomplete", "active", "canceled"}),
    "requires_action": frozenset({"requires_action", "active", "trialing", "canceled"}),
    "canceled": frozenset({"canceled"}),
}

# invoice status → the statuses it may move to: a draft (a one-off invoice's) is
# finalized (open), or voided; an open one is paid (a retry), voided or written off
# (uncollectible: a one-off invoice's, by invoice.mark_uncollectible or read back so),
# which may still be paid or voided at its provider; paid and void are final. A draft
# read back may have moved on at its provider meanwhile (finalized in its dashboard, then
# paid or written off there): any of those is taken (refused, a draft finalized and
# written off in the dashboard stayed a draft here, every refresh of it refused: review
# h81rb F2).
INVOICE_MOVES: dict[str, frozenset[str]] = {
    "draft": frozenset({"draft", "open", "paid", "void", "uncollectible"}),
    "open": frozenset({"open", "paid", "void", "uncollectible"}),
    "uncollectible": frozenset({"uncollectible", "paid", "void"}),
    "paid": frozenset({"paid"}),
    "void": frozenset({"void"}),
}


def check_subscription_transition(status: str, verb: str) -> None:
    if verb not in SUBSCRIPTION_TRANSITIONS.get(status, frozenset()):
        what = "cancel at period end" if verb == "cancel_at_period_end" else verb
        raise InvalidState(f"cannot {what} a subscription that is {status}")


def check_subscription_move(status: str, to: str) -> None:
    if to not in SUBSCRIPTION_MOVES.get(status, frozenset()):
        raise InvalidState(f"a subscription that is {status} cannot become {to}")


def invoice_moves(status: str, to: str) -> bool:
    """May an invoice recorded ``status`` take ``to`` (a provider's read)?"""
    return to in INVOICE_MOVES.get(status, frozenset())


# A one-off invoice's commands → the statuses each may act on (Stripe's: finalize a
# draft; pay an open one (Stripe's pay finalizes a draft first: paystream asks for
# invoice.finalize, so the total charged is one the tenant saw); void a draft or an
# open one (a paid one is refunded instead); write off an open one (Stripe's
# mark_uncollectible), which may still be paid or voided; read back a draft, an open or
# an uncollectible one (paid and void are final: their outcome is emitted once).
INVOICE_TRANSITIONS: dict[str, frozenset[str]] = {
    "finalize": frozenset({"draft"}),
    # (change a draft's lines and fields: Stripe's invoice items only on a draft)
    "update": frozenset({"draft"}),
    "pay": frozenset({"open", "uncollectible"}),
    "void": frozenset({"draft", "open", "uncollectible"}),
    "mark_uncollectible": frozenset({"open"}),
    "refresh": frozenset({"draft", "open", "uncollectible"}),
}

_INVOICE_INSTEAD = {
    ("pay", "draft"): ": finalize it first (invoice.finalize)",
    # (refund.create takes a paystream payment; an invoice's is its provider's)
    ("void", "paid"): ": refund its payment at its provider instead",
    ("finalize", "open"): ": it is finalized already",
    ("finalize", "uncollectible"): ": it is finalized already",
    ("update", "open"): ": a finalized invoice's total is fixed (void it and create another)",
    ("update", "uncollectible"): ": a finalized invoice's total is fixed",
    ("update", "paid"): ": it can change no more",
    ("update", "void"): ": it can change no more",
    ("mark_uncollectible", "draft"): ": finalize it first (invoice.finalize)",
    ("mark_uncollectible", "uncollectible"): ": it is uncollectible already",
    # (None for refresh: a paid or void invoice's, all it refuses, is answered from its
    # record before it is checked. A pay's paid or void and a void's void are refused
    # before too, in their own words.)
}


def check_invoice_transition(status: str, verb: str) -> None:
    if status not in INVOICE_TRANSITIONS[verb]:
        instead = _INVOICE_INSTEAD.get((verb, status), "")
        what = verb.replace("_", " ")
        raise InvalidState(f"cannot {what} an invoice that is {status}{instead}")


# payout status → the statuses it may move to (Stripe's payout lifecycle): pending →
# in_transit → paid; pending → canceled (a cancel); pending or in_transit → failed; and
# paid → failed (the bank returns a payout up to a few business days after it was marked
# paid). Canceled and failed are final. A provider's answer that would move it elsewhere
# (a stale read: pending after in_transit) is refused, never recorded.
PAYOUT_MOVES: dict[str, frozenset[str]] = {
    "pending": frozenset({"pending", "in_transit", "paid", "failed", "canceled"}),
    "in_transit": frozenset({"in_transit", "paid", "failed"}),
    "paid": frozenset({"paid", "failed"}),
    "failed": frozenset({"failed"}),
    "canceled": frozenset({"canceled"}),
}


def check_payout_move(status: str, to: str) -> None:
    if to not in PAYOUT_MOVES.get(status, frozenset()):
        raise InvalidState(f"a payout that is {status} cannot become {to}")


# transfer status → the statuses it may move to. Stripe's Transfer has no status: it is
# made whole, then reversed in parts (amount_reversed) until ``reversed`` (all of it).
# paystream names the three: created → partially_reversed → reversed (final).
TRANSFER_MOVES: dict[str, frozenset[str]] = {
    # (created -> created: a transfer.refresh that read back nothing reversed)
    "created": frozenset({"created", "partially_reversed", "reversed"}),
    "partially_reversed": frozenset({"partially_reversed", "reversed"}),
    # (reversed -> reversed: a let-through reverse answered after its reversal was
    # learnt, by a refresh or another reverse; nothing moves, as a payout's failed ->
    # failed. Nothing leaves it.)
    "reversed": frozenset({"reversed"}),
}


def transfer_status(amount: int, amount_reversed: int) -> str:
    """A transfer's status from what its provider says was reversed of it."""
    if amount_reversed <= 0:
        return "created"
    return "reversed" if amount_reversed >= amount else "partially_reversed"


def check_transfer_move(status: str, to: str) -> None:
    if to not in TRANSFER_MOVES.get(status, frozenset()):
        raise InvalidState(f"a transfer that is {status} cannot become {to}")


# tax rate status → what may be done with it. As Stripe's TaxRate: active → archived, and
# never back; an archived rate is applied to nothing new (a calculation, a subscription).
TAX_RATE_TRANSITIONS: dict[str, frozenset[str]] = {
    "active": frozenset({"archive", "apply"}),
    "archived": frozenset(),
}


def check_tax_rate_transition(status: str, verb: str) -> None:
    if verb not in TAX_RATE_TRANSITIONS.get(status, frozenset()):
        raise InvalidState(f"cannot {verb} a tax rate that is {status}")


# connected account status → the statuses it may move to. A new account is pending (its
# holder has not finished onboarding); then enabled (charges and payouts), restricted
# (not enabled: something disables it or is past due; new requirements come due for an
# enabled one too, and met, it is enabled again) or rejected (by the provider or the
# platform: final, as Stripe's rejected.* reasons are). Pending, once left, is left for
# good: connected_account_status never derives it again (its `was`), so the provider's
# answer is always a move taken here. The ledger checks these moves too.
CONNECTED_ACCOUNT_MOVES: dict[str, frozenset[str]] = {
    "pending": frozenset({"pending", "enabled", "restricted", "rejected"}),
    "enabled": frozenset({"enabled", "restricted", "rejected"}),
    "restricted": frozenset({"restricted", "enabled", "rejected"}),
    "rejected": frozenset({"rejected"}),
}


def connected_account_status(
    charges_enabled: bool,
    payouts_enabled: bool,
    details_submitted: bool,
    disabled_reason: str | None,
    was: str = "pending",
    takes_charges: bool = True,
) -> str:
    """A connected account's status from its provider's flags and the status it ``was``
    (a new account's: pending), always one CONNECTED_ACCOUNT_MOVES takes from ``was``:
    rejected by a ``rejected.*`` disabled_reason (and for good); enabled with charges and
    payouts both enabled; pending while its holder has not submitted its details (a new
    account's ``requirements.past_due`` included) and it was never anything else;
    restricted otherwise. A custom account (no Stripe dashboard) may be enabled with its
    details never submitted (the platform gave them through the API); disabled by Stripe
    later, it is restricted, not pending again (review h78m F1). An account that
    ``takes_charges`` not (it requested ``transfers`` only: Stripe's recipient service
    agreement, whose accounts "can't process payments", so charges_enabled stays false)
    is enabled with payouts enabled alone: it does all it asked for, receiving
    destination charges' transfers (review h79r_a L3)."""
    if was == "rejected" or (
        disabled_reason is not None and disabled_reason.startswith("rejected.")
    ):
        return "rejected"
    if (charges_enabled or not takes_charges) and payouts_enabled:
        return "enabled"
    if not details_submitted and was == "pending":
        return "pending"
    return "restricted"

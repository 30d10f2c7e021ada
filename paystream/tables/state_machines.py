"""Explicit state machines: which command may act on an entity in which state."""

from __future__ import annotations

from paystream.errors import PaystreamError

__all__ = [
    "PAYMENT_TRANSITIONS",
    "InvalidState",
    "check_payment_transition",
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

"""Explicit state machines: which command may act on an entity in which state."""

from __future__ import annotations

from paystream.errors import PaystreamError

__all__ = ["PAYMENT_TRANSITIONS", "InvalidState", "check_payment_transition"]


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
    "succeeded": frozenset({"refund"}),
    "canceled": frozenset(),
    "failed": frozenset(),
}


def check_payment_transition(status: str, verb: str) -> None:
    allowed = PAYMENT_TRANSITIONS.get(status, frozenset())
    if verb not in allowed:
        raise InvalidState(f"cannot {verb} a payment that is {status}")

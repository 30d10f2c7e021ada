"""Explicit state machines: which command may act on an entity in which state."""

from __future__ import annotations

from paystream.errors import PaystreamError

__all__ = [
    "PAYMENT_TRANSITIONS",
    "REOPENABLE_FAILURES",
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
    "succeeded": frozenset({"refund"}),
    "canceled": frozenset(),
    "failed": frozenset(),
}


# Failures the provider leaves open: the customer failed the 3-D Secure step, and Stripe
# puts the PaymentIntent back to requires_payment_method. The customer's browser holds its
# client secret (delivered in the next action) and may still pay it with another card, so
# it may be read back, or canceled to close it at the provider.
REOPENABLE_FAILURES = frozenset({"payment_intent_authentication_failure"})
_REOPENED = frozenset({"refresh", "cancel"})


def check_payment_transition(status: str, verb: str, failure_code: str | None = None) -> None:
    allowed = PAYMENT_TRANSITIONS.get(status, frozenset())
    if status == "failed" and failure_code in REOPENABLE_FAILURES:
        allowed = _REOPENED
    if verb not in allowed:
        raise InvalidState(f"cannot {verb} a payment that is {status}")

"""Stripe's documented test cards, keyed by the provider tokens that select them.

Only what paystream may keep is recorded (brand, last4, expiry, scenario); never a
card number. The fingerprint is derived from the card's identity so the same test
card always has the same fingerprint, as a real provider's would.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum

from paystream.gateways.errors import ErrorCode

__all__ = ["CARDS", "Behaviour", "RefundBehaviour", "TestCard", "card_for_token"]


class Behaviour(StrEnum):
    """What happens when the card is charged."""

    SUCCEED = "succeed"
    DECLINE = "decline"
    REQUIRE_ACTION = "require_action"  # 3-D Secure challenge before authorisation
    DISPUTE = "dispute"  # succeeds, then the cardholder disputes the charge


class RefundBehaviour(StrEnum):
    """What happens to a refund of the card's payment (Stripe's refund test cards). The
    later change is what the refund reads as from its first read back on (Stripe's:
    "some time later", with a webhook); the payment's refunded amount follows it."""

    SUCCEED = "succeed"
    FAIL_LATER = "fail_later"  # succeeded, then failed: expired_or_canceled_card (5126)
    PENDING = "pending"  # pending, then succeeded (7726)


@dataclass(frozen=True)
class TestCard:
    """One test card and the scenario it triggers."""

    __test__ = False  # not a pytest test class despite the name

    name: str
    brand: str
    last4: str
    behaviour: Behaviour = Behaviour.SUCCEED
    # A DECLINE card's error; a REQUIRE_ACTION card's once the customer passed the step.
    error: ErrorCode | None = None
    stripe_code: str | None = None  # Stripe's `code` on the card error
    decline_code: str | None = None  # Stripe's `decline_code`
    message: str = "Your card was declined."
    declines_on_attach: bool = False  # Stripe checks the card when saving it to a customer
    refund: RefundBehaviour = RefundBehaviour.SUCCEED
    exp_month: int = 12
    exp_year: int = 2034

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(f"paystream-sim:{self.name}".encode()).hexdigest()[:16]


def _decline(
    name: str,
    last4: str,
    error: ErrorCode,
    stripe_code: str,
    decline_code: str,
    message: str,
    *,
    on_attach: bool = True,
) -> TestCard:
    return TestCard(
        name=name,
        brand="visa",
        last4=last4,
        behaviour=Behaviour.DECLINE,
        error=error,
        stripe_code=stripe_code,
        decline_code=decline_code,
        message=message,
        declines_on_attach=on_attach,
    )


_VISA = TestCard("visa", "visa", "4242")
_MASTERCARD = TestCard("mastercard", "mastercard", "4444")
_AMEX = TestCard("amex", "amex", "8431")
# Stripe's other succeeding tokens (its test card list), brand and last four as Stripe
# has them: integrations test with them, and a 404 for each was no provider's answer
# (simulator review finding).
_SUCCEEDING = {
    "visa_debit": TestCard("visa_debit", "visa", "5556"),
    "mastercard_debit": TestCard("mastercard_debit", "mastercard", "8210"),
    "mastercard_prepaid": TestCard("mastercard_prepaid", "mastercard", "5100"),
    "discover": TestCard("discover", "discover", "1117"),
    "diners": TestCard("diners", "diners", "0004"),
    "jcb": TestCard("jcb", "jcb", "0505"),
    "unionpay": TestCard("unionpay", "unionpay", "0005"),
    "us": TestCard("us", "visa", "4242"),
}
_GENERIC = _decline(
    "generic", "0002", ErrorCode.CARD_DECLINED, "card_declined", "generic_decline",
    "Your card was declined.",
)  # fmt: skip
_FUNDS = _decline(
    "insufficient_funds", "9995", ErrorCode.INSUFFICIENT_FUNDS, "card_declined",
    "insufficient_funds", "Your card has insufficient funds.",
)  # fmt: skip
_LOST = _decline(
    "lost", "9987", ErrorCode.LOST_OR_STOLEN, "card_declined", "lost_card",
    "Your card was declined.",
)  # fmt: skip
_STOLEN = _decline(
    "stolen", "9979", ErrorCode.LOST_OR_STOLEN, "card_declined", "stolen_card",
    "Your card was declined.",
)  # fmt: skip
_FRAUD = _decline(
    "fraudulent", "0019", ErrorCode.FRAUDULENT, "card_declined", "fraudulent",
    "Your card was declined.",
)  # fmt: skip
_EXPIRED = _decline(
    "expired", "0069", ErrorCode.EXPIRED_CARD, "expired_card", "expired_card",
    "Your card has expired.",
)  # fmt: skip
_CVC = _decline(
    "incorrect_cvc", "0127", ErrorCode.INCORRECT_CVC, "incorrect_cvc", "incorrect_cvc",
    "Your card's security code is incorrect.",
)  # fmt: skip
_PROCESSING = _decline(
    "processing_error", "0119", ErrorCode.PROCESSING_ERROR, "processing_error",
    "processing_error", "An error occurred while processing your card. Try again in a little bit.",
)  # fmt: skip
# 0341 saves to a customer fine and only declines when charged (Stripe's chargeCustomerFail).
_CUSTOMER_FAIL = _decline(
    "charge_customer_fail", "0341", ErrorCode.CARD_DECLINED, "card_declined", "generic_decline",
    "Your card was declined.", on_attach=False,
)  # fmt: skip
# Stripe's 3-D Secure cards: 3184 always asks; 3220 is its 3DS2 card; 3155 asks unless
# set up for off-session use, and every payment here is on-session, so it asks too.
_3DS = TestCard("authentication_required", "visa", "3184", Behaviour.REQUIRE_ACTION)
_3DS2 = TestCard("three_d_secure_2_required", "visa", "3220", Behaviour.REQUIRE_ACTION)
_3DS_ON_SETUP = TestCard(
    "authentication_required_on_setup", "visa", "3155", Behaviour.REQUIRE_ACTION
)
# 3178 asks for 3-D Secure, and once the customer passes it the issuer declines the
# charge for insufficient funds: the payment waits for another card (Stripe:
# requires_payment_method), as after a failed step.
_3DS_THEN_FUNDS = TestCard(
    "authentication_required_charge_declined_insufficient_funds", "visa", "3178",
    Behaviour.REQUIRE_ACTION, ErrorCode.INSUFFICIENT_FUNDS, "card_declined", "insufficient_funds",
    "Your card has insufficient funds.",
)  # fmt: skip
_DISPUTE = TestCard("create_dispute", "visa", "0259", Behaviour.DISPUTE)
_REFUND_FAIL = TestCard("refund_fail", "visa", "5126", refund=RefundBehaviour.FAIL_LATER)
_PENDING_REFUND = TestCard("pending_refund", "visa", "7726", refund=RefundBehaviour.PENDING)


def _aliases(card: TestCard, *suffixes: str) -> dict[str, TestCard]:
    return {f"{prefix}{s}": card for s in suffixes for prefix in ("pm_card_", "tok_")}


CARDS: dict[str, TestCard] = {
    **_aliases(_VISA, "visa"),
    **_aliases(_MASTERCARD, "mastercard"),
    **_aliases(_AMEX, "amex"),
    **{
        alias: card
        for name, card in _SUCCEEDING.items()
        for alias, _ in _aliases(card, name).items()
    },
    **_aliases(_GENERIC, "chargeDeclined", "visa_chargeDeclined"),
    **_aliases(_FUNDS, "chargeDeclinedInsufficientFunds", "visa_chargeDeclinedInsufficientFunds"),
    **_aliases(_LOST, "chargeDeclinedLostCard", "visa_chargeDeclinedLostCard"),
    **_aliases(_STOLEN, "chargeDeclinedStolenCard", "visa_chargeDeclinedStolenCard"),
    **_aliases(_FRAUD, "chargeDeclinedFraudulent", "visa_chargeDeclinedFraudulent"),
    **_aliases(_EXPIRED, "chargeDeclinedExpiredCard", "visa_chargeDeclinedExpiredCard"),
    **_aliases(_CVC, "chargeDeclinedIncorrectCvc", "visa_chargeDeclinedIncorrectCvc"),
    **_aliases(_PROCESSING, "chargeDeclinedProcessingError", "visa_chargeDeclinedProcessingError"),
    **_aliases(_CUSTOMER_FAIL, "chargeCustomerFail"),
    **_aliases(_3DS, "authenticationRequired"),
    **_aliases(_3DS2, "threeDSecure2Required"),
    **_aliases(_3DS_ON_SETUP, "authenticationRequiredOnSetup"),
    **_aliases(_3DS_THEN_FUNDS, "authenticationRequiredChargeDeclinedInsufficientFunds"),
    **_aliases(_DISPUTE, "createDispute"),
    **_aliases(_REFUND_FAIL, "refundFail"),
    **_aliases(_PENDING_REFUND, "pendingRefund"),
}


def card_for_token(token: str) -> TestCard | None:
    """The test card a provider token names, or None if it is not a test token."""
    return CARDS.get(token)

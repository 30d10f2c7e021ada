"""Stripe's rules on charge amounts, shared by the Stripe gateway and the simulator.

A module of its own, outside `stripe/`, so that the simulator (which answers as Stripe
does) applies the same rules without loading Stripe's SDK.
"""

from __future__ import annotations

import string
import unicodedata
from collections.abc import Mapping
from urllib.parse import urlsplit

from paystream.money import (
    CURRENCY_EXPONENTS,
    WITHDRAWN_CURRENCIES,
    Money,
    format_minor,
    minor_unit_exponent,
)

__all__ = [
    "ACCOUNT_BUSINESS_TYPES",
    "ACCOUNT_CAPABILITIES",
    "MINIMUM_CHARGE",
    "STRIPE_HUNDREDTHS",
    "STRIPE_WHOLE_UNIT_PAYOUTS",
    "THREE_DECIMAL_INCREMENT",
    "account_link_url_problem",
    "account_takes_charges",
    "below_minimum_charge",
    "chargeable_increment",
    "custom_account_capabilities_problem",
    "from_stripe_units",
    "payment_parameters_problem",
    "payout_amount_problem",
    "payout_descriptor_problem",
    "payout_units_problem",
    "platform_only_problem",
    "stripe_units_problem",
    "three_decimal_problem",
    "withdrawn_currency_problem",
]

# Stripe's published minimum charge amounts, in minor units
# (docs.stripe.com/currencies#minimum-and-maximum-charge-amounts). Stripe applies them
# in the account's settlement currency, converting a charge in another currency first,
# so the Stripe gateway leaves the judgement to Stripe; the simulator plays an account
# that settles in each charge's own currency, and sets no minimum (beyond one minor unit)
# for a currency outside the table, having no exchange rates to convert with.
MINIMUM_CHARGE: dict[str, int] = {
    "USD": 50,
    "AED": 200,
    "AUD": 50,
    "BGN": 100,
    "BRL": 50,
    "CAD": 50,
    "CHF": 50,
    "CZK": 1500,
    "DKK": 250,
    "EUR": 50,
    "GBP": 30,
    "HKD": 400,
    "HUF": 17500,
    "INR": 50,
    "JPY": 50,
    "MXN": 1000,
    "MYR": 200,
    "NOK": 300,
    "NZD": 50,
    "PLN": 200,
    "RON": 200,
    "SEK": 300,
    "SGD": 50,
    "THB": 1000,
}


def below_minimum_charge(amount: Money) -> str | None:
    """Stripe's `amount_too_small` message for a charge under the currency's minimum."""
    minimum = MINIMUM_CHARGE.get(amount.currency)
    if minimum is None or amount.amount >= minimum:
        return None
    return f"Amount must be at least {format_minor(minimum, amount.currency)} (amount_too_small)"


# Stripe's three-decimal currencies (docs.stripe.com/currencies, "Three-decimal
# currencies"): its API counts BHD, JOD, KWD, OMR and TND in thousandths, but a charge
# (and a capture or refund) in them must be a multiple of 10 minor units, the last digit
# 0, for its payment partners: 5.124 KWD is charged as 5.120 (5120). Every other currency
# is taken in single minor units.
THREE_DECIMAL_INCREMENT = 10


def chargeable_increment(currency: str) -> int:
    """The step a chargeable amount in ``currency`` moves by, in minor units: 10 for a
    three-decimal currency (Stripe's rule above), else 1. What paystream.tax rounds a
    tax to, so that a taxed total stays chargeable."""
    # A currency found as a key is already normalised (upper-case ASCII, no spaces), so
    # `minor_unit_exponent` would answer the same; anything else takes the full path.
    exponent = CURRENCY_EXPONENTS.get(currency)
    if exponent is None:
        exponent = minor_unit_exponent(currency)
    return THREE_DECIMAL_INCREMENT if exponent == 3 else 1


def three_decimal_problem(amount: Money) -> str | None:
    """Why Stripe refuses an amount in a three-decimal currency (BHD, JOD, KWD, OMR,
    TND): its card partners take only multiples of 10 minor units."""
    # (chargeable_increment's rule, inline: every payment passes here)
    exponent = CURRENCY_EXPONENTS.get(amount.currency)
    if exponent is None:
        exponent = minor_unit_exponent(amount.currency)
    if exponent == 3 and amount.amount % THREE_DECIMAL_INCREMENT:
        return (
            f"Stripe takes {amount.currency} amounts in multiples of "
            f"{THREE_DECIMAL_INCREMENT} minor units (got {amount.amount})"
        )
    return None


# Zero-decimal currencies (paystream counts them in whole units, as Stripe's zero-decimal
# list does) that Stripe's API nonetheless takes in hundredths, "for backwards
# compatibility" (its currencies page, "Special cases": "To charge 5 UGX, provide an
# amount value of 500"; any amount not a multiple of 100 is refused).
STRIPE_HUNDREDTHS = frozenset({"UGX"})


def stripe_units_problem(amount: Money) -> str | None:
    """Why the Stripe gateway does not send ``amount``: Stripe would read its whole units
    as hundredths (a hundredth of the money), and this version does not convert."""
    if amount.currency in STRIPE_HUNDREDTHS:
        return (
            f"{amount.currency} is not taken through Stripe: Stripe counts it in hundredths "
            f"(to charge {format_minor(amount.amount, amount.currency)} it would be sent "
            f"{amount.amount * 100})"
        )
    return None


# Stripe's statement descriptor rules (docs.stripe.com/get-started/account/statement-
# descriptors): at least one letter, none of these characters.
_DESCRIPTOR_FORBIDDEN = frozenset("<>\\'\"*")
# A payout's descriptor (Stripe's payout API: at most 22 characters; its statement
# descriptor rules, as for payments but with `*` allowed, paystream's rule before: at
# least one letter, none of these characters). Printed on the tenant's bank statement
# and carried into bank files (NACHA's for US ACH): no control or format characters
# either (a NUL; a right-to-left override, U+202E, that shows it as another text).
PAYOUT_DESCRIPTOR_MAX = 22
_PAYOUT_DESCRIPTOR_FORBIDDEN = frozenset("<>\\'\"")
_LETTERS = frozenset(string.ascii_letters)
# Unicode categories no bank statement shows: Cc control, Cf format (bidi overrides and
# isolates, zero-width characters), Cs surrogates, Co private use, Cn unassigned, Zl and
# Zp line and paragraph separators.
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def _unprintable_problem(descriptor: str) -> str | None:
    """Why a descriptor no bank statement can print is refused (a payment's, printed on
    the customer's card statement, as a payout's on the tenant's), or None."""
    if any(unicodedata.category(ch) in _UNPRINTABLE for ch in descriptor):
        return (
            "a statement descriptor may not contain control or format characters "
            "(line breaks, NUL, bidirectional overrides, zero-width characters)"
        )
    return None


def payout_descriptor_problem(descriptor: str) -> str | None:
    """Why a payout's statement descriptor is refused, or None (the command's
    validation and the simulator's, which answers as Stripe does)."""
    if not descriptor:
        return "a statement descriptor may not be empty"
    if len(descriptor) > PAYOUT_DESCRIPTOR_MAX:
        return f"a statement descriptor is at most {PAYOUT_DESCRIPTOR_MAX} characters"
    if any(ch in _PAYOUT_DESCRIPTOR_FORBIDDEN for ch in descriptor):
        return "a statement descriptor may not contain < > \\ ' or \""
    if unprintable := _unprintable_problem(descriptor):
        return unprintable
    if _LETTERS.isdisjoint(descriptor):
        # (Digits only, as "12345", is the commonest case: Stripe refuses those.)
        return "a statement descriptor must contain at least one letter (A-Z)"
    return None


def from_stripe_units(amount: int, currency: str) -> int | None:
    """An amount Stripe reports in ``currency`` (upper case) in paystream's minor units:
    its hundredths of a STRIPE_HUNDREDTHS currency in whole units (Stripe's 50000 UGX is
    500 UGX), None if not a whole unit (not read as one, rounded or not); any other as
    it stands."""
    if currency not in STRIPE_HUNDREDTHS:
        return amount
    whole, rest = divmod(amount, 100)
    return None if rest else whole


# Two-decimal currencies Stripe pays out in whole units only (its currencies page,
# "Special cases": it treats HUF and TWD as zero-decimal for payouts, though charges
# take two decimals; a payout amount must be evenly divisible by 100).
STRIPE_WHOLE_UNIT_PAYOUTS = frozenset({"HUF", "TWD"})


def payout_units_problem(amount: Money) -> str | None:
    """Why Stripe refuses a payout of ``amount``: one in HUF or TWD not in whole units."""
    if amount.currency in STRIPE_WHOLE_UNIT_PAYOUTS and amount.amount % 100:
        return (
            f"Stripe pays out {amount.currency} in whole units only: the amount must be "
            f"evenly divisible by 100 (got {amount.amount}, "
            f"{format_minor(amount.amount, amount.currency)})"
        )
    return None


def payout_amount_problem(amount: Money) -> str | None:
    """Why Stripe refuses a payout of ``amount`` before any balance is read: a
    three-decimal currency not in multiples of 10 minor units, HUF or TWD not in whole
    units, a withdrawn currency. The one rule the Stripe gateway applies before its call
    and the simulator applies as Stripe would (review h74t F1: the simulator paid out
    KWD 1.005 and HUF 1.50, which Stripe refuses)."""
    return (
        three_decimal_problem(amount)
        or payout_units_problem(amount)
        or withdrawn_currency_problem(amount)
    )


# URL schemes that run or render in the customer's browser rather than return it anywhere.
_SCRIPT_SCHEMES = frozenset({"javascript", "vbscript", "data", "blob", "file"})


def payment_parameters_problem(
    statement_descriptor: str | None, return_url: str | None, metadata: Mapping[str, str]
) -> str | None:
    """Why Stripe refuses a payment's descriptor or metadata, or why a return URL is no
    place to send a customer back to (one that runs script in their browser)."""
    if statement_descriptor is not None:
        if any(ch in _DESCRIPTOR_FORBIDDEN for ch in statement_descriptor):
            return "a statement descriptor may not contain < > \\ ' \" or *"
        if unprintable := _unprintable_problem(statement_descriptor):
            return unprintable
        if not any("a" <= ch.lower() <= "z" for ch in statement_descriptor):
            return "a statement descriptor must contain at least one letter"
    if any("[" in key or "]" in key for key in metadata):
        return "metadata keys may not contain square brackets"
    if return_url is not None:
        try:
            parts = urlsplit(return_url)
        except ValueError:  # ("Invalid IPv6 URL": an unclosed "[")
            return "return_url is not a valid URL"
        scheme = parts.scheme.lower()
        if not scheme or (scheme in ("http", "https") and not parts.netloc):
            return "return_url must be an absolute URL (https://..., or an app's own scheme)"
        if scheme in _SCRIPT_SCHEMES:
            return f"return_url may not be a {scheme}: URL"
    return None


# Stripe Connect: the business types an account takes, and the capabilities paystream
# requests for one (Stripe's names; an account's requested capabilities).
ACCOUNT_BUSINESS_TYPES = frozenset({"individual", "company", "non_profit", "government_entity"})
ACCOUNT_CAPABILITIES = frozenset({"card_payments", "transfers"})
_LOOPBACK_HOSTS = frozenset({"localhost", "::1"})


def account_takes_charges(capabilities: list[str]) -> bool:
    """Whether an account is to process charges (``card_payments`` requested; none named:
    Stripe requests the platform's defaults, which take them) or only receive transfers
    (``transfers`` alone: a recipient)."""
    return not capabilities or "card_payments" in capabilities


def platform_only_problem(connected_account: str) -> str:
    """Why a tenant acting for a connected account (Stripe-Account) is refused the
    connected-account operations: Stripe makes, links and reads accounts on the
    platform's own key, never under a merchant's."""
    return (
        "connected accounts are made and read on the platform's own Stripe key: this "
        f"tenant acts for the connected account {connected_account} "
        "(--connected-account); send it for a tenant configured without one"
    )


def custom_account_capabilities_problem() -> str:
    """Why a custom account without requested capabilities is refused: Stripe requires
    ``capabilities`` for an account without a Stripe-hosted dashboard (custom ones)."""
    return "a custom account requests at least one capability (card_payments, transfers)"


def account_link_url_problem(name: str, url: str) -> str | None:
    """Why an account link's ``refresh_url`` or ``return_url`` (``name``) is refused: an
    absolute https URL (Stripe's live mode takes nothing else), or http to a loopback
    host only (a platform's development machine). The merchant's browser is sent there
    from the onboarding, so a plain-http host elsewhere would be seen and changed on the
    way."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
    except ValueError:  # ("Invalid IPv6 URL": an unclosed "[")
        return f"{name} is not a valid URL"
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not host:
        return f"{name} must be an absolute https:// URL"
    if scheme == "http" and not (host in _LOOPBACK_HOSTS or host.startswith("127.")):
        return f"{name} must be https (http only to localhost or 127.0.0.1)"
    if parts.username is not None or parts.password is not None:
        return f"{name} may not hold a user name or password"
    return None


def withdrawn_currency_problem(amount: Money) -> str | None:
    """Why a new payment may not take ``amount``'s currency (withdrawn from ISO 4217).
    (Before the call, as Stripe's other rules: a create an older version let through to
    Stripe in it, whose batch a crash lost, is refused though Stripe may have charged it
    unless Stripe itself refuses the currency; the simulator decides inside its keyed
    call, which answers such a create from its key.)"""
    if amount.currency in WITHDRAWN_CURRENCIES:
        return f"{amount.currency} has been withdrawn from ISO 4217: no new payment takes it"
    return None

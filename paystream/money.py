"""Money as integer minor units plus an ISO 4217 currency; never a float."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt

__all__ = [
    "CURRENCY_EXPONENTS",
    "WITHDRAWN_CURRENCIES",
    "Money",
    "format_minor",
    "minor_unit_exponent",
    "normalise_currency",
]

# Minor-unit exponents for the currencies the gateways settle, as Stripe counts them (and
# CLDR); absent means "not accepted". They are ISO 4217's but for MGA, which ISO gives 2
# decimals and Stripe none: 100 is a hundred ariary (a client converting with ISO data,
# Java's Currency or glibc, must not multiply by 100). Zero-decimal and three-decimal
# currencies are listed explicitly because they are where amount bugs live (JPY 500 is
# five hundred yen, not five).
CURRENCY_EXPONENTS: dict[str, int] = {
    **dict.fromkeys(
        [
            "AED",
            "AUD",
            "BGN",
            "BRL",
            "CAD",
            "CHF",
            "CNY",
            "CZK",
            "DKK",
            "EUR",
            "GBP",
            "HKD",
            "HUF",
            "IDR",
            "ILS",
            "INR",
            "MXN",
            "MYR",
            "NOK",
            "NZD",
            "PHP",
            "PLN",
            "RON",
            "SEK",
            "SGD",
            "THB",
            "TRY",
            "TWD",
            "USD",
            "ZAR",
        ],
        2,
    ),
    **dict.fromkeys(
        [
            "BIF",
            "CLP",
            "DJF",
            "GNF",
            "JPY",
            "KMF",
            "KRW",
            "MGA",
            "PYG",
            "RWF",
            "UGX",
            "VND",
            "VUV",
            "XAF",
            "XOF",
            "XPF",
        ],
        0,
    ),
    **dict.fromkeys(["BHD", "JOD", "KWD", "OMR", "TND"], 3),
}


# Every accepted code, upper- and lower-case ("USD", "usd"), → the code: the spellings
# that commands, records and provider answers use, looked up at once (see below).
_SPELLINGS: dict[str, str] = {
    **{code: code for code in CURRENCY_EXPONENTS},
    **{code.lower(): code for code in CURRENCY_EXPONENTS},
}


def normalise_currency(value: Any) -> str:
    """Upper-case a currency code and check it is one we accept."""
    # Fast path (it runs in every Money validation, several per command): an exact ``str``
    # equal to an accepted code or to its lower case is what the full path makes of it
    # (nothing to strip, ASCII, upper-cased to that code, accepted). Anything else, a
    # ``str`` subclass, whitespace, mixed case, another code, a non-string, takes the
    # full path below, with its errors. (``type() is str`` first: an unhashable value
    # would raise TypeError in the lookup.)
    if type(value) is str:
        code = _SPELLINGS.get(value)
        if code is not None:
            return code
    return _normalise_currency_full(value)


def _normalise_currency_full(value: Any) -> str:
    """``normalise_currency`` without its fast path (tests/test_money.py compares them)."""
    if not isinstance(value, str):
        raise ValueError("currency must be a string ISO 4217 code")
    code = value.strip()
    # ASCII only, before upper-casing: "u\u017fd".upper() is "USD" (U+017F, long s).
    code = code.upper() if code.isascii() else code
    if code not in CURRENCY_EXPONENTS:
        raise ValueError(f"unsupported currency {value!r}: expected an ISO 4217 code")
    return code


def minor_unit_exponent(currency: str) -> int:
    """Digits after the decimal point for a currency (JPY 0, USD 2, KWD 3)."""
    return CURRENCY_EXPONENTS[normalise_currency(currency)]


Currency = Annotated[str, BeforeValidator(normalise_currency)]

# Codes ISO 4217 has withdrawn (BGN: Bulgaria took the euro on 2026-01-01; acquirers
# decline new authorisations in it). Still known, so that payments recorded in them are
# shown, refunded, read back and written to the ledger; refused for a new payment.
WITHDRAWN_CURRENCIES: frozenset[str] = frozenset({"BGN"})

# Amounts are bounded so that a hostile command cannot smuggle in a value that overflows
# a PostgreSQL BIGINT or a provider's arithmetic. Twelve digits: the largest a provider
# takes (Stripe: IDR, 999,999,999,999 for Rp 9,999,999,999.99; eight digits in every
# other currency, which it answers beyond with invalid_request). A thousand of them
# (a tenant's daily volume cap, tenancy/limits.py) stays under 2**53, exact in any JSON
# reader's doubles.
MAX_MINOR_AMOUNT = 999_999_999_999


class Money(BaseModel):
    """An amount in the currency's minor unit; StrictInt refuses floats, bools and strings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    amount: StrictInt = Field(ge=0, le=MAX_MINOR_AMOUNT)
    currency: Currency

    def __str__(self) -> str:
        return format_minor(self.amount, self.currency)


def format_minor(amount: int, currency: str) -> str:
    """An amount in minor units shown in major units: 123456 USD → "1234.56 USD". Any
    size (limits may exceed what one Money holds)."""
    code = normalise_currency(currency)
    exp = CURRENCY_EXPONENTS[code]
    if exp == 0:
        return f"{amount} {code}"
    sign = "-" if amount < 0 else ""  # (divmod floors: -5 would read -1.95)
    major, minor = divmod(abs(amount), 10**exp)
    return f"{sign}{major}.{minor:0{exp}d} {code}"

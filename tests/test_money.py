"""Money: integer minor units and ISO 4217 currencies only."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from paystream.money import Money, minor_unit_exponent


@pytest.mark.parametrize(
    ("amount", "currency", "shown"),
    [
        (1999, "usd", "19.99 USD"),
        (500, "JPY", "500 JPY"),
        (1234, "KWD", "1.234 KWD"),
        (5, "EUR", "0.05 EUR"),
    ],
)
def test_minor_units_per_currency(amount: int, currency: str, shown: str) -> None:
    assert str(Money(amount=amount, currency=currency)) == shown


@pytest.mark.parametrize("amount", [19.99, "1999", True, -1, 10**12])
def test_floats_strings_bools_and_out_of_range_are_refused(amount: object) -> None:
    with pytest.raises(ValidationError):
        Money(amount=amount, currency="USD")  # type: ignore[arg-type]


@pytest.mark.parametrize("currency", ["XXX", "US", "", 840])
def test_unknown_currencies_are_refused(currency: object) -> None:
    with pytest.raises(ValidationError):
        Money(amount=1, currency=currency)  # type: ignore[arg-type]


def test_exponents() -> None:
    assert (minor_unit_exponent("jpy"), minor_unit_exponent("USD"), minor_unit_exponent("BHD")) == (
        0,
        2,
        3,
    )

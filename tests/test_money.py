"""Money: integer minor units and ISO 4217 currencies only."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from paystream.money import Money, format_minor, minor_unit_exponent, normalise_currency


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


# Where an exponent is wrong, 10x or 100x the money moves: every currency whose minor
# unit is not the cent, and MGA, where Stripe (and paystream) differ from ISO 4217.
@pytest.mark.parametrize(
    ("currency", "exponent"),
    [("BHD", 3), ("JOD", 3), ("KWD", 3), ("OMR", 3), ("TND", 3),
     ("JPY", 0), ("KRW", 0), ("VND", 0), ("CLP", 0), ("PYG", 0), ("UGX", 0), ("VUV", 0),
     ("XAF", 0), ("XOF", 0), ("MGA", 0), ("HUF", 2), ("TWD", 2), ("IDR", 2)],
)  # fmt: skip
def test_the_currencies_whose_minor_unit_is_not_the_cent(currency: str, exponent: int) -> None:
    assert minor_unit_exponent(currency) == exponent


def test_the_largest_amount_is_accepted_and_one_more_is_not() -> None:
    from paystream.money import MAX_MINOR_AMOUNT

    assert Money(amount=MAX_MINOR_AMOUNT, currency="USD").amount == MAX_MINOR_AMOUNT
    with pytest.raises(ValidationError):
        Money(amount=MAX_MINOR_AMOUNT + 1, currency="USD")


@pytest.mark.parametrize(
    "code", ["u\u017fd", "\u017fek", "\u017fgd", "\u0131dr", "\u0131ls", "\u0131nr"]
)
def test_letters_that_upper_case_to_ascii_are_no_currency(code: str) -> None:
    """str.upper() maps U+017F (long s) to S and U+0131 (dotless i) to I: "u\u017fd" was
    taken for USD, in commands and in tenant limits (review finding)."""
    with pytest.raises(ValueError):
        normalise_currency(code)


@pytest.mark.parametrize(
    ("amount", "currency", "shown"),
    [(-5, "USD", "-0.05 USD"), (-105, "KWD", "-0.105 KWD"), (-199, "USD", "-1.99 USD"),
     (-7, "JPY", "-7 JPY")],
)  # fmt: skip
def test_negative_amounts_are_shown_as_such(amount: int, currency: str, shown: str) -> None:
    assert format_minor(amount, currency) == shown  # (divmod floors: -5 read -1.95)


def _full_path(value: object) -> str:
    """normalise_currency without its fast path (the reference)."""
    from paystream.money import _normalise_currency_full

    return _normalise_currency_full(value)


class _Str(str):
    pass


class _Shouty(str):
    def strip(self, chars: str | None = None) -> str:
        return "EUR"


def _currency_inputs() -> list[object]:
    from paystream.money import CURRENCY_EXPONENTS

    values: list[object] = []
    for code in CURRENCY_EXPONENTS:
        values += [
            code,
            code.lower(),
            code.title(),
            code.swapcase().title(),
            f" {code}",
            f"{code.lower()}\n",
            code[:2],
            code + "X",
            _Str(code),
            _Str(code.lower()),
        ]
    values += [
        "",
        " ",
        "XXX",
        "usd\x00",
        "U\u017fD",
        "u\u017fd",
        "\u0131nr",
        "\uff35\uff33\uff24",  # fullwidth USD
        "usd ",
        b"USD",
        840,
        None,
        3.5,
        ["USD"],
        {"USD": 1},
        {"USD"},
        _Shouty("usd"),
        _Shouty("ZZZ"),
        "u" * 10_000,
    ]
    return values


def test_the_fast_path_answers_as_the_full_path_does() -> None:
    """normalise_currency looks exact upper- and lower-case codes up first: for every
    other input (and those) it must return or raise exactly what the full path does."""
    for value in _currency_inputs():
        try:
            expected: object = _full_path(value)
        except ValueError as exc:
            expected = ("ValueError", str(exc))
        try:
            got: object = normalise_currency(value)
        except ValueError as exc:
            got = ("ValueError", str(exc))
        assert got == expected, value
        assert type(got) is type(expected)


def test_money_validation_errors_are_unchanged_by_the_fast_path() -> None:
    for value in _currency_inputs():
        try:
            expected: object = _full_path(value)
        except ValueError as exc:
            expected = f"Value error, {exc}"
        try:
            got: object = Money(amount=1, currency=value).currency  # type: ignore[arg-type]
        except ValidationError as exc:
            (err,) = exc.errors()
            got = err["msg"]
        assert got == expected, value

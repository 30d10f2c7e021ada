"""The card-number guard: catches how people write card numbers, never ids."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paystream.streams.pan import contains_card_number, luhn_valid


def _luhn_complete(prefix: str) -> str:
    for d in "0123456789":
        if luhn_valid(prefix + d):
            return prefix + d
    raise AssertionError


@pytest.mark.parametrize(
    "text",
    [
        "4242424242424242",
        "4242 4242 4242 4242",
        "4242-4242-4242-4242",
        "3782 822463 10005",
        "pay with 4000056655665556 please",
        {"nested": ["x", "5555555555554444"]},
        4242424242424242,
    ],
)
def test_card_numbers_are_found(text: object) -> None:
    assert contains_card_number(text)


@pytest.mark.parametrize(
    "text",
    [
        "4242424242424241",
        "pm_card_visa",
        "order-2026-11-27",
        "+1 415 555 0100",
        "12345",
        "4242 4242-4242 4242",
        True,
        1999,
    ],
)
def test_other_things_are_not(text: object) -> None:
    assert not contains_card_number(text)


@given(st.text(alphabet="0123456789", min_size=12, max_size=18))
def test_every_luhn_valid_digit_run_of_card_length_is_caught(prefix: str) -> None:
    assert contains_card_number(f"note: {_luhn_complete(prefix)} thanks")


@given(st.uuids())
def test_uuids_never_trip_it(value: uuid.UUID) -> None:
    digits = "".join(c if c.isdigit() else str(ord(c) % 10) for c in str(value).replace("-", ""))
    all_digit_uuid = f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"
    assert not contains_card_number(str(value))
    assert not contains_card_number(all_digit_uuid)

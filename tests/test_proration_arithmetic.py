"""paystream.proration: Stripe's proration arithmetic, in integer minor units, at the
boundaries of a period and of rounding."""

from __future__ import annotations

from fractions import Fraction

import pytest

from paystream.proration import prorate, remaining_fraction

START, END = 1_000_000, 1_000_000 + 30 * 86_400  # a 30-day period


def _amounts(old: int, new: int, at: int, currency: str = "EUR") -> list[int]:
    return [line.amount for line in prorate(old, new, currency, START, END, at)]


def test_half_way_an_upgrade_credits_half_the_old_price_and_charges_half_the_new() -> None:
    # Stripe's own example: 100 → 200 half-way: -50 and +100, a net 50.
    assert _amounts(10_000, 20_000, START + 15 * 86_400) == [-5_000, 10_000]


def test_a_downgrade_is_a_net_credit() -> None:
    assert sum(_amounts(2_500, 1_500, START + 10 * 86_400)) < 0
    assert _amounts(2_500, 1_500, START + 10 * 86_400) == [-1_667, 1_000]


def test_at_the_period_start_the_whole_prices_and_at_its_end_nothing() -> None:
    assert _amounts(1_500, 2_500, START) == [-1_500, 2_500]
    assert _amounts(1_500, 2_500, START - 5) == [-1_500, 2_500]  # (clamped to the start)
    assert _amounts(1_500, 2_500, END) == []
    assert _amounts(1_500, 2_500, END + 1) == []


def test_one_second_before_the_end_rounds_to_nearly_nothing() -> None:
    # 1500 * 1 / 2_592_000 is far below half a cent: both lines round to 0.
    assert _amounts(1_500, 2_500, END - 1) == [0, 0]
    # A price large enough that one second is worth more than half a unit.
    assert _amounts(10**10, 2 * 10**10, END - 1) == [-3_858, 7_716]


def test_the_same_price_makes_no_lines() -> None:
    assert _amounts(1_500, 1_500, START + 100) == []


def test_a_half_rounds_up_and_a_credit_is_the_negative_of_the_same_charge() -> None:
    # 3 * 1/2 = 1.5 → 2 (a half up), the credit -2 (away from zero, not -1).
    period = (0, 2)
    lines = prorate(3, 3 + 2, "EUR", *period, at=1)
    assert [line.amount for line in lines] == [-2, 3]  # 5 * 1/2 = 2.5 → 3
    back = prorate(5, 3, "EUR", *period, at=1)
    assert [line.amount for line in back] == [-3, 2]
    assert sum(line.amount for line in (*lines, *back)) == 0  # there and back nets nothing


def test_just_below_a_half_rounds_down() -> None:
    # 999_999 * 1/2_000_000 = 0.4999995 → 0; 1_000_001 * 1/2_000_000 = 0.5000005 → 1.
    assert [x.amount for x in prorate(999_999, 1_000_001, "EUR", 0, 2_000_000, 1_999_999)] == [
        0,
        1,
    ]


def test_a_three_decimal_currency_is_rounded_to_its_chargeable_increment() -> None:
    # KWD: multiples of 10 minor units (Stripe's rule), a half up: 1234 * 1/2 = 617 → 620.
    assert [x.amount for x in prorate(1_234, 2_000, "KWD", 0, 2, 1)] == [-620, 1_000]


def test_lines_span_from_the_change_to_the_period_end() -> None:
    at = START + 7 * 86_400
    lines = prorate(1_500, 2_500, "EUR", START, END, at)
    assert {(x.start, x.end) for x in lines} == {(at, END)}
    assert all(x.as_dict()["proration"] is True for x in lines)


def test_the_fraction_is_exact_and_refuses_a_period_that_does_not_end_after_it_starts() -> None:
    assert remaining_fraction(0, 3, 1) == Fraction(2, 3)
    with pytest.raises(ValueError):
        remaining_fraction(5, 5, 5)
    with pytest.raises(ValueError):
        prorate(-1, 5, "EUR", 0, 10, 5)

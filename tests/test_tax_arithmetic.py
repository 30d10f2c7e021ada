"""The tax arithmetic (paystream/tax.py): Stripe Billing's rules for TaxRate objects, in
integer minor units, every total adding up exactly."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paystream.tax import (
    MAX_RATES_PER_LINE,
    Line,
    Rate,
    calculate,
    parse_percentage,
    round_half_up,
)


def rate(rid: str, pct: str, inclusive: bool = False) -> Rate:
    return Rate(rid, parse_percentage(pct), inclusive)


def test_exclusive_vat_is_added_on_top() -> None:
    calc = calculate([Line(10000, 1, [rate("vat", "20")])])
    assert (calc.amount_subtotal, calc.amount_tax, calc.amount_total) == (10000, 2000, 12000)
    assert calc.lines[0].taxable_amount == 10000


def test_inclusive_vat_is_contained() -> None:
    # 12000 with 20% in it: 2000 of tax, 10000 net; the total stays the price.
    calc = calculate([Line(12000, 1, [rate("vat", "20", inclusive=True)])])
    assert (calc.amount_subtotal, calc.amount_tax, calc.amount_total) == (12000, 2000, 12000)
    assert calc.lines[0].taxable_amount == 10000


def test_stripe_rounding_examples_half_up_per_line() -> None:
    # Stripe's own example: 15% of $0.43 is 0.0645 -> 6; of $4.84 is 0.7265 -> 73.
    calc = calculate([Line(43, 1, [rate("t", "15")]), Line(484, 1, [rate("t", "15")])])
    assert [line.amount_tax for line in calc.lines] == [6, 73]
    assert calc.amount_tax == 79 and calc.amount_total == 606


@pytest.mark.parametrize(
    ("amount", "pct", "tax"),
    [
        (1, "50", 1),  # 0.5 -> 1 (half up)
        (3, "50", 2),  # 1.5 -> 2
        (1, "49.9999", 0),
        (1005, "8.5", 85),  # 85.425 -> 85
        (1010, "8.5", 86),  # 85.85 -> 86
        (10, "5", 1),  # 0.5 -> 1
        (0, "20", 0),
        (999_999, "100", 999_999),
        (12345, "0", 0),
        (1, "0.0001", 0),
    ],
)
def test_exclusive_rounding_edges(amount: int, pct: str, tax: int) -> None:
    assert calculate([Line(amount, 1, [rate("r", pct)])]).amount_tax == tax


@pytest.mark.parametrize(
    ("amount", "pct", "tax"),
    [
        (100, "10", 9),  # 100 * 10/110 = 9.0909 -> 9
        (1000, "10", 91),  # 90.909 -> 91
        (299, "4", 12),  # 11.5 -> 12 (half up, as Stripe rounds a tax amount)
        (1, "100", 1),  # 0.5 -> 1
        (5, "25", 1),  # 1.0
        (600_00, "10", 5455),  # Stripe's example: EUR 600 with 10% inclusive
    ],
)
def test_inclusive_rounding_edges(amount: int, pct: str, tax: int) -> None:
    calc = calculate([Line(amount, 1, [rate("r", pct, inclusive=True)])])
    assert calc.amount_tax == tax
    assert calc.amount_total == amount
    assert calc.lines[0].taxable_amount == amount - tax


def test_several_exclusive_rates_each_rounded_on_the_line() -> None:
    # A US sales tax split state 6.25% + county 1.5% on 1999: 124.9375 -> 125, 29.985 -> 30.
    calc = calculate([Line(1999, 1, [rate("state", "6.25"), rate("county", "1.5")])])
    assert [t.amount for t in calc.lines[0].taxes] == [125, 30]
    assert calc.amount_total == 1999 + 155


def test_several_inclusive_rates_share_the_line() -> None:
    # 1150 holding 10% + 5%: net 1000; 1150*10/115 = 100, 1150*5/115 = 50.
    calc = calculate(
        [Line(1150, 1, [rate("a", "10", inclusive=True), rate("b", "5", inclusive=True)])]
    )
    line = calc.lines[0]
    assert [t.amount for t in line.taxes] == [100, 50]
    assert line.taxable_amount == 1000 and calc.amount_total == 1150


def test_exclusive_on_the_net_of_an_inclusive_rate() -> None:
    # 1100 holding 10% (100), plus 5% on the net 1000 (50).
    calc = calculate([Line(1100, 1, [rate("inc", "10", inclusive=True), rate("exc", "5")])])
    assert calc.amount_tax_inclusive == 100 and calc.amount_tax_exclusive == 50
    assert calc.amount_total == 1150


def test_quantity_taxes_the_line_not_the_unit() -> None:
    # 3 x 333 at 10%: 99.9 -> 100 on the line (per unit it would be 3 x 33 = 99).
    calc = calculate([Line(333, 3, [rate("r", "10")])])
    assert calc.lines[0].amount == 999 and calc.amount_tax == 100


def test_jpy_zero_decimal_rounds_to_the_yen() -> None:
    # JPY 1,234 at 10% consumption tax: 123.4 -> 123 yen; inclusive 1,100: 100 yen.
    assert calculate([Line(1234, 1, [rate("jct", "10")])]).amount_tax == 123
    assert calculate([Line(1100, 1, [rate("jct", "10", True)])]).amount_tax == 100


def test_tax_by_rate_sums_over_lines() -> None:
    vat = rate("vat", "20")
    calc = calculate([Line(101, 1, [vat]), Line(101, 1, [vat])])
    assert calc.tax_by_rate == {"vat": 40}  # 20.2 -> 20, per line


@pytest.mark.parametrize(
    "bad", ["", "-1", "100.0001", "101", "1e2", "20.12345", " 20", "20 ", "+5", "NaN", "1,5"]
)
def test_percentage_strings_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_percentage(bad)


def test_percentage_never_a_float() -> None:
    with pytest.raises(ValueError):
        parse_percentage(20.5)  # type: ignore[arg-type]


@pytest.mark.parametrize("good", ["0", "100", "100.0000", "7.25", "19.6", "0.0001", "99.9999"])
def test_percentage_strings_taken(good: str) -> None:
    assert parse_percentage(good) == Decimal(good)


def test_a_rate_once_per_line() -> None:
    with pytest.raises(ValueError):
        calculate([Line(100, 1, [rate("a", "1"), rate("a", "1")])])


def test_round_half_up() -> None:
    assert [round_half_up(Decimal(x)) for x in ("0.5", "1.5", "2.5", "2.4999")] == [1, 2, 3, 2]


_pct = st.decimals(min_value=0, max_value=100, places=4, allow_nan=False, allow_infinity=False)
_rates = st.lists(st.tuples(_pct, st.booleans()), max_size=MAX_RATES_PER_LINE)
_lines = st.lists(
    st.tuples(st.integers(0, 10**9), st.integers(1, 1000), _rates), min_size=1, max_size=8
)


@settings(max_examples=300, deadline=None)
@given(_lines, st.sampled_from([None, "GBP", "JPY", "KWD", "BHD"]))
def test_every_total_adds_up(
    raw: list[tuple[int, int, list[tuple[Decimal, bool]]]], currency: str | None
) -> None:
    lines = [
        Line(a, q, [Rate(f"r{i}", p, inc) for i, (p, inc) in enumerate(rs)], reference=str(n))
        for n, (a, q, rs) in enumerate(raw)
    ]
    calc = calculate(lines, currency)
    # (the currency's chargeable increment: 10 minor units in a three-decimal currency)
    step = 10 if currency in ("KWD", "BHD") else 1
    half = Decimal(step) / 2
    assert calc.amount_subtotal == sum(line.amount * line.quantity for line in lines)
    assert calc.amount_tax == sum(line.amount_tax for line in calc.lines)
    assert calc.amount_tax == calc.amount_tax_inclusive + calc.amount_tax_exclusive
    assert calc.amount_total == calc.amount_subtotal + calc.amount_tax_exclusive
    assert sum(calc.tax_by_rate.values()) == calc.amount_tax
    for line, result in zip(lines, calc.lines, strict=True):
        assert result.amount == line.amount * line.quantity
        assert sum(t.amount for t in result.taxes) == result.amount_tax
        # The net plus the inclusive tax is the price; the total the price plus exclusive.
        assert result.taxable_amount + result.amount_tax_inclusive == result.amount
        assert result.amount_total == result.amount + result.amount_tax_exclusive
        # Tax never takes more than the price, nor the total falls below it.
        assert result.taxable_amount >= 0
        assert result.amount_tax_inclusive <= result.amount
        assert result.amount_total >= result.amount
        inclusive = [Decimal(x.percentage) for x in result.taxes if x.inclusive]
        # A price under one increment of its tax keeps its tax within it (whole steps).
        clamped = result.amount_tax_inclusive == result.amount - result.amount % step
        if inclusive:
            # The line's inclusive tax is rounded once: within half a step of the exact.
            whole = Decimal(result.amount) * sum(inclusive) / (100 + sum(inclusive))
            assert abs(Decimal(result.amount_tax_inclusive) - whole) <= half or clamped
        for t in result.taxes:
            assert t.amount >= 0
            assert t.amount % step == 0  # chargeable: KWD tax in tens of fils
            exact = (
                Decimal(result.amount) * Decimal(t.percentage) / (100 + sum(inclusive))
                if t.inclusive
                else Decimal(result.taxable_amount) * Decimal(t.percentage) / 100
            )
            # (several inclusive rates share one rounded tax: each within one step)
            shared = t.inclusive and (len(inclusive) > 1 or clamped)
            assert abs(Decimal(t.amount) - exact) <= (Decimal(step) if shared else half)
        if result.amount % step == 0:
            assert result.amount_total % step == 0  # a chargeable price: a chargeable total


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**9), _pct)
def test_single_exclusive_rate_is_stripes_half_up(amount: int, pct: Decimal) -> None:
    tax = calculate([Line(amount, 1, [Rate("r", pct, False)])]).amount_tax
    exact = Decimal(amount) * pct / 100
    assert tax == int(exact + Decimal("0.5")) // 1  # floor(x + 0.5): half up for x >= 0


# ---- several inclusive rates share one rounded tax (review h74h) -----------------------


@pytest.mark.parametrize(
    ("amount", "rates"),
    [
        # 3 x 100% inclusive on 2: each share 0.5, rounded on its own 1: 3 of tax in 2.
        (2, [("a", "100"), ("b", "100"), ("c", "100")]),
        # 50% + 50% inclusive on 2: exact tax 1.0, net 1; each 0.5 -> 1: tax 2, net 0.
        (2, [("a", "50"), ("b", "50")]),
        # GST 5% + QST 9.975% inclusive: the shares rounded apart drifted 0.95 off.
        (1873, [("gst", "5"), ("qst", "9.975")]),
    ],
)
def test_several_inclusive_rates_keep_the_line_and_the_exact_tax(
    amount: int, rates: list[tuple[str, str]]
) -> None:
    line = calculate([Line(amount, 1, [rate(i, p, True) for i, p in rates])]).lines[0]
    total_pct = sum(Decimal(p) for _, p in rates)
    exact = Decimal(amount) * total_pct / (100 + total_pct)
    assert line.taxable_amount >= 0, line
    assert line.amount_tax_inclusive <= amount, line
    # The line's tax is the exact inclusive tax rounded (within half a minor unit), as
    # a single rate of the summed percentage gives; not n halves away from it.
    assert abs(Decimal(line.amount_tax_inclusive) - exact) <= Decimal("0.5"), line
    for t, (_, p) in zip(line.taxes, rates, strict=True):
        share = Decimal(amount) * Decimal(p) / (100 + total_pct)
        assert abs(Decimal(t.amount) - share) < 1, line  # each within one unit


def test_an_exclusive_rate_on_a_negative_net_never_lowers_the_total() -> None:
    # 3 x 100% inclusive + 100% exclusive on 2: the net was -1, the exclusive tax -1, and
    # the line's amount_total (what the customer pays) 1, under its own price of 2.
    rates = [rate("a", "100", True), rate("b", "100", True), rate("c", "100", True)]
    calc = calculate([Line(2, 1, [*rates, rate("x", "100")])])
    assert calc.amount_tax_exclusive >= 0, calc
    assert calc.amount_total >= calc.amount_subtotal, calc


def test_largest_remainder_shares_ties_to_the_earlier_rate() -> None:
    # 10% + 10% inclusive on 11: exact tax 11 x 20/120 = 1.83 -> 2, shares 0.92 each:
    # 1 each. On 5: 0.83 -> 1, shares 0.42 each: the earlier rate takes it.
    two = [rate("a", "10", True), rate("b", "10", True)]
    assert [t.amount for t in calculate([Line(11, 1, two)]).lines[0].taxes] == [1, 1]
    assert [t.amount for t in calculate([Line(5, 1, two)]).lines[0].taxes] == [1, 0]


def test_one_inclusive_rate_is_rounded_as_before() -> None:
    line = calculate([Line(1234, 1, [rate("v", "100", True)])]).lines[0]
    assert (line.amount_tax, line.taxable_amount) == (617, 617)
    line = calculate([Line(1999, 1, [rate("v", "20", True)])]).lines[0]
    assert line.amount_tax == 333  # 333.17


# ---- three-decimal currencies: tax in the currency's chargeable increment (h74h) ------


@pytest.mark.parametrize("currency", ["BHD", "JOD", "KWD", "OMR", "TND", "kwd"])
def test_three_decimal_tax_is_rounded_to_tens_half_up(currency: str) -> None:
    ex = calculate([Line(1000, 1, [rate("t", "7.5")])], currency)
    assert (ex.amount_tax, ex.amount_total) == (80, 1080)  # 75 -> 80 (half up)
    down = calculate([Line(1000, 1, [rate("t", "7.4")])], currency)
    assert down.amount_tax == 70  # 74 -> 70
    inc = calculate([Line(1000, 1, [rate("t", "7.5", True)])], currency)
    assert (inc.amount_tax, inc.amount_total, inc.lines[0].taxable_amount) == (70, 1000, 930)
    # Several rates, inclusive and exclusive: every tax in tens, the total chargeable.
    mixed = calculate(
        [Line(1990, 1, [rate("a", "5", True), rate("b", "9.975", True), rate("c", "7.5")])],
        currency,
    )
    assert all(t.amount % 10 == 0 for t in mixed.lines[0].taxes), mixed
    assert mixed.amount_total % 10 == 0, mixed


def test_a_price_under_one_increment_keeps_its_tax_within_it() -> None:
    # 7 fils with 5 x 100% inclusive: 5.83 of tax rounds to 10, more than the price:
    # held to the price's whole tens (none).
    line = calculate([Line(7, 1, [rate(str(i), "100", True) for i in range(5)])], "KWD")
    assert (line.lines[0].amount_tax, line.lines[0].taxable_amount) == (0, 7)


@pytest.mark.parametrize(("currency", "tax"), [("GBP", 75), ("JPY", 75), (None, 75)])
def test_other_currencies_round_to_the_minor_unit(currency: str | None, tax: int) -> None:
    assert calculate([Line(1000, 1, [rate("t", "7.5")])], currency).amount_tax == tax


def test_zero_decimal_and_edges() -> None:
    jpy = calculate([Line(999, 3, [rate("c", "10")])], "JPY")
    assert (jpy.amount_subtotal, jpy.amount_tax, jpy.amount_total) == (2997, 300, 3297)
    zero = calculate([Line(0, 1, [rate("v", "20")])], "KWD")
    assert (zero.amount_tax, zero.amount_total) == (0, 0)
    # Two exclusive rates are not compounded: each on the net.
    two = calculate([Line(1000, 1, [rate("g", "5"), rate("q", "9.975")])])
    assert two.amount_tax == 50 + 100 and two.amount_total == 1150

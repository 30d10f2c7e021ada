"""Tax on amounts by tenant-defined rates, as Stripe Billing applies TaxRate objects.

Pure and deterministic: integer minor units in, integer minor units out; percentages are
``Decimal`` read from strings (never floats), at most four decimal places, 0 to 100.

The rules (one line at a time, one rate at a time, each tax rounded to the minor unit):

* A line's amount is its unit ``amount`` times its ``quantity``; tax is computed on the
  line, never per unit (Stripe computes an invoice line's tax on the line's amount).
* Exclusive rate ``p``: tax = line's taxable amount * p / 100, rounded half up, added on
  top of the price. Stripe rounds each tax amount of each line to the nearest minor
  unit, a half up (https://support.stripe.com/questions/rounding-rules-for-stripe-fees:
  a 15% line of $0.43 is 0.0645 → $0.06, one of $4.84 is 0.7265 → $0.73; "0.025 rounds
  up to 0.03"); TaxRate percentages take "up to 4 decimal places"
  (https://stripe.com/docs/billing/taxes/tax-rates).
* Inclusive rate ``p``: the tax is contained in the price: tax = amount - amount / (1 +
  p/100) = amount * p / (100 + p), rounded half up (Stripe: an inclusive 10% on €600
  leaves the total €600, https://support.stripe.com/questions/inclusive-and-exclusive-
  tax-options-in-the-tax-rate-api-and-stripe-tax). Several inclusive rates on one line
  share it: the price is net * (1 + ΣP/100), each rate's tax is amount * p_i / (100 +
  ΣP), each rounded half up; the line's taxable (net) amount is what is left of the
  amount once those taxes are taken out, so the line always adds up exactly.
* Exclusive rates on a line that also has inclusive ones are computed on that net
  amount (the price without its inclusive tax), never on tax.
* Totals: ``amount_subtotal`` is the lines' amounts (inclusive tax in them),
  ``amount_tax`` all tax, ``amount_total`` = subtotal + exclusive tax.

The same for every currency: minor units are the currency's (JPY 1 is one yen, so its
tax is rounded to the yen, as Stripe rounds it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

__all__ = [
    "MAX_LINES",
    "MAX_RATES_PER_LINE",
    "PERCENTAGE_PATTERN",
    "Calculation",
    "Line",
    "LineResult",
    "Rate",
    "RateTax",
    "calculate",
    "parse_percentage",
    "round_half_up",
]

# A percentage as a decimal string: 0 to 100, up to four decimal places (Stripe's).
PERCENTAGE_PATTERN = r"^(?:100(?:\.0{1,4})?|[0-9]{1,2}(?:\.[0-9]{1,4})?)$"
_PERCENTAGE = re.compile(PERCENTAGE_PATTERN)
# Lines per calculation, and tax rates per line (Stripe takes up to 5 on a Checkout line;
# an invoice line up to 10: the smaller bound, so every rate set paystream accepts is one
# Stripe takes wherever it is applied).
MAX_LINES = 100
MAX_RATES_PER_LINE = 5
_HUNDRED = Decimal(100)
_ONE = Decimal(1)


def parse_percentage(text: str) -> Decimal:
    """``text`` as a Decimal percentage; ValueError unless it is a decimal string from 0 to
    100 with at most four decimal places (no sign, exponent, spaces or float)."""
    if not isinstance(text, str) or _PERCENTAGE.fullmatch(text) is None:
        raise ValueError(
            "percentage must be a decimal string from 0 to 100 with at most 4 decimal places"
        )
    return Decimal(text)


def round_half_up(value: Decimal) -> int:
    """``value`` to the nearest integer, a half away from zero (values here are >= 0)."""
    return int(value.quantize(_ONE, rounding=ROUND_HALF_UP))


@dataclass(frozen=True)
class Rate:
    id: str
    percentage: Decimal
    inclusive: bool


@dataclass(frozen=True)
class Line:
    amount: int  # unit amount, minor units
    quantity: int = 1
    rates: Sequence[Rate] = ()
    reference: str | None = None


@dataclass(frozen=True)
class RateTax:
    tax_rate_id: str
    percentage: str
    inclusive: bool
    taxable_amount: int
    amount: int


@dataclass(frozen=True)
class LineResult:
    reference: str | None
    amount: int  # the line's amount: unit amount * quantity (inclusive tax in it)
    quantity: int
    taxable_amount: int  # the amount tax is computed on (net of inclusive tax)
    amount_tax: int
    amount_tax_inclusive: int
    amount_tax_exclusive: int
    amount_total: int  # amount + exclusive tax
    taxes: tuple[RateTax, ...] = ()


@dataclass(frozen=True)
class Calculation:
    lines: tuple[LineResult, ...]
    amount_subtotal: int
    amount_tax: int
    amount_tax_inclusive: int
    amount_tax_exclusive: int
    amount_total: int
    # Per rate, its tax over every line (what a tax report sums), in first-seen order.
    tax_by_rate: dict[str, int] = field(default_factory=dict)


def _line(line: Line) -> LineResult:
    if line.amount < 0 or line.quantity < 1:
        raise ValueError("a line's amount is >= 0 and its quantity >= 1")
    ids = [r.id for r in line.rates]
    if len(set(ids)) != len(ids):
        raise ValueError("a tax rate is applied to a line once")
    amount = line.amount * line.quantity
    inclusive = [r for r in line.rates if r.inclusive]
    exclusive = [r for r in line.rates if not r.inclusive]
    shared = sum((r.percentage for r in inclusive), Decimal(0))
    inclusive_taxes = [
        round_half_up(Decimal(amount) * r.percentage / (_HUNDRED + shared)) for r in inclusive
    ]
    net = amount - sum(inclusive_taxes)
    exclusive_taxes = [round_half_up(Decimal(net) * r.percentage / _HUNDRED) for r in exclusive]
    by_id = {
        **{r.id: (r, t) for r, t in zip(inclusive, inclusive_taxes, strict=True)},
        **{r.id: (r, t) for r, t in zip(exclusive, exclusive_taxes, strict=True)},
    }
    taxes = tuple(
        RateTax(
            tax_rate_id=r.id,
            percentage=str(r.percentage),
            inclusive=r.inclusive,
            taxable_amount=net,
            amount=by_id[r.id][1],
        )
        for r in line.rates
    )
    tax_in, tax_ex = sum(inclusive_taxes), sum(exclusive_taxes)
    return LineResult(
        reference=line.reference,
        amount=amount,
        quantity=line.quantity,
        taxable_amount=net,
        amount_tax=tax_in + tax_ex,
        amount_tax_inclusive=tax_in,
        amount_tax_exclusive=tax_ex,
        amount_total=amount + tax_ex,
        taxes=taxes,
    )


def calculate(lines: Sequence[Line]) -> Calculation:
    """Every line's tax, and the totals (see the module's rules)."""
    results = tuple(_line(line) for line in lines)
    by_rate: dict[str, int] = {}
    for result in results:
        for tax in result.taxes:
            by_rate[tax.tax_rate_id] = by_rate.get(tax.tax_rate_id, 0) + tax.amount
    subtotal = sum(r.amount for r in results)
    tax_in = sum(r.amount_tax_inclusive for r in results)
    tax_ex = sum(r.amount_tax_exclusive for r in results)
    return Calculation(
        lines=results,
        amount_subtotal=subtotal,
        amount_tax=tax_in + tax_ex,
        amount_tax_inclusive=tax_in,
        amount_tax_exclusive=tax_ex,
        amount_total=subtotal + tax_ex,
        tax_by_rate=by_rate,
    )

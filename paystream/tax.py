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
  share it: the price is net * (1 + ΣP/100), and the line's inclusive tax, amount * ΣP /
  (100 + ΣP), is rounded once (half up: within half a unit of the exact figure, never
  more than the amount), then shared among the rates by largest remainder (each rate's
  exact share is amount * p_i / (100 + ΣP); each gets its share rounded down, and the
  units left go to the largest fractions, ties to the earlier rate: each within one unit
  of its exact share, the shares adding up to the line's tax). Rounding each share on its
  own instead drifts n halves from the exact tax, and can take more than the price (3 x
  100% on 2: 1 + 1 + 1). One inclusive rate: its tax rounded, as above. The line's
  taxable (net) amount is what is left of the amount once that tax is taken out, so the
  line always adds up exactly and the net is never negative. (Stripe documents no
  allocation for several inclusive rates: review h74h.)
* Exclusive rates on a line that also has inclusive ones are computed on that net
  amount (the price without its inclusive tax), never on tax.
* Totals: ``amount_subtotal`` is the lines' amounts (inclusive tax in them),
  ``amount_tax`` all tax, ``amount_total`` = subtotal + exclusive tax.

The same for every currency: minor units are the currency's (JPY 1 is one yen, so its
tax is rounded to the yen, as Stripe rounds it). Rounded to the currency's **chargeable
increment** (``calculate(..., currency=)``): a three-decimal currency (BHD, JOD, KWD, OMR,
TND) is charged only in multiples of 10 minor units (Stripe's rule,
paystream.gateways.stripe_rules.chargeable_increment, which the simulator applies too:
docs.stripe.com/currencies, "Three-decimal currencies"), so each tax there is rounded,
half up, to a multiple of 10 (KWD 1.000 at 7.5% is 0.075 → 0.080; 1.990 at 7.5% is
0.14925 → 0.150), exclusive and inclusive alike: a line whose amount is chargeable
keeps a chargeable total. Elsewhere the increment is 1, the minor unit.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

from paystream.gateways.stripe_rules import chargeable_increment

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
    "largest_remainder",
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


def _rounded(value: Decimal, step: int) -> int:
    """``value`` (>= 0) to the nearest multiple of ``step`` minor units, a half up."""
    return round_half_up(value / step) * step if step != 1 else round_half_up(value)


def _shared_inclusive(amount: int, percentages: list[Decimal], step: int) -> list[int]:
    """The line's inclusive tax, rounded once to ``step`` (amount * ΣP / (100 + ΣP), half
    up, never more than the amount), shared among its rates by largest remainder in
    ``step`` units (each within one step of its exact share, ties to the earlier rate)."""
    if not percentages:
        return []
    shared = sum(percentages, Decimal(0))
    if shared == 0:
        return [0] * len(percentages)
    # At most the amount (in whole steps): with a step of 1 the rounding never passes
    # it; with 10, a price under 10 would (7 at 5 x 100%: 5.83 -> 10).
    units = min(
        round_half_up(Decimal(amount) * shared / (_HUNDRED + shared) / step), amount // step
    )
    if len(percentages) == 1:
        return [units * step]
    # Each rate's exact share (in steps) rounded down; the steps left (0 to n: the exact
    # shares add up to the exact tax, which ``units`` is rounded from) go one each to the
    # largest fractions. Each share is then its exact one rounded down or up.
    exact = [Decimal(amount) * p / (_HUNDRED + shared) / step for p in percentages]
    return [f * step for f in largest_remainder(units, exact)]


def largest_remainder(units: int, exact: Sequence[Decimal | Fraction]) -> list[int]:
    """``units`` shared out by the ``exact`` shares (>= 0) it is rounded from: each one
    rounded down, the units left (0 to ``len(exact)`` when ``units`` is their sum rounded)
    one each to the largest fractions, ties to the earlier share. Each share is then its
    exact one rounded down or up, and they sum to ``units``."""
    floors = [int(e) for e in exact]  # (>= 0: int() truncates toward zero, a floor)
    order = sorted(range(len(exact)), key=lambda i: (-(exact[i] - floors[i]), i))
    for i in order[: units - sum(floors)]:
        floors[i] += 1
    return floors


def _line(line: Line, step: int = 1) -> LineResult:
    if line.amount < 0 or line.quantity < 1:
        raise ValueError("a line's amount is >= 0 and its quantity >= 1")
    ids = [r.id for r in line.rates]
    if len(set(ids)) != len(ids):
        raise ValueError("a tax rate is applied to a line once")
    amount = line.amount * line.quantity
    inclusive = [r for r in line.rates if r.inclusive]
    exclusive = [r for r in line.rates if not r.inclusive]
    inclusive_taxes = _shared_inclusive(amount, [r.percentage for r in inclusive], step)
    net = amount - sum(inclusive_taxes)
    exclusive_taxes = [_rounded(Decimal(net) * r.percentage / _HUNDRED, step) for r in exclusive]
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


def calculate(lines: Sequence[Line], currency: str | None = None) -> Calculation:
    """Every line's tax, and the totals (see the module's rules): in ``currency``, each
    tax rounded to its chargeable increment (10 minor units for a three-decimal currency;
    None: the minor unit)."""
    step = 1 if currency is None else chargeable_increment(currency)
    results = tuple(_line(line, step) for line in lines)
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

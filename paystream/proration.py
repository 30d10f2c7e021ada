"""Prorations of a subscription's price change mid-period, as Stripe Billing computes them.

Pure and deterministic: integer minor units and unix seconds in, integer minor units out;
the fraction is a ``Fraction`` of seconds, never a float.

Stripe's rules (https://stripe.com/docs/billing/subscriptions/prorations): a price change
at time ``at`` in the period ``[start, end)`` makes two proration lines, computed "down
to the second ... using the current billing period's start and end times":

* a credit for the unused time at the old price: ``-old * (end - at) / (end - start)``;
* a charge for the remaining time at the new price: ``new * (end - at) / (end - start)``.

Each line is rounded on its own to the nearest minor unit, a half up (away from zero: a
credit is the negative of the same charge, so changing a price back and forth at one
instant nets to zero), as Stripe rounds amounts it computes (its rounding rules:
https://support.stripe.com/questions/rounding-rules-for-stripe-fees, "0.025 rounds up to
0.03"; its proration docs state no other rule), to the currency's chargeable increment
(10 minor units for a three-decimal currency: paystream.gateways.stripe_rules). At the
period's start the lines are the whole prices; at or after its end, nothing. A trial
prorates nothing (Stripe bills a trial's period at zero: there is nothing paid to credit
nor anything to charge until the trial ends, at the new price).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from paystream.gateways.stripe_rules import chargeable_increment

__all__ = ["ProrationLine", "prorate", "remaining_fraction"]


@dataclass(frozen=True, slots=True)
class ProrationLine:
    """One proration line: ``amount`` (negative: a credit) for ``[start, end)``."""

    description: str
    amount: int
    start: int
    end: int

    def as_dict(self) -> dict[str, object]:
        return {
            "description": self.description,
            "amount": self.amount,
            "period_start": self.start,
            "period_end": self.end,
            "proration": True,
        }


def remaining_fraction(start: int, end: int, at: int) -> Fraction:
    """The share of the period ``[start, end)`` still to run at ``at``, 0 to 1."""
    if end <= start:
        raise ValueError("a period ends after it starts")
    at = min(max(at, start), end)
    return Fraction(end - at, end - start)


def _part(amount: int, share: Fraction, step: int) -> int:
    """``amount * share`` (amount >= 0) to the nearest multiple of ``step``, a half up."""
    exact = Fraction(amount) * share / step
    # (exact integer arithmetic: floor(x + 1/2) of x = n / d, both positive)
    return (2 * exact.numerator + exact.denominator) // (2 * exact.denominator) * step


def prorate(
    old: int, new: int, currency: str, start: int, end: int, at: int
) -> tuple[ProrationLine, ...]:
    """The lines a change from ``old`` to ``new`` (per period, minor units of
    ``currency``) at ``at`` in ``[start, end)`` makes: the unused time's credit and the
    remaining time's charge; none when nothing is left of the period or the price is
    the same."""
    if old < 0 or new < 0:
        raise ValueError("prices are not negative")
    share = remaining_fraction(start, end, at)
    if share == 0 or old == new:
        return ()
    step = chargeable_increment(currency)
    since = min(max(at, start), end)
    return (
        ProrationLine("Unused time at the old price", -_part(old, share, step), since, end),
        ProrationLine("Remaining time at the new price", _part(new, share, step), since, end),
    )

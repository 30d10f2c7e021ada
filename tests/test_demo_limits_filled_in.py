"""The demo's tenants registered before (a registry from an older run): the limits the
demo expects that an older demo's record leaves unset are filled in (globex's
daily_transfer_volume, without which the cap's refusal never showed). A record whose
limits an operator set (`paystream tenants limits` sets exactly the options given: one
left out, or --clear, is removed on purpose) is left whole: a restart must not undo
them (review h82rd: `--clear`, or `--rate-limit 200` alone, had the demo's caps added
back at the next restart)."""

from __future__ import annotations

import pytest

from paystream.cli.demo import DEMO_LIMITS, _limits_filled_in
from paystream.tenancy.limits import TenantLimits

GLOBEX = DEMO_LIMITS["globex"]
_ALL = ["commands_per_second", "daily_transfer_volume", "max_payment_amount"]


def test_a_record_from_before_the_cap_gets_the_cap() -> None:
    older = TenantLimits(commands_per_second=50, max_payment_amount={"USD": 40_000})
    limits, filled, left = _limits_filled_in(older, GLOBEX)
    assert (limits, filled, left) == (GLOBEX, ["daily_transfer_volume"], [])


def test_the_demos_own_limits_are_left_alone() -> None:
    assert _limits_filled_in(GLOBEX, GLOBEX) == (GLOBEX, [], [])
    nothing = TenantLimits()
    assert _limits_filled_in(nothing, nothing) == (nothing, [], [])


@pytest.mark.parametrize(
    "theirs",
    [
        TenantLimits(),  # `tenants limits globex --clear`
        TenantLimits(commands_per_second=200),  # `--rate-limit 200`: the caps removed
        TenantLimits(commands_per_second=70, burst=90, daily_transfer_volume={"EUR": 1_000}),
        TenantLimits(commands_per_second=50, max_payment_amount={"USD": 40_000}, burst=60),
    ],
    ids=["cleared", "a rate alone", "set otherwise", "one more limit"],
)
def test_limits_an_operator_set_stay_as_set(theirs: TenantLimits) -> None:
    limits, filled, left = _limits_filled_in(theirs, GLOBEX)
    assert (limits, filled) == (theirs, [])
    assert left == [n for n in _ALL if getattr(theirs, n) != getattr(GLOBEX, n)]


def test_no_currency_is_allowed_or_refused_by_a_cap_filled_in() -> None:
    """Only listed currencies: a per-payment cap would allow its currency, a transfer
    cap refuse every other one (transfers in any currency before: none capped)."""
    listed = TenantLimits(
        commands_per_second=50, max_payment_amount={"USD": 40_000}, only_listed_currencies=True
    )
    limits, filled, left = _limits_filled_in(listed, GLOBEX)
    assert (limits, filled, left) == (listed, [], ["daily_transfer_volume"])

"""The demo's tenants registered before (a registry from an older run): each limit the
demo expects that the record leaves unset is filled in (globex's daily_transfer_volume,
without which the cap's refusal never showed); one set otherwise is left as the
operator set it; a per-payment cap is not added where only listed currencies are
allowed (its currency would be allowed too)."""

from __future__ import annotations

from paystream.cli.demo import DEMO_LIMITS, _limits_filled_in
from paystream.tenancy.limits import TenantLimits

GLOBEX = DEMO_LIMITS["globex"]


def test_a_record_from_before_the_cap_gets_the_cap() -> None:
    older = TenantLimits(commands_per_second=50, max_payment_amount={"USD": 40_000})
    limits, filled, left = _limits_filled_in(older, GLOBEX)
    assert (limits, filled, left) == (GLOBEX, ["daily_transfer_volume"], [])


def test_the_demos_own_limits_are_left_alone() -> None:
    assert _limits_filled_in(GLOBEX, GLOBEX) == (GLOBEX, [], [])
    nothing = TenantLimits()
    assert _limits_filled_in(nothing, nothing) == (nothing, [], [])


def test_a_limit_an_operator_set_otherwise_stays() -> None:
    theirs = TenantLimits(commands_per_second=70, burst=90, daily_transfer_volume={"EUR": 1_000})
    limits, filled, left = _limits_filled_in(theirs, GLOBEX)
    assert filled == ["max_payment_amount"]
    assert left == ["commands_per_second", "daily_transfer_volume"]
    assert limits == TenantLimits(
        commands_per_second=70,
        burst=90,
        max_payment_amount={"USD": 40_000},
        daily_transfer_volume={"EUR": 1_000},
    )


def test_no_currency_is_allowed_by_a_cap_filled_in() -> None:
    listed = TenantLimits(daily_payment_volume={"GBP": 10_000}, only_listed_currencies=True)
    limits, filled, left = _limits_filled_in(listed, GLOBEX)
    assert filled == ["commands_per_second", "daily_transfer_volume"]
    assert left == ["max_payment_amount"]
    assert limits.listed_currencies == {"GBP"}

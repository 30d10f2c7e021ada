"""paystream_limited_commands_total's help names every limit a refusal carries, from the
limits module's own names (once typed out by hand there)."""

from __future__ import annotations

from paystream import metrics
from paystream.tenancy import limits
from paystream.tenancy.limits import LIMIT_NAMES


def test_every_refusals_limit_is_named_once() -> None:
    """Each builder of a kept refusal (_REFUSALS), once per limit it words (a builder
    added fails here until its limit is made below)."""
    made = [
        limits._rate_limited(10, 20, 100),
        limits._currencies_refused("payment", "EUR", ["USD"]),
        limits._over_cap(20_000, "USD", 10_000),
        *(limits._over_daily(w, 500, "USD", "2026-12-07", 0, 0, 100) for w in limits._WORDS),
        *(limits._too_many_waiting(w, 5, "USD", 4) for w in limits._WORDS),
    ]
    assert {builder.__name__ for builder in limits._REFUSALS.values()} == {
        "_rate_limited", "_not_listed_coded", "_over_cap", "_over_daily", "_too_many_waiting"
    }  # fmt: skip
    named = [r.extra["limit"] for r in made]
    assert sorted(named) == sorted(LIMIT_NAMES) and len(set(LIMIT_NAMES)) == len(LIMIT_NAMES)


def test_the_help_text_lists_them_in_order() -> None:
    help_text = metrics.LIMITED._documentation
    assert help_text.endswith(f"({', '.join(LIMIT_NAMES)}).")
    assert help_text.index("commands_per_second") < help_text.index("daily_payment_volume")
    assert help_text.index("daily_payout_volume") < help_text.index("pending_payments")

"""A command's `time` is its client's: a card tester dating its commands over the horizon
back or ahead had every outcome skipped as late or future before the fraud rules, and
declined card after card without an alert (review h65g). They are still not counted in
the analytics windows, but the fraud rules see them at the present."""

from __future__ import annotations

import pytest

from paystream.insights.events import ALERT_TYPE
from tests.insights.test_runner import DECLINE, PAID, T0, Harness

pytestmark = pytest.mark.asyncio

MIN = 60_000


async def _declines(name: str, dated: int, n: int, *, traffic: bool = True) -> Harness:
    """``n`` declines of one customer, their commands dated ``dated`` ms from the
    present; first (``traffic``) an outcome dated now, so the tenant's stream time is
    the present (its ordinary traffic, or any command it sends dated now)."""
    h = Harness(name)
    now = T0 + 30 * MIN
    h.now = now / 1000
    if traffic:
        await h.runner.run_batch(
            [h.event("payment.succeeded", PAID, cid="ok", at_ms=now, produced_ms=now)]
        )
    batch = [
        h.event("payment.failed", DECLINE, cid=f"d{i}", at_ms=now + dated, produced_ms=now + i)
        for i in range(n)
    ]
    await h.runner.run_batch(batch)
    return h


@pytest.mark.parametrize(
    "dated",
    [
        pytest.param(-20 * MIN, id="back"),  # every one late: 50 declines, no alert
        pytest.param(20 * MIN, id="ahead"),  # future: the rules clamped it, never saw it
        pytest.param(0, id="now"),  # (the control)
    ],
)
async def test_declines_dated_over_the_horizon_still_reach_the_fraud_rules(dated: int) -> None:
    h = await _declines(f"dated{dated}", dated, 50, traffic=dated <= 0)
    rules = sorted(e.get_data()["rule"] for e in h.of_type(ALERT_TYPE))
    assert rules == ["decline_burst", "subject_declines"]


async def test_backdated_declines_stay_out_of_the_analytics_windows() -> None:
    h = await _declines("backdated-windows", -20 * MIN, 5)
    windows = h.state.get("acme")["windows"]
    assert sum(w["events"] for w in windows.values()) == 1  # (the one dated now)

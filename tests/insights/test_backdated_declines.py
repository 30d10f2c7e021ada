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


async def test_declines_dated_before_the_horizon_still_reach_the_fraud_rules() -> None:
    """Each command dated 20 minutes back; the tenant's stream time the present (its
    ordinary traffic, or any command it sends dated now): every declined attempt was
    late, and 50 declines of one customer raised no alert."""
    h = Harness("backdated")
    now = T0 + 30 * MIN
    h.now = now / 1000
    await h.runner.run_batch(
        [h.event("payment.succeeded", PAID, cid="ok", at_ms=now, produced_ms=now)]
    )
    batch = [
        h.event("payment.failed", DECLINE, cid=f"d{i}", at_ms=now - 20 * MIN, produced_ms=now + i)
        for i in range(50)
    ]
    await h.runner.run_batch(batch)
    rules = sorted(e.get_data()["rule"] for e in h.of_type(ALERT_TYPE))
    assert rules == ["decline_burst", "subject_declines"]


async def test_declines_dated_ahead_still_reach_the_fraud_rules() -> None:
    """The same, dated 20 minutes ahead (skipped as `future`: the fraud rules clamped a
    command dated ahead to the present, but never saw it)."""
    h = Harness("ahead")
    now = T0 + 30 * MIN
    h.now = now / 1000
    batch = [
        h.event("payment.failed", DECLINE, cid=f"d{i}", at_ms=now + 20 * MIN, produced_ms=now + i)
        for i in range(50)
    ]
    await h.runner.run_batch(batch)
    rules = sorted(e.get_data()["rule"] for e in h.of_type(ALERT_TYPE))
    assert rules == ["decline_burst", "subject_declines"]


async def test_control_declines_dated_now_raise_both_alerts() -> None:
    h = Harness("control")
    now = T0 + 30 * MIN
    h.now = now / 1000
    batch = [
        h.event("payment.failed", DECLINE, cid=f"d{i}", at_ms=now, produced_ms=now + i)
        for i in range(50)
    ]
    await h.runner.run_batch(batch)
    rules = sorted(e.get_data()["rule"] for e in h.of_type(ALERT_TYPE))
    assert rules == ["decline_burst", "subject_declines"]


async def test_backdated_declines_stay_out_of_the_analytics_windows() -> None:
    h = Harness("backdated-windows")
    now = T0 + 30 * MIN
    h.now = now / 1000
    await h.runner.run_batch(
        [h.event("payment.succeeded", PAID, cid="ok", at_ms=now, produced_ms=now)]
    )
    batch = [
        h.event("payment.failed", DECLINE, cid=f"d{i}", at_ms=now - 20 * MIN, produced_ms=now + i)
        for i in range(5)
    ]
    await h.runner.run_batch(batch)
    windows = h.state.get("acme")["windows"]
    assert sum(w["events"] for w in windows.values()) == 1  # (the one dated now)

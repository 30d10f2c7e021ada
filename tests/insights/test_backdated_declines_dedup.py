"""Backdated declines counted in the oldest kept fraud window (review h67r) are
deduplicated as before, and a failed batch retried publishes the same alert once (review
h67t)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from paystream.insights.events import ALERT_TYPE
from paystream.insights.state import FRAUD_WINDOWS_MAX
from tests.insights.test_runner import DECLINE, PAID, T0, Harness

MIN = 60_000


async def _filled(name: str) -> tuple[Harness, int]:
    h = Harness(name)
    h.runner.config = replace(h.runner.config, fraud_window_ms=MIN, horizon_ms=15 * MIN)
    now = T0 + 300 * MIN
    for k in range(FRAUD_WINDOWS_MAX):
        at = now - (FRAUD_WINDOWS_MAX - 1 - k) * MIN
        h.now = at / 1000
        await h.runner.run_batch(
            [h.event("payment.succeeded", PAID, cid=f"ok{k}", at_ms=at, produced_ms=at)]
        )
    h.now = (now + 1) / 1000
    return h, now


@pytest.mark.asyncio
async def test_a_re_emitted_backdated_decline_counts_once() -> None:
    h, now = await _filled("h67t-dedup")
    dated = now - 12 * MIN
    first = [
        h.event("payment.failed", DECLINE, cid=f"d{i}", at_ms=dated, produced_ms=now)
        for i in range(4)
    ]
    await h.runner.run_batch(first)
    again = [  # the same commands' outcomes re-emitted (same ids), at later offsets
        h.event("payment.failed", DECLINE, cid=f"d{i}", at_ms=dated, produced_ms=now + 5)
        for i in range(4)
    ]
    await h.runner.run_batch(again)
    fraud = h.state.get("acme")["fraud"]
    assert sum(w["declines"] for w in fraud.values()) == 4
    assert h.of_type(ALERT_TYPE) == []  # 4 < 5 declines of cus_1: no alert


@pytest.mark.asyncio
async def test_a_failed_batch_of_backdated_declines_alerts_once_when_retried() -> None:
    h, now = await _filled("h67t-retry")
    dated = now - 12 * MIN
    batch = [
        h.event("payment.failed", DECLINE, cid=f"d{i}", at_ms=dated, produced_ms=now)
        for i in range(5)
    ]
    h.fail_next = 1
    with pytest.raises(RuntimeError):
        await h.runner.run_batch(batch)
    await h.runner.run_batch(batch)
    alerts = h.of_type(ALERT_TYPE)
    assert len(alerts) == 1
    # ...in the oldest kept window, whose bounds do not hold the declines' time
    data = alerts[0].get_data()
    assert data["rule"] == "subject_declines"

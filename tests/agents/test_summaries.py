"""The dashboard's per-tenant payment summaries: every payment counted, the worker's loop
given back during the scan, and one scan shared by every request until it is stale."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from paystream.tables import views
from paystream.tables.views import SummaryCache, tenant_summaries


def _payments(n: int) -> dict[str, Any]:
    return {
        f"t{i % 2}:pay_{i}": {
            "status": "succeeded",
            "currency": "USD",
            "amount_captured": 100,
            "amount_refunded": 0,
        }
        for i in range(n)
    }


async def test_every_payment_counts_and_the_loop_runs_meanwhile() -> None:
    payments = _payments(3 * views.SCAN_CHUNK + 1)  # the old cap was a row count
    ticks = 0

    async def other_work() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    beside = asyncio.ensure_future(other_work())
    await asyncio.sleep(0)
    ticks = 0
    summary = await tenant_summaries(payments)
    beside.cancel()
    assert ticks >= 3  # once per chunk at least
    total = len(payments)
    assert summary["t0"]["payments"]["succeeded"] + summary["t1"]["payments"]["succeeded"] == total
    assert summary["t0"]["captured"]["USD"] == 100 * ((total + 1) // 2)


async def test_requests_share_one_scan_until_it_is_stale() -> None:
    now = [0.0]
    cache = SummaryCache(min_age=5.0, clock=lambda: now[0])  # (the clock stands still)
    payments = _payments(10)
    reads = 0

    class Counting(dict[str, Any]):
        def get(self, key: str, default: Any = None) -> Any:
            nonlocal reads
            reads += 1
            return super().get(key, default)

    table = Counting(payments)
    first, second = await asyncio.gather(cache.get(table), cache.get(table))
    assert first is second and reads == 10  # two requests, one scan
    table["t0:pay_new"] = dict(payments["t0:pay_0"])
    now[0] = 4.9
    assert (await cache.get(table))["t0"]["payments"]["succeeded"] == 5  # still fresh
    now[0] = 5.0
    assert (await cache.get(table))["t0"]["payments"]["succeeded"] == 6
    assert reads == 21


async def test_a_scan_is_fresh_for_ten_times_its_duration_within_bounds() -> None:
    now = [0.0]

    class Slow(dict[str, Any]):
        def get(self, key: str, default: Any = None) -> Any:
            now[0] += 0.5  # each row "takes" half a second of the clock
            return super().get(key, default)

    small = SummaryCache(clock=lambda: now[0])
    await small.get(Slow(_payments(1)))  # 0.5 s: fresh for 5 s
    now[0] += 4.9
    assert small._clock() < small._fresh_until
    now[0] += 0.2
    assert small._clock() >= small._fresh_until
    capped = SummaryCache(max_age=60.0, clock=lambda: now[0])
    await capped.get(Slow(_payments(100)))  # 50 s: ten times that is over the cap
    assert capped._fresh_until - now[0] == pytest.approx(60.0)


async def test_after_a_slow_scan_a_stale_value_is_answered_while_the_next_runs() -> None:
    """The dashboard gives up on /v1/stats after 2.5 s: a million payments (~3 s a scan)
    showed the worker as unreachable for a few seconds every half minute."""
    now = [0.0]
    slow_rows = [True]

    class Slow(dict[str, Any]):
        def get(self, key: str, default: Any = None) -> Any:
            if slow_rows[0]:
                now[0] += 0.5
            return super().get(key, default)

    cache = SummaryCache(clock=lambda: now[0], wait_at_most=0.5)
    table = Slow(_payments(2))  # a 1 s scan
    first = await cache.get(table)
    assert first["t0"]["payments"]["succeeded"] == 1
    table["t0:pay_new"] = dict(table["t0:pay_0"])
    now[0] = cache._fresh_until  # stale
    slow_rows[0] = False
    stale = await cache.get(table)  # answered at once, the rescan started
    assert stale is first
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    fresh = await cache.get(table)
    assert fresh["t0"]["payments"]["succeeded"] == 2


async def test_failing_scans_are_logged_and_stale_figures_not_served_for_ever(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    failing = [False]

    class Table(dict[str, Any]):
        def get(self, key: str, default: Any = None) -> Any:
            if failing[0]:
                raise RuntimeError("table gone")
            now[0] += 0.5
            return super().get(key, default)

    cache = SummaryCache(clock=lambda: now[0], max_age=60.0, wait_at_most=0.5)
    table = Table(_payments(2))
    first = await cache.get(table)
    failing[0] = True
    now[0] = cache._fresh_until
    assert await cache.get(table) is first  # stale, while the (failing) rescan runs
    await asyncio.sleep(0)
    assert "summaries failed" in caplog.text
    now[0] = cache._fresh_until + 61  # past max_age: the failure is the answer
    with pytest.raises(RuntimeError, match="table gone"):
        await cache.get(table)

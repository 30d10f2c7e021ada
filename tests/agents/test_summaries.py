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
        def items(self) -> Any:  # the scan reads rows through items()
            nonlocal reads
            for item in super().items():
                reads += 1
                yield item

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
        def items(self) -> Any:  # the scan reads rows through items()
            for item in super().items():
                now[0] += 0.5  # each row "takes" half a second of the clock
                yield item

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
        def items(self) -> Any:  # the scan reads rows through items()
            for item in super().items():
                if slow_rows[0]:
                    now[0] += 0.5
                yield item

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
        def items(self) -> Any:  # the scan reads rows through items()
            for item in super().items():
                if failing[0]:
                    raise RuntimeError("table gone")
                now[0] += 0.5
                yield item

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


class _MemoryStore:
    """Faust's memory store as the summaries see it: one dict for the active and the
    standby partitions' rows, and each key's partition beside."""

    def __init__(self, rows: dict[str, Any], partition_of: dict[str, int]) -> None:
        self.data = rows
        self._key_partition = partition_of


class _Table(dict[str, Any]):
    def __init__(self, store: _MemoryStore) -> None:
        super().__init__(store.data)
        self.data = store


def _two_partitions(n: int) -> _Table:
    """``n`` payments of t0 (partition 0) and t1 (partition 1) in a memory store."""
    rows = _payments(n)
    return _Table(_MemoryStore(rows, {key: 0 if key.startswith("t0:") else 1 for key in rows}))


async def test_only_the_owned_partitions_payments_count() -> None:
    """A peer's partitions kept here as a standby copy are not this worker's tenants
    (review finding: each worker of a fleet showed the other's, with stale figures)."""
    table = _two_partitions(4)  # t0 and t1, two payments each
    assert set(await tenant_summaries(table, frozenset({0}))) == {"t0"}
    assert set(await tenant_summaries(table, frozenset({0, 1}))) == {"t0", "t1"}
    assert await tenant_summaries(table, frozenset()) == {}


class _Snapshot:
    """A RocksDB-backed table as the summaries see it: items read lazily; no key list."""

    def __init__(self, rows: dict[str, Any]) -> None:
        self.rows, self.read = rows, 0

    def items(self) -> Any:
        for item in self.rows.items():
            self.read += 1
            yield item

    def keys(self) -> Any:
        raise AssertionError("every key listed before the scan: the loop stalls")


async def test_a_store_without_key_partitions_is_read_lazily_a_chunk_at_a_time() -> None:
    rows = _payments(2 * views.SCAN_CHUNK + 5)
    table = _Snapshot(rows)
    scan = asyncio.ensure_future(tenant_summaries(table))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert 0 < table.read < len(rows)  # the loop ran with rows still unread
    summary = await scan
    assert sum(sum(s["payments"].values()) for s in summary.values()) == len(rows)


async def test_a_rebalance_during_the_scan_is_scanned_again() -> None:
    """RocksDB's store iterates a dict of partition databases, lazily: a rebalance while
    the scan gave the loop back raised RuntimeError (a 500 on /v1/stats; review finding).
    The scan starts again."""
    rows = _payments(3 * views.SCAN_CHUNK)
    failures = [1]

    class Rebalanced(dict[str, Any]):
        def items(self) -> Any:
            for n, item in enumerate(super().items()):
                if n == views.SCAN_CHUNK + 1 and failures[0]:
                    failures[0] -= 1
                    raise RuntimeError("dictionary changed size during iteration")
                yield item

    summary = await tenant_summaries(Rebalanced(rows))
    assert sum(sum(s["payments"].values()) for s in summary.values()) == len(rows)


async def test_summaries_of_other_partitions_are_not_served() -> None:
    """Partitions moved: the cached figures counted the old ones (for up to a minute)."""
    table = _two_partitions(4)
    cache = SummaryCache(min_age=60.0)
    assert set(await cache.get(table, {0})) == {"t0"}
    assert set(await cache.get(table, {0})) == {"t0"}  # fresh
    assert set(await cache.get(table, {1})) == {"t1"}  # not t0's, fresh as it was


async def test_a_scan_of_the_partitions_as_they_were_is_not_served_after_a_rebalance() -> None:
    """A scan still running for the old partitions was shared with a request for the
    new ones (second review's finding): that request waits for it, then scans its own."""
    table = _two_partitions(3 * views.SCAN_CHUNK)  # big enough that the scan gives way
    cache = SummaryCache(min_age=60.0)
    before = asyncio.ensure_future(cache.get(table, {0, 1}))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert set(await cache.get(table, {0})) == {"t0"}
    assert set(await before) == {"t0", "t1"}


async def test_two_rebalances_during_one_scan_each_get_their_own() -> None:
    """Two requests for other partitions, both waiting for the old scan: the second took
    the scan the first then started (review finding). Each waits until a scan of its own."""
    table = _two_partitions(3 * views.SCAN_CHUNK)
    cache = SummaryCache(min_age=60.0)
    old = asyncio.ensure_future(cache.get(table, {0, 1}))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    first = asyncio.ensure_future(cache.get(table, {0}))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(cache.get(table, {1}))
    await old
    assert (set(await first), set(await second)) == ({"t0"}, {"t1"})

"""Forgetting counted outcome ids (insights_seen) by window, a share a tick, without a
full scan of the table: the same ids go as the full scan let go, a failed tick's are
kept, and ids recovered into the table behind the index's back are found."""

from __future__ import annotations

import json
from typing import Any

import pytest

from paystream.agents import insights as agent
from paystream.insights.seen_index import SeenIndex
from tests.insights.test_runner import PAID, T0, Harness

pytestmark = pytest.mark.asyncio

MINUTE = 60_000
MARGIN = 960_000  # the default horizon (900 s) and window (60 s)


def _ids(h: Harness, tenant: str) -> set[str]:
    return {k for k in h.seen.data.data if k.startswith(f"{tenant}:")}


async def _count(h: Harness, tenant: str, n: int, at_ms: int, prefix: str) -> None:
    """``n`` outcomes of ``tenant`` dated and produced at ``at_ms`` (clock there too)."""
    h.now = at_ms / 1000
    await h.runner.run_batch(
        [
            h.event(
                "payment.succeeded",
                PAID,
                cid=f"{prefix}{i}",
                at_ms=at_ms,
                produced_ms=at_ms,
                tenant=tenant,
                partition=0 if tenant == "acme" else 1,
            )
            for i in range(n)
        ]
    )


async def _tick(h: Harness, at_ms: int) -> None:
    h.now = at_ms / 1000
    await h.runner.tick(lambda p: True)


async def test_ids_go_by_their_tenants_stream_time_window_by_window() -> None:
    h = Harness("forget-windows")
    await _count(h, "acme", 30, T0, "old")
    await _count(h, "acme", 30, T0 + 10 * MINUTE, "mid")
    await _count(h, "beta", 30, T0, "quiet")  # beta's partition reads nothing later
    # acme's stream time moves past its first window's margin, not past its second's.
    await _count(h, "acme", 1, T0 + MARGIN + MINUTE, "new")
    mid = {k for k in _ids(h, "acme") if h.seen.data.data[k][0] == T0 + 10 * MINUTE}
    assert len(mid) == 30
    await _tick(h, T0 + MARGIN + MINUTE)
    kept = _ids(h, "acme")
    assert len(kept) == 31 and mid <= kept  # the first window's 30 forgotten
    assert all(h.seen.data.data[k][0] > T0 for k in kept)
    assert len(_ids(h, "beta")) == 30  # its stream time stayed at T0: all kept
    tombstones = [r for r in h.changelog if r.value is None]
    assert len(tombstones) == 30 and {r.partition for r in tombstones} == {0}
    # Later, by acme's stream time, its second window goes too; beta's still not.
    await _count(h, "acme", 1, T0 + 10 * MINUTE + MARGIN + MINUTE, "later")
    await _tick(h, T0 + 10 * MINUTE + MARGIN + MINUTE)
    assert not (mid & _ids(h, "acme"))
    assert len(_ids(h, "beta")) == 30


async def test_a_window_of_ids_is_forgotten_a_share_a_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    """A window's ids come due together: at most a 60th of those due (or the floor) go in
    one tick, so a busy minute's deletions do not hold the loop for a second."""
    monkeypatch.setattr(agent, "SEEN_FORGET_PER_TICK", 10)
    h = Harness("forget-share")
    await _count(h, "acme", 1_200, T0, "c")
    at = T0 + MARGIN + MINUTE
    await _count(h, "acme", 1, at, "new")
    left = []
    for tick in range(200):
        await _tick(h, at + tick * 1_000)
        left.append(len(_ids(h, "acme")) - 1)
        if left[-1] == 0:
            break
    assert left[0] == 1_200 - 20  # 1,200 due: a 60th
    assert left[-1] == 0
    steps = [a - b for a, b in zip([1_200, *left], left, strict=False)]
    assert max(steps) == 20 and min(steps[:-1]) == 10  # (the floor, until done)


async def test_a_failed_tick_keeps_its_ids_to_forget_them_on_the_next() -> None:
    h = Harness("forget-failed")
    await _count(h, "acme", 5, T0, "c")
    at = T0 + MARGIN + MINUTE
    await _count(h, "acme", 1, at, "new")
    h.fail_next = 1
    with pytest.raises(RuntimeError):
        await _tick(h, at)
    assert len(_ids(h, "acme")) == 6  # undone in the table...
    await _tick(h, at + 2_000)
    assert len(_ids(h, "acme")) == 1  # ...and in the index: forgotten now


async def test_ids_recovered_after_a_rebalance_are_forgotten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ids the index never heard of (replayed from the changelog into the store, as a
    partition taken over is) are found once the generation moves: the index is rebuilt."""
    a = Harness("forget-recovered-a")
    await _count(a, "acme", 5, T0, "c")
    b = Harness("forget-recovered-b")
    await _count(b, "acme", 1, T0 + MARGIN + MINUTE, "new")
    await _tick(b, T0 + MARGIN + MINUTE)  # the index built: one id, not due
    for rec in a.changelog:  # the recovery of a's partition into b's store
        if rec.topic == a.seen.changelog_topic.get_topic_name():
            key = json.loads(rec.key)
            b.seen.data.data[key] = json.loads(rec.value)
            b.seen.data._key_partition[key] = rec.partition
    assert len(_ids(b, "acme")) == 6
    await _tick(b, T0 + MARGIN + MINUTE + 2_000)
    assert len(_ids(b, "acme")) == 6  # unknown to the index until a rebalance
    monkeypatch.setattr(agent.app, "consumer_generation_id", agent.app.consumer_generation_id + 1)
    await _tick(b, T0 + MARGIN + MINUTE + 4_000)
    assert len(_ids(b, "acme")) == 1


async def test_ids_undone_with_their_batch_are_dropped_from_the_index() -> None:
    h = Harness("forget-undone")
    h.fail_next = 1
    with pytest.raises(RuntimeError):
        await _count(h, "acme", 5, T0, "c")  # indexed, then undone in the table
    assert _ids(h, "acme") == set()
    at = T0 + MARGIN + MINUTE
    await _count(h, "acme", 1, at, "new")
    await _tick(h, at)
    assert len(h.runner._seen_index) == 1
    assert [r for r in h.changelog if r.value is None] == []  # nothing to delete


async def test_the_index_yields_only_windows_before_each_tenants_cutoff() -> None:
    index = SeenIndex()
    index.add("acme", 0, "acme:a", 0)
    index.add("acme", 60, "acme:b", 0)
    index.add("beta", 0, "beta:c", 1)
    index.rebuild([], generation=1)
    assert not index.current(2) and index.current(1) and len(index) == 0
    for tenant, start, key, partition in [("acme", 0, "acme:a", 0), ("beta", 0, "beta:c", 1)]:
        index.add(tenant, start, key, partition)
    index.add("acme", 60, "acme:b", 0)
    due: list[Any] = []
    for tenant, start, ids in index.due({"acme": 30}, default_cutoff=0):
        due.append((tenant, start, dict(ids)))
        ids.clear()
    assert due == [("acme", 0, {"acme:a": 0})]  # beta by the default: not before 0
    assert index.due_count({"acme": 30}, 0) == 0 and len(index) == 2

"""Paced full collections: none mid-burst, one at a quiet moment, one at the latest after
``max_interval``; pauses are observed for operators."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from paystream.gc_pacing import GC_PAUSE, FullCollections


@pytest.fixture
def restore_gc() -> Iterator[None]:
    threshold, callbacks = gc.get_threshold(), list(gc.callbacks)
    try:
        yield
    finally:
        gc.callbacks[:] = callbacks
        gc.set_threshold(*threshold)
        gc.unfreeze()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _installed_with_old_garbage(
    quiet_after: float, min_interval: float
) -> tuple[FullCollections, Clock]:
    clock = Clock()
    fc = FullCollections(
        quiet_after=quiet_after, min_interval=min_interval, max_interval=300, clock=clock
    )
    fc.install()
    _make_old_garbage(5)
    return fc, clock


def _full_collections() -> int:
    return int(gc.get_stats()[2]["collections"])


def _make_old_garbage(rounds: int = 30) -> None:
    """Cycles that survive young collections, as table growth does, plus some garbage."""
    keep = []
    for _ in range(rounds):
        for _ in range(2000):
            a: list[object] = []
            a.append(a)  # a cycle: only the collector frees it
            keep.append([a])
        gc.collect(1)
    del keep


def _pause_count() -> float:
    return sum(
        s.value
        for m in GC_PAUSE.collect()
        for s in m.samples
        if s.name.endswith("_count") and s.labels.get("generation") == "2"
    )


def test_no_automatic_full_collection_once_installed(restore_gc: None) -> None:
    fc = FullCollections(quiet_after=1, min_interval=10, max_interval=300)
    fc.install()
    before = _full_collections()
    _make_old_garbage()
    assert gc.get_count()[2] > 10  # CPython would have run a full pass long ago
    assert _full_collections() == before


def test_a_full_collection_waits_for_a_quiet_moment(restore_gc: None) -> None:
    fc, clock = _installed_with_old_garbage(quiet_after=1, min_interval=0)
    fc.busy()
    assert not fc.maybe_collect()  # a batch just ran
    clock.now += 1
    pauses = _pause_count()
    before = _full_collections()
    assert fc.maybe_collect()
    assert _full_collections() == before + 1
    assert _pause_count() == pauses + 1
    assert not fc.maybe_collect()  # nothing old since


def test_sustained_load_still_gets_a_full_collection_after_max_interval(
    restore_gc: None,
) -> None:
    fc, clock = _installed_with_old_garbage(quiet_after=60, min_interval=0)
    fc.busy()
    assert not fc.maybe_collect()
    clock.now += 300
    fc.busy()
    assert fc.maybe_collect()


def test_quiet_moments_are_not_collected_more_often_than_min_interval(
    restore_gc: None,
) -> None:
    fc, clock = _installed_with_old_garbage(quiet_after=0, min_interval=60)
    assert not fc.maybe_collect()
    clock.now += 60
    assert fc.maybe_collect()

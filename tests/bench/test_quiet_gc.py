"""The bench holds its own full collections to the moments between phases."""

from __future__ import annotations

import gc

from paystream.bench.quiet_gc import between_phases, full_collections_held


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_no_automatic_full_collection_inside_the_block_and_thresholds_restored() -> None:
    before = gc.get_threshold()
    full_runs: list[int] = []

    def note(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] == 2:
            full_runs.append(1)

    with full_collections_held():
        gc.callbacks.append(note)
        try:
            assert gc.get_threshold()[:2] == before[:2]
            assert gc.get_threshold()[2] >= 2**31 - 1
            # Survivors enough to have triggered several full collections otherwise.
            kept = [_Cycle() for _ in range(before[0] * before[1] * (before[2] + 1) * 3)]
            del kept
        finally:
            gc.callbacks.remove(note)
    assert full_runs == []
    assert gc.get_threshold() == before


def test_between_phases_collects_cyclic_garbage() -> None:
    with full_collections_held():
        gc.collect()
        _Cycle()  # unreachable once created: only a collection frees it
        assert any(type(o) is _Cycle for o in gc.get_objects())
        between_phases()
        assert not any(type(o) is _Cycle for o in gc.get_objects())

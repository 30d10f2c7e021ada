"""Faust's table recovery asks, for every changelog record it replays, whether recovery
is still needed: its ``need_recovery`` builds a ``Counter`` of every active changelog
partition's remaining records to answer (about 8% of a recovery's CPU, which is
CPU-bound: ~8,500 records a second with it on the development broker). The same answer, with
no counter built and at the first partition still behind."""

from __future__ import annotations

from typing import Any

from faust.tables.recovery import Recovery

__all__ = ["FAUST_NEED_RECOVERY", "install", "need_recovery"]

#: Faust's own, kept for comparison (tests/test_faster_recovery.py).
FAUST_NEED_RECOVERY = Recovery.need_recovery


def need_recovery(self: Any) -> bool:
    """What ``Recovery.need_recovery`` answers: an active partition with records left."""
    offsets = self.active_offsets
    for tp, highwater in self.active_highwaters.items():
        offset = offsets[tp]  # (a Counter: 0 when missing, as Faust reads it)
        if highwater is not None and offset is not None and highwater - offset > 0:
            return True
    return False


def install() -> None:
    Recovery.need_recovery = need_recovery  # type: ignore[method-assign]

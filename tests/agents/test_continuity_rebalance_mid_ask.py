"""ContinuityGuard across a rebalance that completes while it waits on the broker: what it
was about to read or admit belongs to the old generation (the partition may be another
worker's by now), so nothing of it is read or admitted."""

from __future__ import annotations

from typing import Any

import pytest
from faust.types import TP

from tests.agents.test_continuity import P0, make, record

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_nothing_is_admitted_when_a_rebalance_completes_while_the_start_is_asked() -> None:
    app, broker, guard = make({P0: 20}, {P0: 0})
    ask = app.consumer.read_committed

    async def asked_then_reassigned(tps: list[TP]) -> dict[TP, int | None]:
        found = await ask(tps)
        app.consumer_generation_id += 1  # a rebalance completed while we waited
        return found

    guard._read_committed = asked_then_reassigned
    # Offset 0 is the very next record: no gap to read, but the event is the old
    # generation's and must not run.
    assert await guard.admit([record(P0, 0), record(P0, 1)]) == []  # type: ignore[list-item]
    assert broker.reads == []


async def test_a_sweep_reads_nothing_when_a_rebalance_completes_while_it_asks_for_the_ends() -> (
    None
):
    app, broker, guard = make({P0: 6}, {P0: 0})
    await guard.admit([record(P0, o) for o in range(3)])  # type: ignore[list-item]
    highwaters = app.consumer.highwaters

    async def ends_then_reassigned(*tps: TP) -> dict[TP, int]:
        found = await highwaters(*tps)
        app.consumer_generation_id += 1  # P0 may be another worker's now
        return found

    app.consumer.highwaters = ends_then_reassigned  # type: ignore[method-assign]
    assert await guard.sweep() == []  # notes where P0 stands, asks where it ends
    found: list[Any] = await guard.sweep()
    assert found == []
    assert broker.reads == []  # the old generation's tail is left to the new owner

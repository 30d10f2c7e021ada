"""PAYSTREAM_BATCH_TENANT_MAX was applied only where take_batches reads the channel queue;
the continuity guard then added the records Faust skipped (up to 500 of a partition's,
read straight from the broker, and the idle sweep's), and all of it ran as one batch:
after a hand-over dropped one tenant's backlog, a batch again held up to 500 of that
tenant's commands, one provider round trip each, every other tenant in it waiting for
them (review h68v). What the guard hands over now runs in runs cut as take_batches cuts."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from faust.types import TP, Message

from paystream.agents.commands import ContinuityGuard, capped_runs
from paystream.app import settings
from tests.agents.test_continuity import StandInApp, StandInConsumer

P0 = TP("t.commands", 0)


class Ev:
    def __init__(self, offset: int, key: bytes) -> None:
        self.message = Message(
            P0.topic, 0, offset, 0.0, 0, None, key, b"v", None, tp=P0, generation_id=1
        )


@pytest.mark.asyncio(loop_scope="session")
async def test_what_the_guard_reads_runs_at_most_the_cap_of_one_tenant_a_batch() -> None:
    cap = settings.batch_tenant_max
    backlog = 200  # one tenant's commands, dropped by Faust in a hand-over

    async def read_range(tp: TP, start: int, end: int) -> tuple[list[Any], int]:
        return [Ev(o, b"tenant-a") for o in range(start, end)], end

    consumer = StandInConsumer(ends={P0: backlog + 1}, committed={P0: 0})
    guard = ContinuityGuard(
        StandInApp(consumer),  # type: ignore[arg-type]
        P0.topic,
        read_range=read_range,
        read_committed=consumer.read_committed,
    )
    # take_batches honoured the cap: the batch it hands over is one event of tenant b.
    admitted = await guard.admit([Ev(backlog, b"tenant-b")])
    assert len(admitted) == backlog + 1  # (the gap read in, before it)
    runs = capped_runs(admitted, cap)
    assert all(Counter(e.message.key for e in run).most_common(1)[0][1] <= cap for run in runs)
    assert [e.message.offset for run in runs for e in run] == list(range(backlog + 1))


def test_runs_are_cut_before_a_keys_next_event_past_the_cap() -> None:
    events = [Ev(o, k.encode()) for o, k in enumerate("aaabaacb")]
    runs = capped_runs(events, 2)  # type: ignore[arg-type]
    assert ["".join(e.message.key.decode() for e in run) for run in runs] == ["aa", "aba", "acb"]

"""One partition stuck while the agent's other partitions progress (review h67g): the stall
clock (`DurableOffsets.stalled_for`, behind /readyz `stalled` and /healthz's wedge) is
kept per agent, so any partition's commit counts as progress for all of them, and a
partition held back for good showed nowhere while its tenants' commands waited. The
per-partition gauge (`paystream_consumer_stalled_seconds`, alert
`PaystreamPartitionStalled`) shows it; the probes stay per agent (review h67i: a
partition whose lag is a transaction marker alone clears only when the agent is quiet,
and judged per partition it failed /healthz, a restart, while a backlog drained)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from paystream.agents.offsets import DurableOffsets, stalls

pytestmark = pytest.mark.asyncio

TOPIC = "h67g-stuck.commands"
P0, P1 = TP(TOPIC, 0), TP(TOPIC, 1)


class StandInConsumer:
    def __init__(self) -> None:
        self.assigned = {P0, P1}
        self.high = {P0: 0, P1: 0}
        self._committed_offset: dict[TP, int] = {}

    def assignment(self) -> set[TP]:
        return set(self.assigned)

    def highwater(self, tp: TP) -> int:
        return self.high[tp]

    async def _commit(self, offsets: dict[TP, int]) -> bool:
        return True


def _event(app: Any, tp: TP, offset: int) -> Any:
    message = SimpleNamespace(
        tp=tp, offset=offset, key=b"k", generation_id=app.consumer_generation_id
    )
    return SimpleNamespace(message=message)


async def test_a_partition_stuck_for_ten_minutes_while_another_progresses_shows_on_its_gauge() -> (
    None
):
    consumer = StandInConsumer()
    app = SimpleNamespace(consumer=consumer, consumer_generation_id=1)
    now = [1000.0]
    offsets = DurableOffsets(app, agent="h67g-stuck", topic=TOPIC, clock=lambda: now[0])  # type: ignore[arg-type]
    consumer.high[P1] = 5  # five commands of partition 1's tenants, never run
    done = 0
    for _ in range(70):  # 700 s: partition 0 busy and committing every 10 s
        now[0] += 10
        consumer.high[P0] += 20
        offsets.advance([_event(app, P0, o) for o in range(done, consumer.high[P0])])
        done = consumer.high[P0]
        await offsets.commit()
        offsets.stalled_for()  # the probes ask every few seconds
    assert offsets.lag()[P1] == 5
    stuck = offsets.partition_stalls()
    assert stuck.get(P1, 0) >= 690, stuck  # partition 1: 5 records, no commit, 700 s
    assert stuck.get(P0, 0) < 20, stuck  # partition 0 commits every 10 s
    # The probes judge the agent as a whole: it commits, so it is not stalled.
    assert stalls([offsets], after=120) == []

"""One partition stuck while the agent's other partitions progress (review h67g): the stall
clock (`DurableOffsets.stalled_for`, behind /readyz `stalled` and /healthz's wedge) was
kept per agent, so any partition's commit counted as progress for all of them, and a
partition held back for good never showed while its tenants' commands waited."""

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


async def test_a_partition_stuck_for_ten_minutes_while_another_progresses_is_a_stall() -> None:
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
    assert offsets.lag()[P1] == 5  # the lag gauge shows it ...
    found = stalls([offsets], after=120)  # ... but /readyz's "stalled" does not
    assert found, "partition 1 waited 700 s with 5 records and no commit: not reported as stalled"

"""A worker's throttled warnings say how many they held back once their minute ends,
even when their cause stops: a producer's three broken records, then silence, showed
one "dead-lettering" line and no count (review h78d F2)."""

from __future__ import annotations

import inspect
import logging
import time

import pytest

from paystream import log_limits, worker
from paystream.agents import pipeline
from paystream.agents.pipeline import Inbound
from paystream.log_limits import ThrottledLog
from tests.agents.harness import Harness

pytestmark = pytest.mark.asyncio


async def test_dead_letters_then_silence_have_their_count_written_by_the_workers_timer(
    harness: Harness, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (earlier tests' held-back counts written now, outside the capture: the timer
    # flushes every ThrottledLog of the process, the replaced one too)
    log_limits.flush_all(final=True)
    caplog.clear()  # (caplog holds every record since the test began, not only at_level's)
    now = [0.0]
    monkeypatch.setattr(
        pipeline, "_throttled", ThrottledLog(pipeline.log, interval=60, clock=lambda: now[0])
    )
    # The worker's one-second timer's body (Faust's wrappers around it loop forever).
    timer = inspect.unwrap(worker.write_held_back_counts)
    with caplog.at_level(logging.WARNING, logger=pipeline.log.name):
        for offset in (1, 2, 3):
            now[0] = offset
            rec = Inbound(b"acme", b"not a cloudevent", {}, int(time.time() * 1000),
                          harness.settings.commands_topic, 0, offset)  # fmt: skip
            emits = await harness.raw(rec)
            assert [e.topic for e in emits] == [harness.settings.dlq_topic]
        now[0] = 30.0
        await timer()  # (the minute has not ended)
        now[0] = 61.5
        await timer()
        await timer()  # (said once)
    topic = harness.settings.commands_topic
    said = [r.getMessage() for r in caplog.records if r.name == pipeline.log.name]
    assert said == [
        f"dead-lettering {topic}[0]@1 (`paystream dlq list` shows it): not_a_cloudevent",
        f"dead-lettering {topic}[0]@1 (`paystream dlq list` shows it): not_a_cloudevent"
        " (and 2 more like it in the last 60 s)",
    ], said

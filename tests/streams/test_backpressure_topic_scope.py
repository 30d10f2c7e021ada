"""Topic-wide back-pressure stays within its topic: a queue drained resumes only its own
topic's stopped partitions, never another agent's (whose queue may still be full)."""

from __future__ import annotations

from types import SimpleNamespace as NS
from typing import Any

import pytest
from faust.types import TP

from paystream.streams import backpressure

EVENTS0, EVENTS1 = TP("paystream.events", 0), TP("paystream.events", 1)
COMMANDS0 = TP("paystream.commands", 0)


def test_a_drained_queue_resumes_only_its_own_topics_partitions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    resumed: list[TP] = []

    def resume_one(self: Any, tp: TP) -> None:
        resumed.append(tp)
        self._buffered_partitions.discard(tp)

    monkeypatch.setattr(backpressure, "_resume_one", resume_one)
    consumer = NS(_paused_partitions=set(), _buffered_partitions={EVENTS0, EVENTS1, COMMANDS0})
    backpressure.on_buffer_drop(consumer, COMMANDS0)
    assert resumed == [COMMANDS0]
    assert consumer._buffered_partitions == {EVENTS0, EVENTS1}  # the sink's stay stopped


def test_a_full_queue_stops_only_its_own_topics_partitions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    paused: list[TP] = []
    monkeypatch.setattr(backpressure, "_pause_one", lambda self, tp: paused.append(tp))
    consumer = NS(assignment=lambda: {EVENTS0, EVENTS1, COMMANDS0})
    backpressure.on_buffer_full(consumer, EVENTS1)
    assert sorted(paused) == [EVENTS0, EVENTS1]

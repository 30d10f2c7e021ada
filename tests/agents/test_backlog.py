"""``has_backlog``: when record delivery may skip its loop turn (streams/fast_delivery.py)."""

from __future__ import annotations

import asyncio

import pytest

from paystream.agents import commands
from paystream.agents.commands import BACKLOG_EVENTS, has_backlog


def _queue(events: int) -> asyncio.Queue[int]:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(events):
        queue.put_nowait(n)
    return queue


@pytest.mark.parametrize(
    ("queued", "expected"),
    [
        ([], False),  # no agent running: never skip
        ([BACKLOG_EVENTS - 1], False),
        ([BACKLOG_EVENTS], True),
        ([BACKLOG_EVENTS, BACKLOG_EVENTS + 5], True),
        ([BACKLOG_EVENTS, 0], False),  # one actor may be waiting for this record
    ],
)
def test_backlog_needs_every_agent_queue_full_enough(
    monkeypatch: pytest.MonkeyPatch, queued: list[int], expected: bool
) -> None:
    monkeypatch.setattr(commands, "_QUEUES", [_queue(n) for n in queued])
    assert has_backlog() is expected

"""A worker whose clock runs far ahead of the broker's deletes nothing it would judge
expired by it: a clock a retention ahead had the sweep delete every settled entity on
its partitions for good (changelog tombstones), changed a minute before or not, and the
purge every idempotency record (review finding)."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from paystream.agents.commands import CLOCK_AHEAD_MAX_SECONDS, CommandRunner


def _event(timestamp: float) -> Any:
    return SimpleNamespace(message=SimpleNamespace(timestamp=timestamp))


@pytest.mark.parametrize("ahead", [CLOCK_AHEAD_MAX_SECONDS + 60, 540 * 86_400.0])
def test_no_deletes_while_the_clock_runs_ahead_of_the_broker(ahead: float) -> None:
    runner = CommandRunner()
    now = time.time()
    assert runner.clock_for_deletes([_event(now - ahead)]) is None
    # Its commands catch up with the present (a backlog worked off, the clock put right).
    clock = runner.clock_for_deletes([_event(now - 5), _event(now - ahead)])
    assert clock is not None and abs(clock - time.time()) < 5


def test_a_clock_within_a_day_of_the_broker_s_is_used() -> None:
    runner = CommandRunner()
    now = time.time()
    assert runner.clock_for_deletes([]) is not None  # nothing seen yet: nothing to doubt
    clock = runner.clock_for_deletes([_event(now - 3_600)])
    assert clock is not None and clock >= now


def test_a_record_stamped_far_ahead_does_not_switch_the_guard_off() -> None:
    """A producer's own time on a CreateTime topic (the dev broker) may be year 9999."""
    runner = CommandRunner()
    now = time.time()
    runner.clock_for_deletes([_event(253_402_300_799.0)])
    assert runner.clock_for_deletes([_event(now - 2 * CLOCK_AHEAD_MAX_SECONDS)]) is None

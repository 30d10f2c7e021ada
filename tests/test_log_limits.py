"""Per-record warnings are written once a minute per cause, with a count of the rest."""

from __future__ import annotations

import logging

import pytest

from paystream.log_limits import ThrottledLog


def test_a_cause_is_logged_once_per_interval_with_a_count_of_what_it_held_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    log = ThrottledLog(logging.getLogger("t.throttle"), interval=60, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="t.throttle"):
        for i in range(500):
            log.warning(("park", "acme"), "parking command %s", i)
        log.warning(("park", "globex"), "parking command %s", "g1")
        now[0] = 61.0
        log.warning(("park", "acme"), "parking command %s", "late")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "parking command 0",
        "parking command g1",
        "parking command late (and 499 more like it in the last 61 s)",
    ]

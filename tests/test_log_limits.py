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


def test_a_bug_is_logged_once_a_minute_per_place_without_card_numbers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An unexpected failure met by every record that triggers it logged its traceback
    for each, its message quoting the data it choked on (review finding)."""
    now = [0.0]
    log = ThrottledLog(logging.getLogger("t.bug"), interval=60, clock=lambda: now[0])

    def choke(value: str) -> None:
        raise KeyError(value)

    def fail(value: str) -> BaseException:
        try:
            choke(value)
        except KeyError as exc:
            return exc
        raise AssertionError

    with caplog.at_level(logging.ERROR, logger="t.bug"):
        for i in range(100):
            log.bug(fail("4242424242424242"), "unexpected failure on %s@%d", "t", i)
        log.bug(ValueError("other"), "unexpected failure on %s@%d", "t", 100)
        now[0] = 61.0
        log.bug(fail("x"), "unexpected failure on %s@%d", "t", 101)
    lines = [r.getMessage() for r in caplog.records]
    assert [line.splitlines()[0] for line in lines] == [
        "unexpected failure on t@0",
        "unexpected failure on t@100",
        "unexpected failure on t@101 (and 99 more like it in the last 61 s)",
    ]
    assert all(r.levelno == logging.ERROR for r in caplog.records)
    assert "KeyError" in lines[0] and "4242424242424242" not in caplog.text

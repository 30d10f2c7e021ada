"""Per-record warnings are written once a minute per cause, with a count of the rest:
with the next line of the cause, or once its minute has ended if none comes."""

from __future__ import annotations

import gc
import logging
import subprocess
import sys
import weakref

import pytest

from paystream import log_limits
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


def _throttled(name: str, now: list[float]) -> ThrottledLog:
    return ThrottledLog(logging.getLogger(name), interval=60, clock=lambda: now[0])


def test_a_burst_then_silence_has_its_count_written_once_its_minute_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 60 s Redis hang parked 282 commands; the cause never came back, and the log
    showed one line and no count (review h78d F2)."""
    now = [0.0]
    log = _throttled("t.flush", now)
    with caplog.at_level(logging.WARNING, logger="t.flush"):
        for i in range(282):
            now[0] = i * 0.2
            log.warning(("park", "acme"), "tenant %s: parking command %s", "acme", f"c{i}")
        log_limits.flush_all()  # (56 s in: the minute has not ended)
        assert [r.getMessage() for r in _of(caplog, "t.flush")] == [
            "tenant acme: parking command c0"
        ]
        now[0] = 60.0
        log_limits.flush_all()
        now[0] = 200.0
        log_limits.flush_all()  # (written once)
    # (flush_all writes other tests' ThrottledLogs' counts too: this one's only)
    assert [(r.levelno, r.name, r.getMessage()) for r in _of(caplog, "t.flush")] == [
        (logging.WARNING, "t.flush", "tenant acme: parking command c0"),
        (
            logging.WARNING,
            "t.flush",
            "tenant acme: parking command c0 (and 281 more like it in the last 60 s)",
        ),
    ]


def test_a_count_written_by_the_flush_is_not_repeated_by_a_later_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    log = _throttled("t.flush.again", now)
    with caplog.at_level(logging.WARNING, logger="t.flush.again"):
        log.warning("big", "oversized record %s", 1)
        log.warning("big", "oversized record %s", 2)
        now[0] = 61.0
        log.flush()
        now[0] = 62.0
        log.warning("big", "oversized record %s", 3)
        log.warning("big", "oversized record %s", 4)  # (held: 3 was written at 62)
        now[0] = 130.0
        log.flush()
    assert [r.getMessage() for r in caplog.records] == [
        "oversized record 1",
        "oversized record 1 (and 1 more like it in the last 61 s)",
        "oversized record 3",
        "oversized record 3 (and 1 more like it in the last 68 s)",
    ]


def test_a_cause_with_nothing_held_back_writes_nothing_on_flush(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    log = _throttled("t.flush.none", now)
    with caplog.at_level(logging.WARNING, logger="t.flush.none"):
        log.warning("a", "only once")
        now[0] = 61.0
        log.flush()
        log.warning("a", "only once")  # (a first line again: no count, none due)
    assert [r.getMessage() for r in caplog.records] == ["only once", "only once"]


def test_a_bugs_count_is_written_at_error_without_its_traceback_or_card_numbers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    log = _throttled("t.flush.bug", now)
    with caplog.at_level(logging.WARNING, logger="t.flush.bug"):
        for _ in range(3):
            log.bug(ValueError("4242424242424242"), "failed on %s", "4242 4242 4242 4242")
        now[0] = 60.0
        log.flush()
    count = caplog.records[-1]
    assert count.levelno == logging.ERROR
    assert count.getMessage() == (
        "failed on [card number] (and 2 more like it in the last 60 s)"
    ), count.getMessage()


def test_a_held_cause_keeps_its_first_line_as_text_not_its_arguments(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A command or record passed to be logged is not kept alive for the count line;
    its text is kept short."""

    class Big:
        def __repr__(self) -> str:
            return "x" * 1_000

    logger = logging.getLogger("t.flush.kept")
    monkeypatch.setattr(logger, "propagate", False)  # (pytest's capture keeps records)
    monkeypatch.setattr(logger, "handlers", [logging.NullHandler()])
    now = [0.0]
    log = ThrottledLog(logger, interval=60, clock=lambda: now[0])
    big = Big()
    gone = weakref.ref(big)
    log.warning("c", "record %r", big)
    log.warning("c", "record %r", big)
    del big
    gc.collect()
    assert gone() is None
    [(_, kept)] = log._causes.items()
    assert len(kept.said) < 400


def test_a_cause_pushed_out_by_the_cap_has_its_count_written(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(log_limits, "_MAX_CAUSES", 3)
    now = [0.0]
    log = _throttled("t.flush.cap", now)
    with caplog.at_level(logging.WARNING, logger="t.flush.cap"):
        log.warning("t1", "tenant %s", "t1")
        log.warning("t1", "tenant %s", "t1")
        for t in ("t2", "t3", "t4"):
            log.warning(t, "tenant %s", t)
    assert [r.getMessage() for r in caplog.records] == [
        "tenant t1",
        "tenant t2",
        "tenant t3",
        "tenant t1 (and 1 more like it in the last 0 s)",
        "tenant t4",
    ]


def test_a_process_exiting_writes_the_counts_its_last_minute_held_back() -> None:
    """A worker stopped mid-outage wrote no count for its last minute: the timer flushes
    only ended intervals. flush_at_exit writes them all when the process exits."""
    code = (
        "import logging\n"
        "from paystream.log_limits import ThrottledLog, flush_at_exit\n"
        "logging.basicConfig(format='%(message)s')\n"
        "flush_at_exit()\n"
        "log = ThrottledLog(logging.getLogger('t.exit'))\n"
        "for i in range(5):\n"
        "    log.warning('park', 'parking command %s', i)\n"
        "log.warning('quiet', 'said once')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    lines = done.stderr.splitlines()
    assert lines[:2] == ["parking command 0", "said once"]
    assert len(lines) == 3
    assert lines[2].startswith("parking command 0 (and 4 more like it in the last ")


def _of(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == name]

"""Warnings that can repeat for every record, written at most once a minute per cause.

A tenant whose provider is down parks each of its commands, and a producer sending
garbage dead-letters each record: a line per record floods the log at hundreds a second
and buries everything else. The counters (`paystream_parked_total`,
`paystream_dead_letters_total`) keep the numbers; the log keeps one line per cause and
interval, saying how many it stood for.

The count of a cause's held-back lines goes with its next line if the cause comes back
after its interval; if it does not (a 60 s hang that parked 282 commands, then silence),
`flush_all` writes it once the interval has ended: the cause's first line again, at its
level, with "(and N more like it in the last S s)". Each process calls `flush_all` from
a timer of its own (a worker every second; `paystream ingress` too), so no count is
lost to a cause that stopped (review h78d F2: the log showed 4 lines for 282 parks).
"""

from __future__ import annotations

import atexit
import logging
import re
import time
import traceback
import weakref
from collections.abc import Callable, Hashable, Mapping
from typing import Any

from paystream.streams.pan import redact_card_numbers

__all__ = ["ThrottledLog", "flush_all", "flush_at_exit"]

# Causes remembered at most; past it the oldest are dropped (made-up tenant ids).
_MAX_CAUSES = 10_000
# A cause's first line is kept this long at most, for its count line (rendered when it
# is written: the arguments, a command or a record among them, are not kept alive).
_KEPT_CHARS = 300

# Every ThrottledLog of the process, for `flush_all` (weakly: a replaced one goes).
_ALL: weakref.WeakSet[ThrottledLog] = weakref.WeakSet()


def flush_all(*, final: bool = False) -> None:
    """Write the held-back count of every cause whose interval has ended, in every
    ThrottledLog of this process: the processes' timers call it. ``final``: every
    cause's, ended or not (the process is exiting: its counts would be lost)."""
    for throttled in list(_ALL):
        throttled.flush(final=final)


def flush_at_exit() -> None:
    """Have this process write every held-back count when it exits (a worker or ingress
    stopped mid-outage: the last minute's count is the one an operator looks for)."""
    atexit.register(flush_all, final=True)


class _Cause:
    """A cause's line last written: when, at what level, its text; and the count since."""

    __slots__ = ("held", "level", "logged_at", "said")

    def __init__(self, logged_at: float, level: int, said: str) -> None:
        self.logged_at = logged_at
        self.level = level
        self.said = said
        self.held = 0


class ThrottledLog:
    """``warning(cause, msg, *args)``: logged if ``cause`` was not logged in the last
    ``interval`` seconds, else counted; the count is written with the next line of that
    cause or, if none comes once the interval has ended, by ``flush()``."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._interval = interval
        self._clock = clock
        # Ordered by the time each cause was last written (re-inserted when it is):
        # those whose interval has ended come first.
        self._causes: dict[Hashable, _Cause] = {}
        _ALL.add(self)

    def warning(self, cause: Hashable, msg: str, *args: Any, exc_info: bool = False) -> None:
        self._write(logging.WARNING, cause, msg, args, exc_info)

    def bug(self, exc: BaseException, msg: str, *args: Any) -> None:
        """An unexpected exception of ours, met again for every record that triggers it:
        logged at ERROR once a minute per exception type and place, with its traceback
        cut of card numbers (an exception's message may quote the data it choked on)."""
        frames = traceback.extract_tb(exc.__traceback__)
        where = (frames[-1].filename, frames[-1].lineno) if frames else ("", 0)
        cause = (type(exc), *where)
        self._write(logging.ERROR, cause, msg, args, False, lambda: _traceback_text(exc))

    def flush(self, *, final: bool = False) -> None:
        """Write, for each cause whose interval has ended with lines held back, how many
        (once: the cause is then forgotten, and its next line written as a first).
        ``final``: every cause's, its interval ended or not."""
        now = self._clock()
        ended: list[Hashable] = []
        for cause, seen in self._causes.items():
            if not final and now - seen.logged_at < self._interval:
                break  # (the rest were written later still)
            ended.append(cause)
        for cause in ended:
            self._write_count(self._causes.pop(cause), now)

    def _write(
        self,
        level: int,
        cause: Hashable,
        msg: str,
        args: tuple[Any, ...],
        exc_info: bool,
        tail: Callable[[], str] | None = None,
    ) -> None:
        now = self._clock()
        seen = self._causes.get(cause)
        if seen is not None and now - seen.logged_at < self._interval:
            seen.held += 1
            return
        said = _rendered(msg, args)
        if seen is not None and seen.held:
            msg += " (and %d more like it in the last %.0f s)"
            args = (*args, seen.held, now - seen.logged_at)
        self._causes.pop(cause, None)  # re-inserted last: the oldest causes go first
        if len(self._causes) >= _MAX_CAUSES:
            oldest = next(iter(self._causes))
            self._write_count(self._causes.pop(oldest), now)  # (its count is not lost)
        self._causes[cause] = _Cause(now, level, said)
        if tail is not None:  # (after the count: a traceback ends the line)
            msg += "\n%s"
            args = (*args, tail())
        self._log.log(level, msg, *args, exc_info=exc_info)

    def _write_count(self, seen: _Cause, now: float) -> None:
        if seen.held:
            self._log.log(
                seen.level,
                "%s (and %d more like it in the last %.0f s)",
                seen.said,
                seen.held,
                now - seen.logged_at,
            )


def _rendered(msg: str, args: tuple[Any, ...]) -> str:
    """``msg % args`` as logging renders it, cut short and cut of card numbers."""
    # ("%(name)s" with one mapping: as a LogRecord takes it.)
    one_mapping = len(args) == 1 and isinstance(args[0], Mapping) and args[0]
    fill: Any = args[0] if one_mapping else args
    try:
        text = msg % fill if args else msg
    except (TypeError, ValueError, KeyError):  # (the line itself fails as logging's would)
        text = msg
    # Cut of card numbers before the cut (which could leave too few digits of one to be
    # seen as one) and after (which could leave digits that look like one). Not scanned
    # with fewer decimal digits than any card number has: the scan costs more than the
    # line itself, on every line written (a flood of distinct causes: review h78j F3).
    if not _may_hold_card_number(text):
        return text if len(text) <= _KEPT_CHARS else text[:_KEPT_CHARS] + "..."
    text = redact_card_numbers(text)
    if len(text) > _KEPT_CHARS:
        text = redact_card_numbers(text[:_KEPT_CHARS]) + "..."
    return text


# Any decimal digit (of any script, as redact_card_numbers reads them).
_DIGIT = re.compile(r"\d")


def _may_hold_card_number(text: str) -> bool:
    """At least as many decimal digits as the shortest card number (13)."""
    return len(_DIGIT.findall(text)) >= 13


def _traceback_text(exc: BaseException) -> str:
    return redact_card_numbers("".join(traceback.format_exception(exc)).rstrip())

"""Warnings that can repeat for every record, written at most once a minute per cause.

A tenant whose provider is down parks each of its commands, and a producer sending
garbage dead-letters each record: a line per record floods the log at hundreds a second
and buries everything else. The counters (`paystream_parked_total`,
`paystream_dead_letters_total`) keep the numbers; the log keeps one line per cause and
interval, saying how many it stood for.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Hashable
from typing import Any

from paystream.streams.pan import redact_card_numbers

__all__ = ["ThrottledLog"]

# Causes remembered at most; past it the oldest are dropped (made-up tenant ids).
_MAX_CAUSES = 10_000


class ThrottledLog:
    """``warning(cause, msg, *args)``: logged if ``cause`` was not logged in the last
    ``interval`` seconds, else counted and mentioned with the next line of that cause."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._interval = interval
        self._clock = clock
        self._causes: dict[Hashable, tuple[float, int]] = {}  # cause → (logged at, held back)

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
        if seen is not None and now - seen[0] < self._interval:
            self._causes[cause] = (seen[0], seen[1] + 1)
            return
        if seen is not None and seen[1]:
            msg += " (and %d more like it in the last %.0f s)"
            args = (*args, seen[1], now - seen[0])
        self._causes.pop(cause, None)  # re-inserted last: the oldest causes go first
        if len(self._causes) >= _MAX_CAUSES:
            del self._causes[next(iter(self._causes))]
        self._causes[cause] = (now, 0)
        if tail is not None:  # (after the count: a traceback ends the line)
            msg += "\n%s"
            args = (*args, tail())
        self._log.log(level, msg, *args, exc_info=exc_info)


def _traceback_text(exc: BaseException) -> str:
    return redact_card_numbers("".join(traceback.format_exception(exc)).rstrip())

"""When a baseline process took its first record, for the bench to time a phase by.

A baseline forwards records that were waiting for it, and its output can come back in
one fetch: then first-to-last arrival is no window, and the phase is timed from the
moment the baseline took its first record instead. ``time.monotonic()`` is the
system-wide CLOCK_MONOTONIC on Linux, so the child's reading lines up with the bench's.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

__all__ = ["FirstRecordMark", "read_first_record"]

_PREFIX = "paystream-bench: first record at monotonic "
_LINE = re.compile(re.escape(_PREFIX) + r"([0-9]+(?:\.[0-9]+)?)")


class FirstRecordMark:
    """Prints the mark line on stdout (the child's log) once."""

    def __init__(self) -> None:
        self.done = False

    def __call__(self) -> None:
        if not self.done:
            self.done = True
            print(f"{_PREFIX}{time.monotonic():.6f}", flush=True)


def read_first_record(log: Path) -> float | None:
    """The mark a child wrote to ``log``, if it did."""
    try:
        match = _LINE.search(log.read_text(errors="replace"))
    except OSError:
        return None
    return float(match.group(1)) if match else None

"""The bench's own full garbage collections, held to the quiet moments between phases.

The load generator and the outcome reader share this process, and by the rate phase its
heap holds every command sent so far and every arrival noted: CPython's automatic
generation-2 collections then took 80-175 ms each (measured 2026-12-04, a gc callback in
the bench), once every few seconds. During the rate phase each one stopped the sends and
the reads together, and, since latency counts from a command's due time, charged the
pause to the process under test: the worst cluster of slow commands in a 10 s run
(56 commands up to 150 ms) ended with the bench's own 100 ms collection, not the worker's.

So, like the worker (``paystream/gc_pacing.py``), the bench stops automatic full
collections for a run and collects between phases, outside any measured window. Young
collections, which are short, run as usual.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["between_phases", "full_collections_held"]

# The generation-2 threshold counts young collections; this many never happen.
_NEVER = 2**31 - 1


@contextmanager
def full_collections_held() -> Iterator[None]:
    """No automatic full collection inside the block; one at its start and end."""
    young, middle, old = gc.get_threshold()
    gc.collect()
    gc.set_threshold(young, middle, _NEVER)
    try:
        yield
    finally:
        gc.set_threshold(young, middle, old)
        gc.collect()


def between_phases() -> None:
    """A quiet moment (no phase measuring): collect what the last phase left."""
    gc.collect()

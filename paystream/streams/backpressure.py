"""Faust's back-pressure made topic-wide, so that an agent that stalls stops no other.

Faust's conductor puts each fetched record into its agent's queue. When a record lands
in a queue at 80% or more, Faust stops fetching *that record's partition*; the other
partitions of the topic go on being fetched, and what a poll already holds is delivered
regardless. An agent that has stopped taking (a ledger sink waiting on its database)
thus gets poll after poll from its other partitions until its queue is full; the
conductor then waits on that queue, and with it every agent's delivery: the commands
stop too. (A simulation with Faust's own conductor, consumer and mode's queue filled a
4096-record queue in nine polls of 500 with three partitions behind.)

Paused and resumed topic-wide instead, a queue takes at most the rest of the poll in
hand past 80%; with a poll under a fifth of the queue (``faust_transport.max_poll_records``) it
never fills. Faust's rule of not pausing while tables recover is kept (the original
methods are called per partition).
"""

from __future__ import annotations

from typing import Any

from faust.transport.consumer import Consumer
from faust.types import TP

__all__ = ["FAUST_PER_PARTITION", "install", "on_buffer_drop", "on_buffer_full"]

# Faust's own methods, one partition at a time (as imported, before install()).
FAUST_PER_PARTITION = {
    "on_buffer_full": Consumer.on_buffer_full,
    "on_buffer_drop": Consumer.on_buffer_drop,
}
_pause_one = FAUST_PER_PARTITION["on_buffer_full"]
_resume_one = FAUST_PER_PARTITION["on_buffer_drop"]


def on_buffer_full(self: Any, tp: TP) -> None:
    """Stop fetching every assigned partition of ``tp``'s topic."""
    for other in self.assignment():
        if other.topic == tp.topic:
            _pause_one(self, other)


def on_buffer_drop(self: Any, tp: TP) -> None:
    """Fetch again every partition of ``tp``'s topic that was stopped, but not one Faust
    has paused meanwhile (a rebalance pauses all, and keeps the stream's partitions
    paused while tables recover): its pressure ends when the queue is cleared, and the
    agent's next wait on the empty queue comes here, mid-recovery; resumed, its records
    ran against tables still being restored. Faust resumes those when it is done."""
    paused = self._paused_partitions
    for other in list(self._buffered_partitions):
        if other.topic != tp.topic:
            continue
        if other in paused:
            self._buffered_partitions.discard(other)
        else:
            _resume_one(self, other)


def install() -> None:
    """Patch Faust's consumer class (before any conductor captures its methods)."""
    Consumer.on_buffer_full = on_buffer_full  # type: ignore[method-assign]
    Consumer.on_buffer_drop = on_buffer_drop  # type: ignore[method-assign]

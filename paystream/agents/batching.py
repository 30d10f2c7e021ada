"""Take a Faust agent's events in batches straight from its channel queue.

``Stream.take_events`` costs the command agent in two ways: every event goes through
the stream iterator (a loop turn, sensors, a take-buffer processor, an ``ack``
coroutine), and an idle agent wakes every ``within`` seconds to look at an empty
buffer (500 wake-ups a second at 2 ms). Reading the queue the conductor delivers into
does neither: the agent sleeps until an event arrives, takes everything already
delivered, and waits ``within`` once for the rest of a fetch to land.

What the stream did that still matters is kept: events from an older consumer
generation (partitions reassigned) are dropped, and nothing is handed over while flow
control is suspended. Acks are not needed: the commands topic is
``acks=False`` and the agent commits its own durable offsets.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from faust.types import AppT, EventT

__all__ = ["take_batches"]


async def take_batches(
    stream: Any,
    max_: int,
    within: float,
    idle: float,
    assignments: Callable[[], int] | None = None,
    per_key_max: int | None = None,
) -> AsyncIterator[list[EventT]]:
    """Yield lists of at most ``max_`` events, oldest first, as soon as one has arrived.

    With ``per_key_max``, a batch also ends before the event that would be the
    (``per_key_max`` + 1)th of one record key: that key's commands run one at a time,
    and a batch is done only when its longest run is, so one tenant's backlog would
    otherwise hold every other tenant's outcomes for its whole length.

    An empty list is yielded after ``idle`` seconds without events, so the caller can do
    housekeeping (looking for records that never arrived) while the topic is quiet.
    With ``assignments`` (a count of the assignments received), a batch taken before an
    assignment that came while it waited is dropped, whatever its generation.
    """
    queue = stream.channel.queue
    app: AppT = stream.app
    while True:
        try:
            batch, taken_at = await _gather(queue, max_, within, idle, assignments, per_key_max)
        except StopAsyncIteration:
            # Faust ends an agent's stream this way when the worker stops. Events in
            # hand were never handled, so never committed: they are redelivered.
            return
        if not batch:
            yield []
            continue
        # Suspended (a rebalance or re-subscription): wait it out rather than drop the
        # batch. Only a new assignment (partitions reassigned, Faust seeks them back to
        # committed offsets) makes these events stale; dropping them otherwise would
        # leave a gap that nothing later may reveal. Without a count of assignments, a
        # new generation says it (not always: a rejoin can keep the generation).
        await app.flow_control.acquire()
        if assignments is not None and assignments() != taken_at:
            # A rebalance came and went while the batch waited (taken from the queue
            # before Faust cleared it): a rejoin can return the same generation, and a
            # partition may have gone to another worker, which runs these records from
            # the committed offset. Those still ours: Faust seeks them back to it, and
            # the continuity guard, reset by the assignment, reads any it does not.
            continue
        generation = app.consumer_generation_id
        fresh = [e for e in batch if e.message.generation_id == generation]
        if fresh:
            yield fresh


async def _gather(
    queue: Any,
    max_: int,
    within: float,
    idle: float,
    assignments: Callable[[], int] | None,
    per_key_max: int | None = None,
) -> tuple[list[EventT], int | None]:
    """Up to ``max_`` events as soon as one has arrived, none after ``idle`` seconds; and
    the ``assignments`` count as the first was taken."""
    if queue.empty():
        try:
            first = await asyncio.wait_for(queue.get(), idle)
        except TimeoutError:
            return [], None
    else:
        first = queue.get_nowait()
    taken_at = None if assignments is None else assignments()
    batch: list[EventT] = [first]
    per_key = None if per_key_max is None else {first.message.key: 1}
    if _drain(queue, batch, max_, per_key, per_key_max) and within > 0:
        # A fetch is delivered event by event; give the rest of it time to land.
        await asyncio.sleep(within)
        _drain(queue, batch, max_, per_key, per_key_max)
    return batch, taken_at


def _drain(
    queue: Any,
    batch: list[EventT],
    max_: int,
    per_key: dict[Any, int] | None = None,
    per_key_max: int | None = None,
) -> bool:
    """Take what is queued into ``batch``; whether it may take more."""
    if per_key is None or per_key_max is None:
        while len(batch) < max_ and not queue.empty():
            batch.append(queue.get_nowait())
        return len(batch) < max_
    # (asyncio.Queue's deque, read to look at the next event before taking it: left in
    # the queue, it is the next batch's first, the order kept.)
    waiting = queue._queue
    while len(batch) < max_ and waiting:
        key = waiting[0].message.key
        taken = per_key.get(key, 0)
        if taken >= per_key_max:
            return False
        per_key[key] = taken + 1
        batch.append(queue.get_nowait())
    return len(batch) < max_

"""Offsets committed by the agents themselves, only once what they produced is durable."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from aiokafka import TopicPartition
from faust.transport.consumer import Consumer as FaustConsumer
from faust.types import TP, AppT, EventT

from paystream import metrics
from paystream.streams.record_batches import offset_after

__all__ = ["DurableOffsets", "Stall", "commit_periodically", "despite_cancellation", "stalls"]

log = logging.getLogger(__name__)


class DurableOffsets:
    """Offsets of records whose effects (outcomes, table changes, ledger rows) are durable.

    Faust does not commit these topics (``acks=False``): it acknowledges the records it
    skips while flow control is suspended (shutdown, rebalance), and its commit would then
    pass commands that never got an outcome (a crash test caught exactly that), or
    outcomes never stored in the ledger.
    """

    def __init__(
        self,
        app: AppT,
        *,
        published: dict[int, int] | None = None,
        agent: str = "",
        topic: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``published``: where to record, per partition, the offset last committed.
        ``agent``, ``topic``: what the progress metrics call this agent, and its topic
        (empty: not in the metrics)."""
        self._app = app
        self._published = published
        self._ready: dict[TP, int] = {}
        self._generation: int | None = None  # the consumer generation ``_ready`` is of
        self.agent, self.topic = agent, topic
        self._committed: dict[TP, int] = {}  # what this worker committed, per partition
        # Per partition, an offset below which the broker holds no record left to handle
        # (retention removed them, or control records): not lag, though not committed.
        self._passed: dict[TP, int] = {}
        self.committed_at = 0.0  # Unix time of the last commit that moved any (0: none)
        # Monotonic times: the last progress (a commit that moved an offset), and since
        # when the agent has been seen behind (None: not behind when last seen).
        self._clock = clock
        self._progress_at = self._started_at = clock()
        self._behind_since: float | None = None
        # The same per partition, for the stalled-seconds gauge: one partition's commits
        # are no progress for another (a partition held back for good showed nowhere while
        # its neighbours committed; review h67g). Only the gauge and its ticket read them:
        # a partition whose lag is control records alone (an upstream transactional
        # producer's commit marker) clears only at a sweep of a quiet agent, so while a
        # backlog drains elsewhere it reads as stuck, and /readyz and /healthz (which
        # restarts) stay on the agent as a whole (review h67i).
        self._partition_progress_at: dict[TP, float] = {}
        self._partition_behind_since: dict[TP, float] = {}
        # The commit on its way to the broker, whether or not its caller still waits.
        self._in_flight: asyncio.Future[Any] | None = None
        if agent and topic:
            metrics.PROGRESS.track(self)

    def done_up_to(self, tp: TP) -> int:
        """The offset before which the partition's records are durably handled: the later
        of what the group had committed at the assignment (where Faust started it) and
        what this worker committed since. Never committed by the group: all of the
        partition is still to be handled, from its log start (which the continuity guard
        reports as passed: retention may have emptied the partition)."""
        known = getattr(self._app.consumer, "_committed_offset", {})
        return max(self._committed.get(tp) or 0, known.get(tp) or 0, self._passed.get(tp, 0))

    def past_bound(self, events: Sequence[EventT], bound: int) -> list[TP]:
        """The partitions where handling ``events`` would leave more than ``bound``
        records past :meth:`done_up_to` (handled, not yet committed)."""
        last: dict[TP, int] = {}
        for event in events:
            message = event.message
            if message.offset > last.get(message.tp, -1):
                last[message.tp] = message.offset
        return [tp for tp, offset in last.items() if offset + 1 - self.done_up_to(tp) > bound]

    def ready_for(self, tp: TP) -> bool:
        """Whether a commit would move the partition's offset (handled, not committed)."""
        return tp in self._ready

    def lag(self) -> dict[TP, int]:
        """Per partition this worker owns: records on the broker (as of its latest fetch)
        past the offset committed for them, i.e. not yet durably handled."""
        consumer = cast(FaustConsumer, self._app.consumer)
        out: dict[TP, int] = {}
        for tp in consumer.assignment():
            if tp.topic != self.topic:
                continue
            done = self.done_up_to(tp)
            try:
                high = consumer.highwater(tp)
            except Exception:  # not fetched from yet (or the consumer is going away)
                high = None
            if high is not None:
                out[tp] = max(0, int(high) - int(done))
        return out

    def passed(self, tp: TP, offset: int) -> None:
        """Nothing below ``offset`` is left on the broker to handle (see ContinuityGuard's
        ``on_passed``): a partition whose records retention removed before this group got
        to them is not behind, nor stalled, for want of a record to commit past."""
        self._keep_only(self._app.consumer_generation_id)
        self._passed[tp] = max(self._passed.get(tp, 0), offset)

    def fetch_ages(self) -> dict[TP, float]:
        """Per partition this worker owns: seconds since the broker last answered a fetch
        for it (absent until the first answer). A broker that stops answering is seen
        here, not in the lag (which stands as of the last answer)."""
        consumer = cast(FaustConsumer, self._app.consumer)
        client = cast(Any, consumer)._thread._ensure_consumer()  # aiokafka's, on its thread
        now_ms = time.time() * 1000
        out: dict[TP, float] = {}
        for tp in consumer.assignment():
            if tp.topic != self.topic:
                continue
            polled = client.last_poll_timestamp(TopicPartition(tp.topic, tp.partition))
            if polled is not None:
                out[tp] = max(0.0, (now_ms - polled) / 1000)
        return out

    def partition_stalls(self) -> dict[TP, float]:
        """Per partition this worker owns with records to handle: seconds it has been
        behind without committing progress on it (counted from the later of its last
        commit and when it was first seen behind by a call of this or
        :meth:`stalled_for`): the gauge's."""
        now = self._clock()
        lag = self.lag()
        behind_since = self._partition_behind_since
        for tp in [tp for tp in behind_since if not lag.get(tp)]:
            del behind_since[tp]
        out: dict[TP, float] = {}
        for tp, records in lag.items():
            if records:
                since = behind_since.setdefault(tp, now)
                progress = self._partition_progress_at.get(tp, self._started_at)
                out[tp] = now - max(since, progress)
        return out

    def stalled_for(self) -> tuple[int, float] | None:
        """``(records behind, seconds)`` while the agent has records to handle: how long
        it has been behind without committing progress; None when it is not behind.

        Counted from the later of its last commit and when it was first seen behind (by
        a call of this), so that a burst after a quiet hour does not read as an hour's
        stall before the first commit. Call it periodically (probes do) for that.
        """
        self.partition_stalls()  # (the probes start the gauge's clocks too)
        now = self._clock()
        behind = sum(self.lag().values())
        if behind == 0:
            self._behind_since = None
            return None
        if self._behind_since is None:
            self._behind_since = now
        return behind, now - max(self._behind_since, self._progress_at)

    def advance(self, events: Sequence[EventT]) -> None:
        # Events of an older generation (the batch outlived a rebalance) are left out:
        # their partitions may be another worker's now, whose commits must not be undone.
        generation = self._app.consumer_generation_id
        self._keep_only(generation)
        for event in events:
            if event.message.generation_id != generation:
                continue
            tp, offset = event.message.tp, offset_after(event.message)
            if offset > self._ready.get(tp, -1):
                self._ready[tp] = offset

    def _keep_only(self, generation: int) -> None:
        """Forget offsets made ready in an older generation. A batch can finish while
        the group is rejoining (the generation not yet bumped); if its partitions come
        back, Faust seeks them to the committed offset and their records run again.
        Committing the stale offset meanwhile would tell the limits those records are
        done, and they would forget the decisions the replay must repeat."""
        if self._generation != generation:
            self._ready.clear()
            # What this worker committed before: a partition that moved away and came
            # back has the group's newer offset (Faust reads it at the assignment).
            self._committed.clear()
            self._passed.clear()
            self._generation = generation
            # (The stall clock runs on: a rebalance is not progress. A partition handed
            # over with a backlog counts from when the agent is first seen behind.)

    async def commit(self) -> None:
        # One commit at a time. A cancelled caller (the periodic committer, stopped at a
        # hand-over) does not stop its commit, which runs on Faust's consumer thread and
        # is retried there on a coordinator error: a later commit sent beside it could
        # land first and then be overwritten by the earlier, smaller offsets (review).
        while self._in_flight is not None and not self._in_flight.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(self._in_flight)
        self._keep_only(self._app.consumer_generation_id)
        if not self._ready:
            return
        consumer = cast(FaustConsumer, self._app.consumer)
        # Partitions no longer ours are dropped: their new owner redoes those commands.
        # (Faust would leave them out too, but given none at all it crashes the worker.)
        owned = consumer.assignment()
        for tp in [tp for tp in self._ready if tp not in owned]:
            del self._ready[tp]
        if not self._ready:
            return
        offsets = dict(self._ready)
        # The commit and what it records run as one task: a caller cancelled meanwhile
        # (a bounded wait, the periodic committer at a hand-over) leaves the commit going
        # on, and what lands is still recorded as committed (review h68af).
        self._in_flight = asyncio.ensure_future(self._commit_and_record(consumer, offsets))
        await asyncio.shield(self._in_flight)

    async def _commit_and_record(self, consumer: FaustConsumer, offsets: dict[TP, int]) -> None:
        generation = self._app.consumer_generation_id
        # Faust has no public "commit these offsets"; its consumer thread's commit is it.
        committed = await consumer._commit(offsets)
        # aiokafka retries a commit under the generation current at each try: one stuck
        # through a rejoin lands for partitions that may be another worker's by now, whose
        # own commits may take the group's offset back below it. Not published as ours
        # then (what the limits forget by: review h68ac).
        moved = self._app.consumer_generation_id != generation
        # Only now are they done with: a commit that failed leaves them for the next
        # one. Later batches may have advanced some partitions meanwhile.
        for tp, offset in offsets.items():
            if committed:
                self._committed[tp] = offset
                self.committed_at = time.time()
                self._progress_at = self._partition_progress_at[tp] = self._clock()
            if self._ready.get(tp) == offset:
                del self._ready[tp]
            published = self._published
            if (
                committed
                and not moved
                and published is not None
                and offset > published.get(tp.partition, -1)
            ):
                published[tp.partition] = offset
        if not committed:
            log.info("offsets not committed (rebalancing); the commands will be redelivered")


@dataclass(frozen=True, slots=True)
class Stall:
    agent: str
    behind: int  # records on the broker the agent has not durably handled
    seconds: float  # behind, without committing progress, for this long

    def describe(self) -> str:
        return (
            f"{self.agent} agent stalled: {self.behind} records behind, no progress "
            f"for {self.seconds:.0f} s"
        )


def stalls(tracked: Iterable[DurableOffsets], after: float) -> list[Stall]:
    """The agents behind without progress for ``after`` seconds or more."""
    found = []
    for offsets in tracked:
        try:
            behind = offsets.stalled_for()
        except Exception:  # noqa: S112 - the app not started (or stopping): nothing to say
            continue
        if behind is not None and behind[1] >= after:
            found.append(Stall(offsets.agent, *behind))
    return sorted(found, key=lambda s: s.agent)


async def commit_periodically(app: AppT, offsets: DurableOffsets, interval: float) -> None:
    """Commit what is durable every ``interval`` seconds, until cancelled."""
    while True:
        await asyncio.sleep(interval)
        if app.rebalancing:
            # The assignment is changing under us (the hand-over hook commits what is
            # durable); Faust crashes the worker when given nothing left to commit.
            continue
        try:
            await offsets.commit()
        except Exception:
            log.warning("offset commit failed; retrying next interval", exc_info=True)


async def despite_cancellation(work: Awaitable[None], seconds: float) -> None:
    """Finish ``work`` even if the task is cancelled meanwhile, then pass the cancel on.

    Faust stops an agent by ending its stream and, straight after, cancelling its task
    (then waits for the task to end). Without this, the final offset commit was cut off
    at every idle shutdown: a worker stopped seconds after handling a backlog committed
    nothing, and the next one redid all of it.
    """
    task = asyncio.ensure_future(work)
    deadline = time.monotonic() + seconds
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait_for(asyncio.shield(task), max(0.0, deadline - time.monotonic()))
        except asyncio.CancelledError:
            # The agent was cancelled (a request is pending on it), or the work itself
            # ended cancelled: only the first is passed on.
            this = asyncio.current_task()
            cancelled = cancelled or (this is not None and this.cancelling() > 0)
        except TimeoutError:
            if task.done():  # the work's own timeout, not our deadline
                log.warning("shutdown work failed", exc_info=True)
                continue
            log.warning("shutdown work unfinished after %.0f s; leaving without it", seconds)
            task.cancel()
            break
        except Exception:
            log.warning("shutdown work failed", exc_info=True)
    if cancelled:
        raise asyncio.CancelledError

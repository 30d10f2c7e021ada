"""No record of a partition silently skipped on its way to an agent (see ContinuityGuard).

Used by the command agent (a skipped command is never answered) and the ledger sink (a
skipped outcome never reaches the ledger): both commit offsets themselves, past the
highest record handled, so a record Faust dropped before it would be committed past.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from faust.events import Event
from faust.transport.consumer import Consumer as FaustConsumer
from faust.types import TP, AppT, EventT, Message

from paystream import metrics
from paystream.app import app, settings
from paystream.streams.admin import bootstrap_servers
from paystream.streams.kafka_auth import client_auth
from paystream.streams.record_batches import offset_after, stands_for

__all__ = [
    "BROKER_ASK_SECONDS",
    "GAP_READ_MAX",
    "SWEEP_INTERVAL_SECONDS",
    "CommittedReader",
    "ContinuityGuard",
    "RangeReader",
]

log = logging.getLogger(__name__)

# How long a partition must stand still, with records past it on the broker, before the
# agent reads them directly (see ContinuityGuard.sweep).
SWEEP_INTERVAL_SECONDS = 1.0
# Longest the guard waits for the broker to say where a partition starts.
BROKER_ASK_SECONDS = 10.0
# A gap found this soon after partitions were reassigned is Faust's known hand-over drop
# (records fetched for the old assignment, discarded): logged at INFO. Later, a WARNING.
HANDOVER_SECONDS = 30.0
# Most records read directly at once (a batch's worth: they are held in memory and run
# as one batch); a longer gap is read on in the next batches.
GAP_READ_MAX = 500


# Reads records [start, end) of a partition straight from the broker: the records found
# and the offset the read got to (past offsets that hold no record, e.g. control records).
RangeReader = Callable[[TP, int, int], Awaitable[tuple[list[EventT], int]]]
# The consumer group's committed offsets (None: never committed), asked of the broker.
CommittedReader = Callable[[Sequence[TP]], Awaitable[dict[TP, int | None]]]


class _StartUnknown(Exception):
    """The broker did not say where a partition's records start for this group."""


class ContinuityGuard:
    """Makes sure no command record is silently skipped on its way to the agent.

    Faust drops records it pulls while flow control is suspended or that carry an older
    consumer generation (recovery, rebalance) and lets the following ones through; a
    crash test caught a new worker processing offsets 100-104 and 106-124 of a partition
    but never 105. The commands topic is neither compacted nor transactional, so its
    offsets are contiguous and a jump means a skip: the missing records are read directly
    from the broker and run first. (Seeking Faust's consumer back instead left the
    partition stalled.) Records already handled that Faust delivers again are dropped.

    A skipped *tail* has no later record to reveal it: Faust clears its delivery queue
    when flow control resumes after recovery, and a CI crash test lost the last 23
    commands of a partition that way. So while the agent is idle, :meth:`sweep` asks the
    broker for the end of every partition that has not moved for a sweep interval and
    reads what lies between our next offset and that end directly.

    A partition the group never committed starts where ``auto_offset_reset='earliest'``
    puts it, at the log start: a new consumer group whose whole backlog was cleared
    that way has nothing else to measure from (a CI run's fourth worker, starting
    without committed offsets, handled none of 384 waiting commands).
    """

    def __init__(
        self,
        app: AppT,
        topic: str,
        read_range: RangeReader | None = None,
        sweep_interval: float = SWEEP_INTERVAL_SECONDS,
        read_committed: CommittedReader | None = None,
        on_passed: Callable[[TP, int], None] | None = None,
        assignments: Callable[[], int] | None = None,
    ) -> None:
        """``on_passed(tp, offset)``: a sweep found no record at all below ``offset``
        past what the agent had handled (gone to retention, or control records).
        ``assignments()``: how many assignments the worker has had (each one seeks its
        partitions to their committed offsets, even one of the same generation)."""
        self._app = app
        self._read_committed = read_committed or functools.partial(_group_committed, app)
        self._sweep_interval = sweep_interval
        self._topic = topic
        self._read_range = read_range or _read_range
        self._next: dict[TP, int] = {}
        self._assignments = assignments or (lambda: 0)
        # (Generation, assignments) when ``_next`` was last started afresh.
        self._since: tuple[int, int] | None = None
        # Per partition, the next offset we expected at the last sweep.
        self._at_last_sweep: dict[TP, int] = {}
        # The partitions' ends as the broker said them when the last sweep asked (asked
        # in the background: a ListOffsets round trip, on Tansu a Fetch more per
        # partition, held the batch in hand 20-40 ms once a second when it was awaited),
        # and the assignment it was asked in.
        self._ends: asyncio.Future[Mapping[TP, int]] | None = None
        self._ends_since: tuple[int, int] | None = None
        # The question was still open at a sweep: asked before the last one.
        self._ends_late = False
        self._next_sweep = 0.0
        self._reassigned_at = time.monotonic()
        self._on_passed = on_passed

    def _reassignment(self) -> tuple[int, int]:
        """Which assignment the partitions are in: a rejoin can return the same
        generation, and Faust seeks the partitions back all the same (review finding:
        the records of a batch the hand-over gave up on, sought back to, were taken for
        handled, and the next batch's offsets committed past them)."""
        return self._app.consumer_generation_id, self._assignments()

    def _check_generation(self) -> None:
        if self._reassignment() != self._since:
            # Reassigned: Faust sought every partition to its committed offset.
            self._since = self._reassignment()
            self._next.clear()
            self._at_last_sweep.clear()
            self._reassigned_at = time.monotonic()

    def _log_gap(self, message: str, *args: Any) -> None:
        """A gap right after a reassignment is the hand-over drop Faust is known for
        (every rebalance may show one): INFO. Any other is worth a look: WARNING."""
        handover = time.monotonic() - self._reassigned_at < HANDOVER_SECONDS
        log.log(
            logging.INFO if handover else logging.WARNING,
            message + (" (after a reassignment: records Faust dropped in the hand-over)"
                       if handover else ""),
            *args,
        )  # fmt: skip

    async def _expected(self, tps: Sequence[TP]) -> dict[TP, int]:
        """Next offset due on each partition: after what we handled, else the group's
        committed offset, else (never committed) the log start if Faust began there.

        The committed offset is asked of the broker: Faust fills in its own copy only
        after the first fetch may already have reached the agent.
        """
        found = {tp: self._next[tp] for tp in tps if tp in self._next}
        unknown = [tp for tp in tps if tp not in found]
        if not unknown:
            return found
        since = self._reassignment()
        try:
            start = await asyncio.wait_for(self._ask_start(unknown), BROKER_ASK_SECONDS)
        except (KafkaError, TimeoutError) as exc:
            # Asked again next time. Meanwhile nothing is guessed: taking the first record
            # seen as the start would pass over any that Faust dropped before it.
            log.warning("where %s start is unknown: the broker did not say (%r)", unknown, exc)
            raise _StartUnknown from exc
        if since == self._reassignment():
            self._next.update(start)  # asked once per assignment
        return found | start

    async def _ask_start(self, tps: Sequence[TP]) -> dict[TP, int]:
        start: dict[TP, int] = {}
        never = []
        for tp, offset in (await self._read_committed(tps)).items():
            if offset is None:
                never.append(tp)
            else:
                start[tp] = offset
        if never and self._app.conf.consumer_auto_offset_reset == "earliest":
            earliest = await cast(FaustConsumer, self._app.consumer).earliest_offsets(*never)
            start.update(earliest)
            if self._on_passed is not None:
                # Nothing below the log start is left to handle: a partition that
                # retention emptied (the group's offset expired with its records, after
                # a quiet week) has no record to commit past, and is not behind.
                for tp, offset in earliest.items():
                    if offset:
                        self._on_passed(tp, offset)
        return start

    async def admit(self, events: Sequence[EventT]) -> list[EventT]:
        """The events to run, in order, with any records Faust skipped before them.

        A partition whose position is uncertain (the broker did not say where it starts,
        or a direct read stopped short) has its remaining events in this batch held back:
        they are not lost, the partition's next event or :meth:`sweep` finds them as a gap.
        (The sweep runs only while the agent is idle: under full load a held partition
        that gets no further record waits for a quiet moment.) If the partitions are
        reassigned meanwhile, nothing is admitted: the events and the records read for
        them belong to the old generation.
        """
        self._check_generation()
        since = self._since
        admitted: list[EventT] = []
        held: set[TP] = set()
        for event in events:
            tp, offset = event.message.tp, event.message.offset
            if tp in held:
                continue
            expected = self._next.get(tp)
            if expected is None:
                try:
                    expected = (await self._expected([tp])).get(tp, offset)
                except _StartUnknown:
                    held.add(tp)
                    continue
                if self._reassignment() != since:
                    return []
            if offset < expected:
                continue  # handled already
            if offset > expected:
                # At most a batch's worth at once (held in memory, run as one batch): a
                # longer gap is read on in the next batches, from where this one got to.
                end = min(offset, expected + GAP_READ_MAX)
                try:
                    missing, reached = await self._read_range(tp, expected, end)
                except (KafkaError, OSError) as exc:
                    log.warning("%s: reading offsets %d-%d failed (%r)", tp, expected, end, exc)
                    held.add(tp)  # found again as a gap by its next event or a sweep
                    continue
                if self._reassignment() != since:
                    return []
                metrics.SKIPPED_RECORDS.labels(tp.topic, str(tp.partition)).inc(len(missing))
                if missing or not stands_for(tp, expected - 1):
                    self._log_gap(
                        "%s: offsets %d-%d never reached the agent; read %d of them directly",
                        tp,
                        expected,
                        end - 1,
                        len(missing),
                    )
                else:
                    _log_rest_of_a_stood_for_batch(tp, expected, end)
                admitted += missing
                if reached < offset:
                    # The broker did not give us the whole gap in time: run what came,
                    # and find the rest (and this event) again from where the read got to.
                    self._next[tp] = max(
                        reached, missing[-1].message.offset + 1 if missing else expected
                    )
                    held.add(tp)
                    continue
            self._next[tp] = offset_after(event.message)
            admitted.append(event)
        return admitted

    async def sweep(self) -> list[EventT]:
        """Records of partitions idle since the last sweep that exist but never arrived.

        Call only with the delivery queue empty: then a partition whose next offset has
        not moved for a whole interval while the broker held records past it all along
        (when the last sweep asked) is either skipped or stalled, and reading those
        records directly is right for both (Faust delivering them later is harmless:
        :meth:`admit` drops what was handled). A record on the broker only now may just
        not have been fetched yet: at low traffic, sweeps that looked only at the end
        read one directly about once a minute and counted it as skipped (a false alarm).
        The ends are asked at each sweep for the next one, in the background.
        """
        now = time.monotonic()
        app = self._app
        if now < self._next_sweep or not app.flow_control.is_active() or app.rebalancing:
            return []
        self._next_sweep = now + self._sweep_interval
        await asyncio.sleep(0)  # (the last sweep's question answered meanwhile, if in)
        self._check_generation()
        ends_then = self._answered_ends()
        consumer = cast(FaustConsumer, app.consumer)
        ours = [tp for tp in consumer.assignment() if tp.topic == self._topic]
        try:
            current = await self._expected(ours)
        except _StartUnknown:
            return []
        idle = {tp: e for tp, e in current.items() if self._at_last_sweep.get(tp) == e}
        self._at_last_sweep = dict(current)
        if current and self._ends is None:
            self._ends = asyncio.ensure_future(
                _ask_ends(list(current), consumer.highwaters(*current))
            )
            self._ends_since = self._since
            self._ends_late = False
        found: list[EventT] = []
        for tp, expected in idle.items():
            end = min(ends_then.get(tp, expected), expected + GAP_READ_MAX)
            if end <= expected or self._since != self._reassignment():
                continue
            try:
                missing, reached = await self._read_range(tp, expected, end)
            except (KafkaError, OSError) as exc:
                # Left for the next sweep (a crashing agent would drop the batch in hand).
                log.warning("sweep: reading %s %d-%d failed (%r)", tp, expected, end, exc)
                continue
            metrics.SKIPPED_RECORDS.labels(tp.topic, str(tp.partition)).inc(len(missing))
            if missing or not stands_for(tp, expected - 1):
                self._log_gap(
                    "%s: idle for %.1f s with offsets %d-%d on the broker all along that "
                    "never reached the agent; read %d of them directly",
                    tp,
                    self._sweep_interval,
                    expected,
                    end - 1,
                    len(missing),
                )
            else:
                _log_rest_of_a_stood_for_batch(tp, expected, end)
            # Where we stand now: a stall still there next sweep gets its next batch.
            # Offsets the reader passed without a record (a transactional producer's
            # control records) are passed for good, or every sweep would read them again.
            done = max(reached, missing[-1].message.offset + 1 if missing else expected)
            if done > expected:
                self._next[tp] = self._at_last_sweep[tp] = done
                if not missing and self._on_passed is not None:
                    # Nothing there to handle or commit: the agent is not behind on it.
                    self._on_passed(tp, done)
            found += missing
        return found

    def _answered_ends(self) -> Mapping[TP, int]:
        """The ends the last sweep asked for, if the broker has answered (in this
        assignment); a question still open is left to answer, and its answer (which may
        hold records that reached the broker only since the last sweep) is not used."""
        asked, self._ends = self._ends, None
        if asked is None:
            return {}
        if not asked.done():
            self._ends, self._ends_late = asked, True
            return {}
        if asked.cancelled() or self._ends_late or self._ends_since != self._reassignment():
            return {}
        return asked.result()


def _log_rest_of_a_stood_for_batch(tp: TP, start: int, end: int) -> None:
    # Not records Faust dropped (the guard's WARNING, review h66g): the rest of a batch
    # no parser reads, whose stand-in (dead-lettered once) did not vouch for its end.
    log.info(
        "%s: offsets %d-%d read directly: the rest of the unreadable batch stood for at %d",
        tp,
        start,
        end - 1,
        start - 1,
    )


async def _ask_ends(tps: list[TP], asked: Awaitable[Mapping[TP, int]]) -> Mapping[TP, int]:
    """Where ``tps`` end; bounded like the guard's other broker questions, and never
    failing (a failure is said here: the task may outlive the guard, and its exception
    would go unretrieved)."""
    try:
        async with asyncio.timeout(BROKER_ASK_SECONDS):
            ends = await asked
    except Exception as exc:
        log.warning("sweep: the broker did not say where %s end (%r)", tps, exc)
        return {}
    return ends


async def _group_committed(app: AppT, tps: Sequence[TP]) -> dict[TP, int | None]:
    """Ask the group coordinator, on Faust's consumer thread where its client lives."""
    thread = cast(Any, app.consumer)._thread
    client = thread._ensure_consumer()

    async def fetch() -> dict[TP, int | None]:
        return {tp: await client.committed(TopicPartition(tp.topic, tp.partition)) for tp in tps}

    return cast(dict[TP, int | None], await thread.call_thread(fetch))


async def _read_range(tp: TP, start: int, end: int) -> tuple[list[EventT], int]:
    """Records [start, end) of one partition, as Faust events, read with a plain consumer,
    and the offset the read got to (``end`` unless the broker did not answer in time; the
    log start, past ``end``, when retention removed the whole range)."""
    # The generation the read is for: records read after a rebalance must not pass as the
    # new generation's (the partition may be another worker's by then).
    generation = app.consumer_generation_id
    reader = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers(settings.require_broker()),
        **client_auth(settings),
        enable_auto_commit=False,
        # A start below the log start (retention outran a lagging group) reads on from
        # the oldest record kept; the default ("latest") would jump to the end and pass
        # over every record still there.
        auto_offset_reset="earliest",
    )
    found: list[EventT] = []
    try:
        await reader.start()  # (in the try: a failed start is stopped too)
        atp = TopicPartition(tp.topic, tp.partition)
        reader.assign([atp])
        try:  # (not an answer: no shortcut; the read itself crosses what is gone)
            starts = await asyncio.wait_for(reader.beginning_offsets([atp]), BROKER_ASK_SECONDS)
        except (KafkaError, TimeoutError):
            starts = {}
        log_start = starts.get(atp)
        if log_start is not None and log_start > start:
            # Retention removed them before they were handled: nothing to read there.
            # Said at once, not crossed a gap's worth per read (hours, for millions).
            log.warning("%s: offsets %d-%d are gone (retention)", tp, start, log_start - 1)
            if log_start >= end:
                return [], log_start
            start = log_start
        reader.seek(atp, start)
        deadline = time.monotonic() + 30
        position = start  # next offset to read: the consumer passes over control records
        while position < end and time.monotonic() < deadline:
            for r in (await reader.getmany(atp, timeout_ms=500)).get(atp, []):
                if start <= r.offset < end:
                    message = Message(
                        r.topic, r.partition, r.offset, r.timestamp / 1000, r.timestamp_type,
                        list(r.headers or ()), r.key, r.value, None, tp=tp,
                        generation_id=generation,
                    )  # fmt: skip
                    found.append(Event(app, r.key, r.value, message.headers, message))
            position = await reader.position(atp)
    finally:
        await reader.stop()
    return found, min(position, end)

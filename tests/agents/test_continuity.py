"""ContinuityGuard: no command record of a partition is skipped, in the middle or at the end.

Faust's consumer and the broker are stood in for by a partition log held here: what is
tested is the guard's bookkeeping (which ranges it reads, what it admits and drops). The
real thing runs in tests/e2e (test_crash, test_backlog).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError
from faust.types import TP, Message
from mode.utils.queues import FlowControlEvent

from paystream.agents.commands import BATCH_MAX, ContinuityGuard

pytestmark = pytest.mark.asyncio(loop_scope="session")

TOPIC = "t.commands"
P0, P1 = TP(TOPIC, 0), TP(TOPIC, 1)
OTHER = TP("t.changelog", 0)


@dataclass
class Record:
    message: Message


def record(tp: TP, offset: int) -> Record:
    return Record(Message(tp.topic, tp.partition, offset, 0.0, 0, None, b"k", b"v", None, tp=tp))


@dataclass
class StandInConsumer:
    ends: dict[TP, int]
    committed: dict[TP, int | None] = field(default_factory=dict)
    starts: dict[TP, int] = field(default_factory=dict)
    start_queries: int = 0
    committed_queries: int = 0
    coordinator_down: bool = False

    async def read_committed(self, tps: list[TP]) -> dict[TP, int | None]:
        self.committed_queries += 1
        if self.coordinator_down:
            raise KafkaConnectionError("coordinator unreachable")
        return {tp: self.committed.get(tp) for tp in tps}

    def assignment(self) -> set[TP]:
        return {*self.ends, OTHER}

    def highwaters(self, *tps: TP) -> Awaitable[dict[TP, int]]:
        # The ends when asked (the sweep awaits the answer later, in the background).
        ends = {tp: self.ends[tp] for tp in tps}

        async def answer() -> dict[TP, int]:
            return ends

        return answer()

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        self.start_queries += 1
        return {tp: self.starts.get(tp, 0) for tp in tps}


@dataclass
class StandInConf:
    consumer_auto_offset_reset: str = "earliest"


@dataclass
class StandInApp:
    consumer: StandInConsumer
    consumer_generation_id: int = 1
    rebalancing: bool = False
    conf: StandInConf = field(default_factory=StandInConf)
    flow_control: FlowControlEvent = field(
        default_factory=lambda: FlowControlEvent(initially_suspended=False)
    )


@dataclass
class Broker:
    reads: list[tuple[TP, int, int]] = field(default_factory=list)
    # Offsets holding no record (a transactional producer's control records).
    control: set[int] = field(default_factory=set)
    # Records a read gets before its deadline (None: all of them).
    short: int | None = None

    async def read(self, tp: TP, start: int, end: int) -> tuple[list[Any], int]:
        self.reads.append((tp, start, end))
        reached = end if self.short is None else min(end, start + self.short)
        return [record(tp, o) for o in range(start, reached) if o not in self.control], reached


def offsets(events: list[Any]) -> list[tuple[int, int]]:
    return [(e.message.tp.partition, e.message.offset) for e in events]


def make(ends: dict[TP, int], committed: dict[TP, int | None] | None = None) -> Any:
    app = StandInApp(StandInConsumer(ends, committed or {}))
    broker = Broker()
    guard = ContinuityGuard(
        app,  # type: ignore[arg-type]
        TOPIC,
        read_range=broker.read,
        sweep_interval=0,
        read_committed=app.consumer.read_committed,
    )
    return app, broker, guard


async def test_a_gap_in_the_middle_is_read_and_run_first() -> None:
    _, broker, guard = make({P0: 10}, {P0: 0})
    admitted = await guard.admit([record(P0, 0), record(P0, 1), record(P0, 4)])  # type: ignore[list-item]
    assert offsets(admitted) == [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4)]
    assert broker.reads == [(P0, 2, 4)]


async def test_a_skip_right_after_the_committed_offset_is_found() -> None:
    _, broker, guard = make({P0: 10}, {P0: 5})
    assert offsets(await guard.admit([record(P0, 7)])) == [(0, 5), (0, 6), (0, 7)]  # type: ignore[list-item]
    assert broker.reads == [(P0, 5, 7)]


async def test_records_delivered_again_are_dropped() -> None:
    _, _, guard = make({P0: 10}, {P0: 0})
    await guard.admit([record(P0, 0), record(P0, 1)])  # type: ignore[list-item]
    assert await guard.admit([record(P0, 1), record(P0, 0)]) == []  # type: ignore[list-item]


async def test_a_skipped_tail_is_read_once_the_partition_has_stood_still() -> None:
    _, broker, guard = make({P0: 6, P1: 3}, {P0: 0, P1: 3})
    await guard.admit([record(P0, o) for o in range(3)])  # type: ignore[list-item]
    # Offsets 3-5 exist but never arrive. The first sweep only notes where P0 stands.
    assert await guard.sweep() == []
    assert offsets(await guard.sweep()) == [(0, 3), (0, 4), (0, 5)]
    assert broker.reads == [(P0, 3, 6)]  # P1 is caught up; the changelog is not ours
    # Read once: Faust delivering them late is a duplicate, and nothing is read again.
    assert await guard.admit([record(P0, 4)]) == []  # type: ignore[list-item]
    assert await guard.sweep() == []
    assert await guard.sweep() == []
    assert broker.reads == [(P0, 3, 6)]


async def test_records_that_reached_the_broker_only_since_the_last_sweep_are_left_to_faust() -> (
    None
):
    """An idle partition whose end moved just now holds a record Faust may simply not have
    fetched yet: read directly, it was counted as skipped and logged as a WARNING about
    once a minute at low traffic (a false alarm). Still there a sweep later, it is read."""
    app, broker, guard = make({P0: 3}, {P0: 0})
    await guard.admit([record(P0, o) for o in range(3)])  # type: ignore[list-item]
    assert await guard.sweep() == []
    assert await guard.sweep() == []  # idle, and caught up
    app.consumer.ends[P0] = 4  # a record produced just now
    assert await guard.sweep() == []
    assert broker.reads == []
    assert await guard.admit([record(P0, 3)]) != []  # type: ignore[list-item]  # Faust had it
    app.consumer.ends[P0] = 5  # another, never delivered
    assert await guard.sweep() == []
    assert offsets(await guard.sweep()) == [(0, 4)]
    assert broker.reads == [(P0, 4, 5)]


async def test_a_partition_that_moved_since_the_last_sweep_is_left_to_faust() -> None:
    _, broker, guard = make({P0: 6}, {P0: 0})
    assert await guard.sweep() == []
    await guard.admit([record(P0, 0)])  # type: ignore[list-item]
    assert await guard.sweep() == []
    assert broker.reads == []


async def test_a_tail_is_found_from_the_committed_offset_alone() -> None:
    # A restarted worker whose whole backlog was cleared before the agent saw any of it.
    _, _, guard = make({P0: 24}, {P0: 12})
    await guard.sweep()
    assert offsets(await guard.sweep()) == [(0, o) for o in range(12, 24)]


async def test_nothing_is_read_while_suspended_rebalancing_or_reassigned() -> None:
    app, broker, guard = make({P0: 6}, {P0: 0})
    await guard.sweep()
    app.flow_control.suspend()
    assert await guard.sweep() == []
    app.flow_control.resume()
    app.rebalancing = True
    assert await guard.sweep() == []
    app.rebalancing = False
    # A new generation starts over: one sweep to note positions, one to act.
    app.consumer_generation_id = 2
    assert await guard.sweep() == []
    assert broker.reads == []
    assert len(await guard.sweep()) == 6


async def test_a_never_committed_partition_is_swept_from_its_log_start() -> None:
    # A new consumer group whose whole backlog was cleared before the agent saw any of
    # it: Faust began at the log start (auto_offset_reset='earliest'), so do we.
    app, broker, guard = make({P0: 9}, {P0: None})
    app.consumer.starts = {P0: 2}  # retention removed offsets 0-1
    assert await guard.sweep() == []
    assert offsets(await guard.sweep()) == [(0, o) for o in range(2, 9)]
    assert broker.reads == [(P0, 2, 9)]
    # Remembered, not asked every sweep.
    assert (app.consumer.committed_queries, app.consumer.start_queries) == (1, 1)


async def test_a_never_committed_partition_skipped_at_its_start_is_found() -> None:
    _, broker, guard = make({P0: 9}, {P0: None})
    assert offsets(await guard.admit([record(P0, 3)])) == [(0, 0), (0, 1), (0, 2), (0, 3)]  # type: ignore[list-item]
    assert broker.reads == [(P0, 0, 3)]


async def test_without_earliest_reset_an_unknown_position_is_not_guessed() -> None:
    app, broker, guard = make({P0: 6}, {P0: None})
    app.conf.consumer_auto_offset_reset = "latest"
    await guard.sweep()
    assert await guard.sweep() == []
    assert offsets(await guard.admit([record(P0, 4)])) == [(0, 4)]  # type: ignore[list-item]
    assert broker.reads == []


async def test_a_long_stall_is_read_a_batch_at_a_time() -> None:
    _, broker, guard = make({P0: 3 * BATCH_MAX}, {P0: 0})
    await guard.sweep()
    assert len(await guard.sweep()) == BATCH_MAX
    assert len(await guard.sweep()) == BATCH_MAX
    assert broker.reads == [(P0, 0, BATCH_MAX), (P0, BATCH_MAX, 2 * BATCH_MAX)]


async def test_offsets_without_records_at_the_end_are_passed_once() -> None:
    _, broker, guard = make({P0: 6}, {P0: 0})
    broker.control = {4, 5}  # e.g. the commit markers of transactional producers
    await guard.admit([record(P0, o) for o in range(3)])  # type: ignore[list-item]
    await guard.sweep()
    assert offsets(await guard.sweep()) == [(0, 3)]
    await guard.sweep()
    await guard.sweep()
    assert broker.reads == [(P0, 3, 6)]


async def test_an_unreachable_coordinator_leaves_the_start_unknown_until_it_answers() -> None:
    app, broker, guard = make({P0: 9}, {P0: 4})
    app.consumer.coordinator_down = True
    # Nothing is guessed meanwhile: taking 6 as the start would pass over 4 and 5.
    assert await guard.admit([record(P0, 6)]) == []  # type: ignore[list-item]
    assert await guard.sweep() == []
    app.consumer.coordinator_down = False
    # The next record shows the gap from the committed offset: 6 is found again.
    assert offsets(await guard.admit([record(P0, 7)])) == [(0, 4), (0, 5), (0, 6), (0, 7)]  # type: ignore[list-item]
    assert broker.reads == [(P0, 4, 7)]


async def test_records_held_while_the_coordinator_was_away_are_found_by_the_sweep() -> None:
    app, _, guard = make({P0: 7}, {P0: 4})
    app.consumer.coordinator_down = True
    assert await guard.admit([record(P0, 6)]) == []  # type: ignore[list-item]
    app.consumer.coordinator_down = False
    await guard.sweep()  # learns the start (4); the partition has not moved since
    assert offsets(await guard.sweep()) == [(0, 4), (0, 5), (0, 6)]


async def test_a_gap_read_that_stops_short_is_not_taken_as_complete() -> None:
    _, broker, guard = make({P0: 20}, {P0: 0})
    broker.short = 3  # the broker gives only offsets 0-2 before the read's deadline
    admitted = await guard.admit([record(P0, o) for o in (10, 11)])  # type: ignore[list-item]
    assert offsets(admitted) == [(0, 0), (0, 1), (0, 2)]  # 3-9 (and 10, 11) not passed over
    broker.short = None
    assert offsets(await guard.admit([record(P0, 12)])) == [  # type: ignore[list-item]
        (0, o) for o in range(3, 13)
    ]


async def test_nothing_read_for_a_gap_is_admitted_after_a_rebalance_meanwhile() -> None:
    app, broker, guard = make({P0: 20}, {P0: 0})
    real_read = broker.read

    async def read_then_reassigned(tp: TP, start: int, end: int) -> tuple[list[Any], int]:
        found = await real_read(tp, start, end)
        app.consumer_generation_id += 1  # a rebalance completed while we waited
        return found

    guard._read_range = read_then_reassigned
    assert await guard.admit([record(P0, 5)]) == []  # type: ignore[list-item]


async def test_a_long_gap_is_read_a_batch_at_a_time() -> None:
    """The whole gap was read into memory and run as one batch (up to ~9 batches' worth
    after Faust cleared its queue)."""
    _, broker, guard = make({P0: 3 * BATCH_MAX + 1}, {P0: 0})
    far = record(P0, 3 * BATCH_MAX)
    first = await guard.admit([far])  # type: ignore[list-item]
    assert offsets(first) == [(0, o) for o in range(BATCH_MAX)]
    assert broker.reads == [(P0, 0, BATCH_MAX)]
    taken = len(first)
    while taken < 3 * BATCH_MAX + 1:
        more = await guard.admit([far])  # type: ignore[list-item]
        assert 0 < len(more) <= BATCH_MAX + 1
        taken += len(more)
    assert offsets(more)[-1] == (0, 3 * BATCH_MAX)


async def test_a_read_the_broker_fails_holds_the_partition_instead_of_ending_the_agent() -> None:
    _, broker, guard = make({P0: 10, P1: 10}, {P0: 0, P1: 0})
    real = broker.read

    async def failing(tp: TP, start: int, end: int) -> tuple[list[Any], int]:
        if tp == P0:
            raise KafkaConnectionError("broker unreachable")
        return await real(tp, start, end)

    guard._read_range = failing
    admitted = await guard.admit([record(P0, 4), record(P0, 5), record(P1, 0)])  # type: ignore[list-item]
    assert offsets(admitted) == [(1, 0)]  # P0 held: found again as a gap
    guard._read_range = real
    assert offsets(await guard.admit([record(P0, 6)])) == [(0, o) for o in range(7)]  # type: ignore[list-item]


async def test_a_sweep_the_broker_fails_finds_nothing_and_tries_again() -> None:
    app, _, guard = make({P0: 6}, {P0: 0})

    async def down(*tps: TP) -> dict[TP, int]:
        raise KafkaConnectionError("broker unreachable")

    real, app.consumer.highwaters = app.consumer.highwaters, down  # type: ignore[method-assign]
    await guard.sweep()  # asks where P0 ends: the broker fails (seen at the next sweep)
    assert await guard.sweep() == []
    app.consumer.highwaters = real  # type: ignore[method-assign]
    assert await guard.sweep() == []  # (the question of the sweep before failed too)
    assert offsets(await guard.sweep()) == [(0, o) for o in range(6)]


async def test_a_gap_retention_removed_is_passed_at_once() -> None:
    """Records removed by retention before they were handled (a committed offset below
    the log start): the direct read says where the log starts, and the guard goes on
    from there instead of crossing the gap a batch's worth per read (hours, for
    millions of offsets)."""
    _, broker, guard = make({P0: 6000}, {P0: 0})
    log_start = 5000

    async def read(tp: TP, start: int, end: int) -> tuple[list[Any], int]:
        broker.reads.append((tp, start, end))
        if start < log_start:  # as continuity._read_range answers it
            if log_start >= end:
                return [], log_start
            start = log_start
        return [record(tp, o) for o in range(start, end)], end

    guard._read_range = read
    assert await guard.admit([record(P0, 5500)]) == []  # type: ignore[list-item]
    admitted = await guard.admit([record(P0, 5500)])  # type: ignore[list-item]
    assert offsets(admitted) == [(0, o) for o in range(5000, 5501)]
    assert broker.reads == [(P0, 0, 500), (P0, 5000, 5500)]


async def test_a_gap_right_after_a_reassignment_is_info_later_a_warning(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every rebalance may show Faust's hand-over drop: not a warning each time. A gap
    long after one is unexpected: a warning."""
    import logging

    from paystream.agents import continuity

    app, _, guard = make({P0: 20}, {P0: 0})
    caplog.set_level(logging.INFO, logger=continuity.__name__)
    await guard.admit([record(P0, 0), record(P0, 3)])  # type: ignore[list-item]
    [early] = [r for r in caplog.records if "never reached" in r.getMessage()]
    assert early.levelno == logging.INFO and "hand-over" in early.getMessage()
    caplog.clear()
    later = continuity.time.monotonic() + continuity.HANDOVER_SECONDS + 1
    monkeypatch.setattr(continuity.time, "monotonic", lambda: later)
    await guard.admit([record(P0, 6)])  # type: ignore[list-item]
    [late] = [r for r in caplog.records if "never reached" in r.getMessage()]
    assert late.levelno == logging.WARNING and "hand-over" not in late.getMessage()
    app.consumer_generation_id += 1  # reassigned: a fresh hand-over
    caplog.clear()
    await guard.admit([record(P0, 9)])  # type: ignore[list-item]
    assert all(r.levelno == logging.INFO for r in caplog.records if "never" in r.getMessage())


async def test_a_range_with_no_record_left_is_reported_passed() -> None:
    """Retention removed a quiet partition's records before the group got to them: the
    sweep finds nothing to run, and says so, so the agent is not counted behind (nor
    stalled) for want of a record to commit past. A range that held records is not."""
    app, broker, _ = make({P0: 10, P1: 10}, {P0: 0, P1: 0})
    passed: list[tuple[TP, int]] = []
    guard = ContinuityGuard(
        app,
        TOPIC,
        read_range=broker.read,
        sweep_interval=0,
        read_committed=app.consumer.read_committed,
        on_passed=lambda tp, offset: passed.append((tp, offset)),
    )
    broker.control = set(range(10))  # on P0 (and P1, but P1 gets its records below)
    await guard.sweep()
    found = await guard.sweep()
    assert found == [] and sorted(passed) == [(P0, 10), (P1, 10)]
    passed.clear()
    app.consumer.ends = {P0: 10, P1: 15}
    broker.control = set()
    found = await guard.sweep() + await guard.sweep()
    assert offsets(found) == [(1, o) for o in range(10, 15)] and passed == []


async def test_a_never_committed_partition_retention_emptied_is_not_behind() -> None:
    """The group's offset expired (Kafka forgets an idle group's offsets after a week, as
    retention does the records): nothing left below the log start, nothing to commit
    there. Without being told, the agent read as behind by the whole partition for ever
    (stalled: unready, and restarted by liveness every PAYSTREAM_LIVENESS_STALL_SECONDS)."""
    app, broker, guard = make({P0: 9}, {P0: None})
    app.consumer.starts = {P0: 9}  # retention removed every record there was
    passed: list[tuple[TP, int]] = []
    guard._on_passed = lambda tp, offset: passed.append((tp, offset))
    assert await guard.sweep() == []
    assert await guard.sweep() == [] and broker.reads == []
    assert passed == [(P0, 9)]


async def test_an_answer_slower_than_a_sweep_is_not_used() -> None:
    """The ends asked at sweep 1, answered only after sweep 2 with a record produced just
    before: taken for "the broker held it at the last sweep", that record was read
    directly and counted skipped (a false alarm). Only an answer in by the next sweep
    counts (sweep review)."""
    app, broker, guard = make({P0: 3}, {P0: 0})
    await guard.admit([record(P0, o) for o in range(3)])  # type: ignore[list-item]
    answer: asyncio.Future[dict[TP, int]] = asyncio.get_running_loop().create_future()

    async def slow(*tps: TP) -> dict[TP, int]:
        return await answer

    real, app.consumer.highwaters = app.consumer.highwaters, slow  # type: ignore[method-assign]
    assert await guard.sweep() == []  # asks
    assert await guard.sweep() == []  # still open: P0 caught up at 3
    app.consumer.ends[P0] = 4  # produced just now
    answer.set_result({P0: 4})  # ... and the slow question answers right after
    app.consumer.highwaters = real  # type: ignore[method-assign]
    assert await guard.sweep() == [] and broker.reads == []


async def test_a_question_the_broker_never_answers_is_given_up_and_asked_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Open for good, it switched the tail sweep off without a word (sweep review)."""
    from paystream.agents import continuity

    monkeypatch.setattr(continuity, "BROKER_ASK_SECONDS", 0.01)
    app, _, guard = make({P0: 6}, {P0: 0})
    never: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    async def hung(*tps: TP) -> dict[TP, int]:
        return await never

    real, app.consumer.highwaters = app.consumer.highwaters, hung  # type: ignore[method-assign]
    await guard.sweep()
    await asyncio.sleep(0.05)
    app.consumer.highwaters = real  # type: ignore[method-assign]
    assert await guard.sweep() == []  # given up (said so): asked again
    assert "did not say where" in caplog.text
    assert offsets(await guard.sweep()) == [(0, o) for o in range(6)]
    never.cancel()


async def test_a_failed_question_outliving_its_guard_leaves_no_unretrieved_error() -> None:
    """The agent stopping before the next sweep: asyncio logged "Task exception was never
    retrieved" at ERROR when the task was collected (sweep review)."""
    import gc

    app, _, guard = make({P0: 6}, {P0: 0})
    loop = asyncio.get_running_loop()
    seen: list[str] = []
    old = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: seen.append(context["message"]))

    async def down(*tps: TP) -> dict[TP, int]:
        await asyncio.sleep(0.01)
        raise KafkaConnectionError("broker unreachable")

    app.consumer.highwaters = down  # type: ignore[method-assign]
    try:
        await guard.sweep()
        del guard
        await asyncio.sleep(0.05)
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(old)
    assert seen == []

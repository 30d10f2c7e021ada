"""Stopping the command agent: its stream ends, its task is cancelled, the batch it is
delivering lands, its offsets land.

Faust stops an agent by throwing StopAsyncIteration into its channel queue and, straight
after, cancelling its task; it then waits for the task. The final offset commit has to
survive that, or the next worker redoes everything the last one handled (a CI backlog
test's workers committed nothing over three restarts). The e2e side is
tests/e2e/test_backlog.py, which checks the group's committed offsets after each stop.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiokafka.errors import NotLeaderForPartitionError
from faust.types import TP, Message
from mode.utils.queues import FlowControlEvent, ThrowableQueue

from paystream.agents import commands
from paystream.agents.batching import take_batches
from paystream.agents.commands import ProcessedBatch, _close
from paystream.agents.offsets import DurableOffsets, despite_cancellation
from paystream.agents.overlap import DeliveryChain
from paystream.agents.pipeline import Emit
from paystream.streams.batch_producer import OutRecord
from paystream.streams.codec import KafkaRecord

pytestmark = pytest.mark.asyncio(loop_scope="session")

P0, P1 = TP("t.commands", 0), TP("t.commands", 1)


def event(tp: TP, offset: int) -> Any:
    return SimpleNamespace(
        message=Message(tp.topic, tp.partition, offset, 0.0, 0, None, b"k", b"v", None, tp=tp)
    )


async def test_the_batch_stream_ends_when_faust_ends_the_agents_stream() -> None:
    queue: ThrowableQueue = ThrowableQueue(flow_control=FlowControlEvent())
    stream = SimpleNamespace(channel=SimpleNamespace(queue=queue), app=None)
    batches = take_batches(stream, 10, 0, idle=5)
    first = asyncio.ensure_future(anext(batches))
    while not queue._getters:  # type: ignore[attr-defined]  # the agent waits in get()
        await asyncio.sleep(0)
    queue._throw(StopAsyncIteration())
    # The generator returns: the agent leaves its loop normally, with no "crashed" error.
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(first, 1)


async def test_work_started_before_a_cancel_is_finished_and_the_cancel_passed_on() -> None:
    started, release, finished = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def commit() -> None:
        started.set()
        await release.wait()
        finished.set()

    async def agent() -> None:
        await despite_cancellation(commit(), seconds=5)

    task = asyncio.ensure_future(agent())
    await started.wait()
    task.cancel()  # as Faust does right after ending the stream
    await asyncio.sleep(0)  # one loop turn: the cancel reaches the agent first
    assert not task.done()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished.is_set()


async def test_work_past_its_deadline_is_abandoned() -> None:
    started = asyncio.Event()

    async def stuck() -> None:
        started.set()
        await asyncio.get_running_loop().create_future()  # never answers

    await asyncio.wait_for(despite_cancellation(stuck(), seconds=0.05), 5)
    assert started.is_set()


@dataclass
class StandInConsumer:
    fail: BaseException | None = None
    commits: list[dict[TP, int]] = field(default_factory=list)
    owned: set[TP] = field(default_factory=lambda: {P0, P1})

    def assignment(self) -> set[TP]:
        return self.owned

    async def _commit(self, offsets: dict[TP, int]) -> bool:
        if self.fail is not None:
            raise self.fail
        self.commits.append(dict(offsets))
        return True


def stand_in_app(consumer: StandInConsumer) -> Any:
    # The stand-in events carry no generation: they are of the current one.
    return SimpleNamespace(consumer=consumer, consumer_generation_id=None)


async def test_offsets_of_a_failed_or_cancelled_commit_are_kept_for_the_next() -> None:
    consumer = StandInConsumer(fail=asyncio.CancelledError())
    offsets = DurableOffsets(stand_in_app(consumer))
    offsets.advance([event(P0, 4), event(P1, 7)])
    with pytest.raises(asyncio.CancelledError):
        await offsets.commit()
    offsets.advance([event(P0, 9)])
    consumer.fail = None
    await offsets.commit()
    assert consumer.commits == [{P0: 10, P1: 8}]
    await offsets.commit()  # nothing new: no request
    assert consumer.commits == [{P0: 10, P1: 8}]


async def test_a_commit_waits_for_one_still_in_flight_whose_caller_was_cancelled() -> None:
    """The periodic committer is cancelled at a hand-over while its commit is on Faust's
    consumer thread, which goes on with it (and retries it on a coordinator error); the
    final commit sent beside it could land first and then be overwritten by the smaller
    offsets (review finding). It now waits for that commit to be answered."""
    release = asyncio.Event()
    calls: list[dict[TP, int]] = []

    class SlowFirst(StandInConsumer):
        async def _commit(self, offsets: dict[TP, int]) -> bool:
            calls.append(dict(offsets))
            if len(calls) == 1:
                await release.wait()
            return await super()._commit(offsets)

    consumer = SlowFirst()
    offsets = DurableOffsets(stand_in_app(consumer))
    offsets.advance([event(P0, 4)])
    periodic = asyncio.ensure_future(offsets.commit())
    await asyncio.sleep(0.01)
    periodic.cancel()  # committer.cancel(): the commit itself goes on
    offsets.advance([event(P0, 9)])
    final = asyncio.ensure_future(offsets.commit())
    await asyncio.sleep(0.01)
    assert calls == [{P0: 5}], "sent beside the one in flight"
    release.set()
    await final
    assert consumer.commits == [{P0: 5}, {P0: 10}]


async def test_offsets_of_partitions_no_longer_ours_or_of_an_old_generation_are_not_committed() -> (
    None
):
    published: dict[int, int] = {}
    consumer = StandInConsumer()
    app = stand_in_app(consumer)
    offsets = DurableOffsets(app, published=published)
    offsets.advance([event(P0, 4), event(P1, 7)])
    consumer.owned = {P0}  # P1 moved to another worker while its batch was delivered
    await offsets.commit()
    assert consumer.commits == [{P0: 5}] and published == {P0.partition: 5}
    offsets.advance([event(P1, 9)])
    await offsets.commit()  # nothing of ours left: no commit at all (Faust would crash)
    assert consumer.commits == [{P0: 5}] and P1.partition not in published
    app.consumer_generation_id = 2  # a batch of generation None lands after a rebalance
    offsets.advance([event(P0, 12)])
    await offsets.commit()
    assert consumer.commits == [{P0: 5}]


async def test_offsets_made_ready_before_a_rejoin_are_not_committed_after_it() -> None:
    """A batch finished while the group was rejoining (generation not yet bumped); its
    partition came back and Faust replays it from the committed offset. Committing the
    stale offset would make the limits forget the decisions that replay must repeat."""
    published: dict[int, int] = {}
    consumer = StandInConsumer()
    app = stand_in_app(consumer)
    offsets = DurableOffsets(app, published=published)
    offsets.advance([event(P0, 149)])  # still generation None: ready at 150
    app.consumer_generation_id = 2  # reassigned, P0 among its partitions again
    await offsets.commit()
    assert consumer.commits == [] and published == {}
    app_event = event(P0, 120)
    app_event.message.generation_id = 2
    offsets.advance([app_event])  # the replay, in the new generation
    await offsets.commit()
    assert consumer.commits == [{P0: 121}]


async def test_committed_offsets_are_published_for_the_tenant_limits() -> None:
    published: dict[int, int] = {P0.partition: 2}
    consumer = StandInConsumer(fail=RuntimeError("broker away"))
    offsets = DurableOffsets(stand_in_app(consumer), published=published)
    offsets.advance([event(P0, 4), event(P1, 7)])
    with pytest.raises(RuntimeError):
        await offsets.commit()
    assert published == {P0.partition: 2}  # not committed: nothing may be forgotten
    consumer.fail = None
    await offsets.commit()
    assert published == {P0.partition: 5, P1.partition: 8}


async def test_the_batch_stream_ends_when_the_end_was_queued_while_busy() -> None:
    # Thrown while the agent was handling a batch: no getter waits, so the queue holds it.
    queue: ThrowableQueue = ThrowableQueue(flow_control=FlowControlEvent())
    stream = SimpleNamespace(channel=SimpleNamespace(queue=queue), app=None)
    queue._throw(StopAsyncIteration())
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(take_batches(stream, 10, 0, idle=5)), 1)


@pytest.fixture
def exits(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Why the worker would have exited uncommitted, recorded instead of exiting."""
    seen: list[str] = []
    monkeypatch.setattr(commands, "_exit_uncommitted", lambda what, exc=None: seen.append(what))
    return seen


def durable_offsets() -> tuple[DurableOffsets, StandInConsumer]:
    consumer = StandInConsumer()
    return DurableOffsets(stand_in_app(consumer)), consumer


async def processed() -> None:
    return None


async def processing_batch(stuck: asyncio.Event) -> tuple[DeliveryChain, asyncio.Future[Any]]:
    """A chain whose newest batch is still processing (until ``stuck`` is set)."""
    chain = DeliveryChain()

    async def processing() -> None:
        await stuck.wait()

    async def deliver(_: None) -> None:
        pass

    task = asyncio.ensure_future(chain.run(processing(), deliver))
    await asyncio.sleep(0)
    return chain, task


async def test_shutdown_lets_the_batch_in_delivery_finish_then_commits_it() -> None:
    offsets, consumer = durable_offsets()
    chain, acked = DeliveryChain(), asyncio.Event()

    async def deliver(_: None) -> None:
        await acked.wait()
        offsets.advance([event(P0, 41)])

    await chain.run(processed(), deliver)  # the agent's stream ends while it delivers
    closing = asyncio.ensure_future(_close(offsets, chain, drain_seconds=5))
    await asyncio.sleep(0.02)
    assert not closing.done() and consumer.commits == []
    acked.set()
    await asyncio.wait_for(closing, 1)
    assert consumer.commits == [{P0: 42}]


async def test_shutdown_leaves_uncommitted_when_the_batch_is_not_delivered_in_time(
    exits: list[str],
) -> None:
    offsets, consumer = durable_offsets()
    offsets.advance([event(P1, 6)])  # an earlier batch, delivered
    chain, never = DeliveryChain(), asyncio.Event()

    async def stuck(_: None) -> None:
        await never.wait()
        offsets.advance([event(P1, 9)])

    await chain.run(processed(), stuck)
    await asyncio.wait_for(_close(offsets, chain, drain_seconds=0.05), 1)
    # What was delivered is committed; the stuck batch is not, and the worker leaves.
    assert consumer.commits == [{P1: 7}]
    assert len(exits) == 1 and "not delivered" in exits[0]
    never.set()
    await chain.drain(1)


async def test_a_failed_or_cancelled_batch_ends_the_worker(exits: list[str]) -> None:
    loop = asyncio.get_running_loop()
    failed, cancelled, fine = loop.create_future(), loop.create_future(), loop.create_future()
    failed.set_exception(RuntimeError("bug"))
    cancelled.cancel()
    fine.set_result(None)
    for batch in (failed, cancelled, fine):
        commands._exit_if_failed(3, batch)
    assert exits == [
        "a batch of 3 commands could not be completed",
        "a batch of 3 commands was cancelled",
    ]


async def test_shutdown_leaves_uncommitted_even_when_the_final_commit_is_cancelled(
    exits: list[str],
) -> None:
    offsets, consumer = durable_offsets()
    chain, never = DeliveryChain(), asyncio.Event()

    async def stuck(_: None) -> None:
        await never.wait()

    await chain.run(processed(), stuck)
    offsets.advance([event(P0, 3)])  # delivered meanwhile, ready to commit
    consumer.fail = asyncio.CancelledError()  # the consumer thread is going away
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(_close(offsets, chain, drain_seconds=0.05), 1)
    assert len(exits) == 1 and "not delivered" in exits[0]
    never.set()
    await chain.drain(1)


async def test_the_works_own_cancel_or_timeout_is_not_taken_for_the_agents(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def cancelled_inside() -> None:
        raise asyncio.CancelledError

    async def timed_out_inside() -> None:
        raise TimeoutError

    # Neither is passed on as a cancel of the agent, nor taken for our deadline.
    await asyncio.wait_for(despite_cancellation(cancelled_inside(), seconds=5), 1)
    await asyncio.wait_for(despite_cancellation(timed_out_inside(), seconds=5), 1)
    assert "shutdown work failed" in caplog.text
    assert "unfinished" not in caplog.text


# ---- the agent itself, with its collaborators stood in ----------------------------


@dataclass
class StandInRunner:
    """Batches are processed at once and delivered when their first offset is acked."""

    acks: dict[int, asyncio.Event]
    delivered: list[int] = field(default_factory=list)
    closed: bool = False

    async def process_batch(self, events: list[Any]) -> list[Any]:
        return events

    async def deliver_batch(self, events: list[Any]) -> None:
        await self.acks[events[0].message.offset].wait()
        self.delivered.append(events[0].message.offset)

    async def aclose(self) -> None:
        self.closed = True


class PassThroughGuard:
    """No record skipped (the guard itself: test_continuity)."""

    def __init__(self, *_: Any, **__: Any) -> None: ...

    async def admit(self, events: list[Any]) -> list[Any]:
        return list(events)

    async def sweep(self) -> list[Any]:
        return []


def stand_in_agent(
    monkeypatch: pytest.MonkeyPatch, batches: list[list[Any]], ends: bool
) -> tuple[Any, StandInRunner, StandInConsumer]:
    """``process_commands``'s stream yields ``batches``, then ends (or idles for ever)."""

    async def take(*_: Any, **__: Any) -> Any:
        for batch in batches:
            yield batch
        if not ends:
            await asyncio.get_running_loop().create_future()

    consumer = StandInConsumer()
    runner = StandInRunner({b[0].message.offset: asyncio.Event() for b in batches})
    monkeypatch.setattr(commands, "take_batches", take)
    monkeypatch.setattr(commands, "ContinuityGuard", PassThroughGuard)
    monkeypatch.setattr(commands, "runner", runner)
    flowing = FlowControlEvent()
    flowing.resume()
    # Events of the current consumer generation (the stand-in events carry none).
    app = SimpleNamespace(
        consumer=consumer, flow_control=flowing, consumer_generation_id=None, rebalancing=False
    )
    monkeypatch.setattr(commands, "app", app)
    stream = SimpleNamespace(channel=SimpleNamespace(queue=asyncio.Queue()))
    return stream, runner, consumer


async def test_a_cancelled_agent_lets_its_batches_land_commits_them_then_stops(
    monkeypatch: pytest.MonkeyPatch, exits: list[str]
) -> None:
    stream, runner, consumer = stand_in_agent(
        monkeypatch, [[event(P0, 0)], [event(P0, 1)]], ends=False
    )
    agent = asyncio.ensure_future(commands.process_commands(stream))
    await asyncio.sleep(0.05)  # batch 0 is being delivered; batch 1 waits behind it
    agent.cancel()  # as Faust stops the agent
    await asyncio.sleep(0.05)
    assert not agent.done() and consumer.commits == []
    runner.acks[0].set()
    runner.acks[1].set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(agent, 2)
    assert runner.delivered == [0, 1]
    assert consumer.commits == [{P0: 2}] and not exits and runner.closed


async def test_an_ended_stream_waits_for_the_batch_in_delivery_before_the_last_commit(
    monkeypatch: pytest.MonkeyPatch, exits: list[str]
) -> None:
    stream, runner, consumer = stand_in_agent(monkeypatch, [[event(P1, 4)]], ends=True)
    agent = asyncio.ensure_future(commands.process_commands(stream))
    await asyncio.sleep(0.05)
    assert not agent.done()  # the stream has ended; the batch is still in delivery
    runner.acks[4].set()
    await asyncio.wait_for(agent, 2)
    assert consumer.commits == [{P1: 5}] and not exits and runner.closed


async def test_events_whose_partitions_moved_while_checked_are_left_to_their_new_owner(
    monkeypatch: pytest.MonkeyPatch, exits: list[str]
) -> None:
    """The continuity guard may wait on the broker; a rebalance meanwhile (the hook has
    delivered and committed) makes the events taken before it another worker's."""
    stale = SimpleNamespace(
        message=Message(
            P0.topic, P0.partition, 7, 0.0, 0, None, b"k", b"v", None, tp=P0, generation_id=1
        )
    )
    stream, runner, consumer = stand_in_agent(monkeypatch, [[stale], [event(P0, 8)]], ends=True)
    commands.app.consumer_generation_id = None  # events of this generation carry None
    runner.acks[8].set()
    await asyncio.wait_for(commands.process_commands(stream), 2)
    assert runner.delivered == [8] and consumer.commits == [{P0: 9}] and not exits


async def test_a_batch_that_outlived_its_partitions_hand_over_delivers_only_what_is_ours(
    monkeypatch: pytest.MonkeyPatch, exits: list[str]
) -> None:
    """The rebalance hook gave up on it. P0 went to another worker, which redoes its
    commands: P0's table writes, produced now, would land after that worker's in the
    changelog. P1 came back to us: its records are delivered (and replayed here)."""
    delivered: list[ProcessedBatch] = []

    class Runner:
        async def deliver_batch(self, batch: ProcessedBatch) -> None:
            delivered.append(batch)

    consumer = StandInConsumer(owned={P1})
    monkeypatch.setattr(commands, "runner", Runner())
    monkeypatch.setattr(
        commands, "app", SimpleNamespace(consumer_generation_id=2, consumer=consumer)
    )
    monkeypatch.setattr(
        commands, "commands_topic", SimpleNamespace(get_topic_name=lambda: P0.topic)
    )
    records = [OutRecord("changelog", 0, b"k", b"v0"), OutRecord("changelog", 1, b"k", b"v1")]
    emits = [
        Emit("events", KafkaRecord(b"t0", b"o0", ())),
        Emit("events", KafkaRecord(b"t1", b"o1", ())),
    ]
    batch = ProcessedBatch(
        [event(P0, 7), event(P1, 9)],  # of generation None: processed before the reassignment
        emits,
        [*records, OutRecord("events", 0, b"t0", b"o0"), OutRecord("events", 1, b"t1", b"o1")],
        cast(Any, None),
        emit_sources=[0, 1],
        record_sources=[0, 1, 0, 1],
    )
    offsets, _ = durable_offsets()
    await commands._deliver(offsets, batch.events, batch, taken_at=0)
    [sent] = delivered
    assert [r.value for r in sent.records] == [b"v1", b"o1"]
    assert [e.record.value for e in sent.emits] == [b"o1"]
    assert exits == []


async def test_a_hand_over_that_cannot_wait_for_a_batch_in_delivery_exits_uncommitted(
    monkeypatch: pytest.MonkeyPatch, exits: list[str]
) -> None:
    """The hook gave up on a batch whose records were with the producer and rejoined:
    aiokafka retries them for its request timeout, so they could land after the new
    owner's writes to the same changelog partitions."""
    stuck = asyncio.Event()

    class Runner:
        async def deliver_batch(self, batch: ProcessedBatch) -> None:
            commands._producing += 1  # (its records with the producer, as in _publish)
            try:
                await stuck.wait()
            finally:
                commands._producing -= 1

        def rescan_expiry(self) -> None:
            pass

    consumer = StandInConsumer()
    monkeypatch.setattr(commands, "runner", Runner())
    monkeypatch.setattr(commands, "app", stand_in_app(consumer))
    monkeypatch.setattr(commands, "REBALANCE_DRAIN_SECONDS", 0.05)
    offsets = DurableOffsets(stand_in_app(consumer))
    chain = DeliveryChain()
    batch = ProcessedBatch([event(P0, 3)], [], [], cast(Any, None), [], [])

    async def done() -> ProcessedBatch:
        return batch

    await chain.run(done(), lambda b: commands._deliver(offsets, b.events, b, taken_at=0))
    monkeypatch.setattr(commands, "_IN_HAND", [(chain, offsets)])
    await commands.finish_batches_before_handing_over(None)
    assert len(exits) == 1 and "rebalance" in exits[0]
    stuck.set()
    await chain.drain(1)


async def test_a_hand_over_that_cannot_wait_for_a_batch_still_processing_carries_on(
    monkeypatch: pytest.MonkeyPatch, exits: list[str]
) -> None:
    """Still processing, nothing of it is produced yet: `_deliver` later keeps only what
    is still ours."""
    stuck = asyncio.Event()

    class Runner:
        def rescan_expiry(self) -> None:
            pass

    consumer = StandInConsumer()
    monkeypatch.setattr(commands, "runner", Runner())
    monkeypatch.setattr(commands, "REBALANCE_DRAIN_SECONDS", 0.05)
    offsets = DurableOffsets(stand_in_app(consumer))
    chain, task = await processing_batch(stuck)
    monkeypatch.setattr(commands, "_IN_HAND", [(chain, offsets)])
    await commands.finish_batches_before_handing_over(None)
    assert exits == []
    stuck.set()
    await task
    await chain.drain(1)


async def test_a_publish_retry_after_a_hand_over_fails_the_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    attempts: list[int] = []

    async def refused(producer: Any, records: Any, **_: Any) -> Any:
        attempts.append(len(records))
        raise NotLeaderForPartitionError()

    monkeypatch.setattr(commands, "send_batches", refused)
    monkeypatch.setattr(commands, "PUBLISH_RETRY_MAX_SECONDS", 0.001)
    records = [OutRecord("changelog", 1, b"k", b"v")]
    with pytest.raises(commands.DeliveryAbandoned) as given_up:
        await commands._publish(cast(Any, None), records, 1, may_retry=lambda: False)
    assert isinstance(given_up.value.__cause__, NotLeaderForPartitionError)
    assert attempts == [1]  # never produced again once the partitions may have moved


@pytest.fixture(autouse=True)
def _hand_over_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hand-over's module state starts clean and is restored after each test."""
    monkeypatch.setattr(commands, "_abandoned_at", None)
    monkeypatch.setattr(commands, "_assignments", 0)
    monkeypatch.setattr(commands, "_delivering", 0)
    monkeypatch.setattr(commands, "_producing", 0)


async def test_a_batch_the_hand_over_gave_up_on_is_not_delivered(
    monkeypatch: pytest.MonkeyPatch, exits: list[str]
) -> None:
    """Delivered after the new assignment, its writes to a partition that stayed landed
    after the changelog's end as Faust's recovery read it, which then put older values
    back in the store: a kept rejection undone, its redelivery answered otherwise (review
    finding). Nothing of it is delivered or committed: it is redone."""
    delivered: list[ProcessedBatch] = []

    class Runner:
        async def deliver_batch(self, batch: ProcessedBatch) -> None:
            delivered.append(batch)

    consumer = StandInConsumer(owned={P0, P1})
    app = stand_in_app(consumer)
    monkeypatch.setattr(commands, "runner", Runner())
    monkeypatch.setattr(commands, "app", app)
    monkeypatch.setattr(commands, "_abandoned_at", 0)  # the hook gave up; no assignment yet
    events = [event(P0, 7), event(P1, 9)]
    records = [OutRecord("changelog", 0, b"k", b"v0"), OutRecord("changelog", 1, b"k", b"v1")]
    batch = ProcessedBatch(events, [], records, cast(Any, None), [], [0, 1])
    offsets = DurableOffsets(app)
    await commands._deliver(offsets, events, batch, taken_at=0)
    await commands._count_assignment(None)  # the rejoin completes
    await commands._deliver(offsets, events, batch, taken_at=0)  # still that batch
    assert delivered == [] and exits == []
    await offsets.commit()
    assert consumer.commits == []  # left for whoever owns its partitions
    # Taken after the new assignment: delivered.
    await commands._deliver(offsets, [event(P0, 7)], batch, taken_at=1)
    assert len(delivered) == 1


async def test_the_hand_over_watch_ends_a_worker_still_delivering_when_it_expires() -> None:
    """Faust flushes its producer (unbounded) before it calls the hook: the watch, started
    with the rebalance, bounds the whole hand-over."""
    seen: list[str] = []
    delivering = [True]
    watch = commands.HandOverWatch(0.05, lambda: delivering[0], seen.append)
    watch.started()
    await asyncio.sleep(0.2)
    assert len(seen) == 1 and "still being delivered" in seen[0]
    # Through in time: the worker carries on, however long the delivery then takes.
    watch.started()
    watch.finished()
    await asyncio.sleep(0.2)
    assert len(seen) == 1 and watch.began is None
    # Nothing in delivery when it expires: nothing to end.
    delivering[0] = False
    watch.started()
    await asyncio.sleep(0.2)
    assert len(seen) == 1


async def test_the_hook_ends_the_watch_and_counts_from_when_the_rebalance_began(
    monkeypatch: pytest.MonkeyPatch, exits: list[str]
) -> None:
    """Its deadline counted from when the hook ran, after Faust's producer flush: the
    watch (counted from the rebalance) could end a delivery the hook was still allowed."""

    class Runner:
        def rescan_expiry(self) -> None:
            pass

    monkeypatch.setattr(commands, "runner", Runner())
    monkeypatch.setattr(commands, "REBALANCE_DRAIN_SECONDS", 0.3)
    stuck = asyncio.Event()
    chain, task = await processing_batch(stuck)
    monkeypatch.setattr(commands, "_IN_HAND", [(chain, durable_offsets()[0])])
    watch = commands.HandOverWatch(10, lambda: False, exits.append)
    monkeypatch.setattr(commands, "_watch", watch)
    commands._watch_rebalance(lambda: None)()  # the rebalance begins (Faust's thread)
    await asyncio.sleep(0.2)  # Faust's producer flush
    began = time.monotonic()
    await commands.finish_batches_before_handing_over(None)
    # Gave up 0.3 s after the rebalance began (about 0.1 s from here), not at the watch's
    # 10 s: a second's bound leaves a loaded host's late loop room.
    assert time.monotonic() - began < 1.0
    assert watch.began is None and watch._timer is None  # the watch is over
    assert commands._abandoned_at == commands._assignments
    stuck.set()
    await task
    await chain.drain(1)


async def test_assignments_are_counted_from_fausts_signal() -> None:
    """Without the count, every batch the hand-over gave up on would wait out its 120 s."""
    before = commands._assignments
    await commands.app.on_partitions_assigned.send(set())
    assert commands._assignments == before + 1


async def test_a_batch_outliving_two_rebalances_is_not_delivered_after_either(
    monkeypatch: pytest.MonkeyPatch, exits: list[str]
) -> None:
    """Given up on by two hand-overs in a row, it was compared with the first one's
    generation and delivered a partition the second was moving."""
    delivered: list[ProcessedBatch] = []

    class Runner:
        async def deliver_batch(self, batch: ProcessedBatch) -> None:
            delivered.append(batch)

    consumer = StandInConsumer()
    monkeypatch.setattr(commands, "runner", Runner())
    monkeypatch.setattr(commands, "app", stand_in_app(consumer))
    taken_at = commands._assignments
    for _ in range(2):  # the hook gives up; the rejoin after it completes
        monkeypatch.setattr(commands, "_abandoned_at", commands._assignments)
        await commands._count_assignment(None)
    batch = ProcessedBatch([event(P0, 3)], [], [], cast(Any, None), [], [])
    offsets = DurableOffsets(stand_in_app(consumer))
    await commands._deliver(offsets, batch.events, batch, taken_at=taken_at)
    await commands._deliver(offsets, batch.events, batch, taken_at=taken_at + 1)
    assert delivered == [] and exits == []


async def test_the_watch_is_ended_however_the_hook_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Runner:
        def rescan_expiry(self) -> None:
            raise RuntimeError("bug")

    watch = commands.HandOverWatch(10, lambda: True, lambda what: None)
    monkeypatch.setattr(commands, "_watch", watch)
    monkeypatch.setattr(commands, "runner", Runner())
    watch.started()
    with pytest.raises(RuntimeError):
        await commands.finish_batches_before_handing_over(None)
    assert watch._timer is None


async def test_a_rebalance_while_stopping_lets_a_delivery_land_or_exits(
    monkeypatch: pytest.MonkeyPatch, exits: list[str]
) -> None:
    """Stopping, Faust skips the hand-over hook and aiokafka rejoins at once: a batch
    still in delivery could land after the new owner's writes. Decided on the main loop,
    where Faust decides it is stopping (the consumer thread could see it otherwise)."""
    revoked: list[set[TP]] = []

    async def fausts(partitions: set[TP]) -> None:
        revoked.append(partitions)

    monkeypatch.setattr(commands, "app", SimpleNamespace(should_stop=True))
    monkeypatch.setattr(commands, "REBALANCE_DRAIN_SECONDS", 0.05)
    handler = commands._hand_over_while_stopping(fausts)
    monkeypatch.setattr(commands, "_delivering", 1)
    await handler({P0})
    assert len(exits) == 1 and "stopping" in exits[0]
    # Nothing in delivery: the rejoin goes ahead, and what is processed from now on is
    # not delivered before the new assignment (while stopping: left for the next owner).
    monkeypatch.setattr(commands, "_delivering", 0)
    await handler({P0})
    assert len(exits) == 1 and commands._abandoned_at == commands._assignments
    assert revoked == [{P0}, {P0}]  # Faust's own handler runs after


async def test_a_rebalance_while_running_leaves_the_hand_over_to_the_hook(
    monkeypatch: pytest.MonkeyPatch, exits: list[str]
) -> None:
    async def fausts(partitions: set[TP]) -> None:
        pass

    monkeypatch.setattr(commands, "app", SimpleNamespace(should_stop=False))
    monkeypatch.setattr(commands, "_delivering", 1)
    await commands._hand_over_while_stopping(fausts)({P0})
    assert exits == [] and commands._abandoned_at is None


async def test_fausts_revocation_handler_is_the_wrapped_one() -> None:
    """Faust hands its consumer the handler when it creates the consumer, at start."""
    assert "_hand_over_while_stopping" in commands.app._on_partitions_revoked.__qualname__

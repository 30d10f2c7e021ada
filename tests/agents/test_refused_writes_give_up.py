"""A batch the broker refuses, given up or waited out (reviews h69b, h69e, h69g).

h69b: a broker refusing the command agent's writes took the fleet down one worker at a time.

1. A refusal aiokafka marks not retriable (TOPIC_AUTHORIZATION_FAILED on one topic the
   worker writes, POLICY_VIOLATION, UNKNOWN_SERVER_ERROR) failed the batch at once: the
   worker exited uncommitted (70), its partitions went to the next worker, which met the
   same refusal and exited, each exit a rebalance pausing the whole group. NOT_ENOUGH_
   REPLICAS (retriable) is waited out with the worker up, reported on /readyz; so must
   these be: the broker answered, nothing of the refused record batch landed.
2. A rebalance while a refused batch waits between two attempts (every record batch of
   the failed attempt settled: nothing of it is with the producer) ended the worker
   too: the hook saw ``_delivering`` and exited, and had it not, the retry that followed
   (``may_retry`` false) failed the batch and ``_exit_if_failed`` exited. Nothing can
   land late there: the batch can be given up like one still processing, and redone
   from the committed offsets by whoever owns its partitions.

h69e, of the h69b change (refused writes retried with the worker up; a batch waiting
between two produce attempts given up at a hand-over without an exit):

1. The hand-over watch looked at ``_producing`` once, 4 s after the rebalance began. A
   delivery asleep between two attempts at that moment passed it, then woke and produced
   again (generation unchanged, the hook not run yet: Faust's producer flush held it up)
   with nothing left to bound it.
2. A batch processed while the one before it was being retried applied its deletes
   (idempotency purge, retention) to the store; the hand-over then gave the earlier one
   up without an exit, and this one was dropped: the store lost records whose tombstones
   were never produced.
3. A refusal the broker repeats for ever for that batch (MESSAGE_TOO_LARGE,
   RECORD_LIST_TOO_LARGE) was retried for ever, liveness excusing it, where the worker
   had exited and its restart's record-limit check named the undersized topic.

h69g, of the h69e change: ``ProcessedBatch.deleted`` was set whenever the purge *may* run
(``purge_clock is not None``), which is nearly every batch, not when a delete was written.
Every give-up path of ``_deliver`` then exited the worker: the no-exit give-ups of 6cd3bee
(a refused batch at a rebalance) and of the hand-over (a batch still processing) were gone.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import (
    MessageSizeTooLargeError,
    NotEnoughReplicasError,
    RecordListTooLargeError,
    TopicAuthorizationFailedError,
)

from paystream.agents import commands
from paystream.agents.commands import ProcessedBatch
from paystream.agents.offsets import DurableOffsets
from paystream.agents.overlap import DeliveryChain
from paystream.agents.publish_health import PUBLISH
from paystream.streams.batch_producer import OutRecord, SentBatch
from paystream.tables.changelog import ChangelogBatch
from tests.agents.test_publish_health import _broker_answers
from tests.agents.test_shutdown import P0, StandInConsumer, event, stand_in_app

pytestmark = pytest.mark.asyncio(loop_scope="session")


class _Event:  # (the command's own event is set by weak reference)
    def __init__(self, message: Any) -> None:
        self.message = message


def _weak_event(tp: Any, offset: int) -> Any:
    return _Event(event(tp, offset).message)


@pytest.fixture
def exits(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    monkeypatch.setattr(commands, "_exit_uncommitted", lambda what, exc=None: seen.append(what))
    return seen


@pytest.fixture(autouse=True)
def _state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(commands, "_abandoned_at", None)
    monkeypatch.setattr(commands, "_assignments", 0)
    monkeypatch.setattr(commands, "_delivering", 0)
    monkeypatch.setattr(commands, "_producing", 0, raising=False)
    monkeypatch.setattr(commands, "lease", SimpleNamespace(lapsed=lambda: False))
    PUBLISH.delivered()


_CHAINS: list[DeliveryChain] = []
_HANGING: list[asyncio.Future[Any]] = []


@pytest.fixture(autouse=True)
async def _settle(exits: list[str]) -> Any:
    yield
    commands._watch.finished()
    for f in _HANGING:
        if not f.done():
            f.set_exception(NotEnoughReplicasError())
    _HANGING.clear()
    while _CHAINS:
        last = _CHAINS.pop().last
        if last is not None and not last.done():
            last.cancel()
            await asyncio.wait([last])
            await asyncio.sleep(0)


def _refuse_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every produce attempt refused NOT_ENOUGH_REPLICAS; the attempts, one entry each."""
    attempts: list[int] = []

    async def refused(producer: Any, records: Any, *a: Any, **kw: Any) -> Any:
        attempts.append(1)
        raise NotEnoughReplicasError()

    monkeypatch.setattr(commands, "send_batches", refused)
    return attempts


def _app() -> Any:
    return SimpleNamespace(
        consumer=StandInConsumer(), consumer_generation_id=None, rebalancing=False
    )


def _refused_runner(monkeypatch: pytest.MonkeyPatch) -> commands.CommandRunner:
    runner = commands.CommandRunner()
    monkeypatch.setattr(runner, "_kafka", lambda: (None, None))
    monkeypatch.setattr(commands, "runner", runner)
    return runner


def _one_batch() -> ProcessedBatch:
    records = [OutRecord("paystream.events", 0, b"t", b"outcome")]
    return ProcessedBatch([event(P0, 3)], [], records, ChangelogBatch(), [], [0])


async def _start(offsets: DurableOffsets, batch: ProcessedBatch) -> DeliveryChain:
    async def done() -> ProcessedBatch:
        return batch

    return await _on_a_chain(offsets, done(), len(batch.events))


async def _on_a_chain(
    offsets: DurableOffsets, processing: Awaitable[ProcessedBatch], size: int = 1
) -> DeliveryChain:
    """A delivery chain of its own taking the batch ``processing`` makes, delivered as the
    agent delivers one (exiting as it does if that fails)."""
    chain = DeliveryChain()
    _CHAINS.append(chain)
    await chain.run(
        processing,
        lambda b: commands._deliver(offsets, b.events, b, taken_at=0),
        on_done=functools.partial(commands._exit_if_failed, size),
    )
    return chain


async def test_a_non_retriable_refusal_is_waited_out_not_an_exit(
    monkeypatch: pytest.MonkeyPatch, exits: list[str]
) -> None:
    """The broker refuses the outcomes topic (its ACL missing for a moment, say) and then
    takes it: the worker stays up, says why it is stuck, and delivers."""
    answers: list[Exception | None] = [TopicAuthorizationFailedError("paystream.events"), None]
    seen = _broker_answers(monkeypatch, answers)
    monkeypatch.setattr(commands, "app", stand_in_app(StandInConsumer()))
    _refused_runner(monkeypatch)
    consumer = StandInConsumer()
    offsets = DurableOffsets(stand_in_app(consumer))
    chain = await _start(offsets, _one_batch())
    assert await chain.drain(2)
    assert exits == [], "a refused write ended the worker: its successor meets the same refusal"
    assert answers == []  # produced again once the broker took writes
    assert seen[1] is not None and seen[1].refused  # reported (/readyz) meanwhile
    await offsets.commit()
    assert consumer.commits == [{P0: 4}]


async def test_a_rebalance_between_two_attempts_gives_the_batch_up_without_an_exit(
    monkeypatch: pytest.MonkeyPatch, exits: list[str]
) -> None:
    attempts: list[float] = []

    async def refused(producer: Any, records: Any, *a: Any, **kw: Any) -> list[Any]:
        attempts.append(asyncio.get_running_loop().time())
        raise NotEnoughReplicasError()  # every record batch of the attempt failed

    monkeypatch.setattr(commands, "send_batches", refused)
    monkeypatch.setattr(commands, "PUBLISH_RETRY_MAX_SECONDS", 0.5)
    monkeypatch.setattr(commands, "REBALANCE_DRAIN_SECONDS", 0.3)
    app = stand_in_app(StandInConsumer())
    monkeypatch.setattr(commands, "app", app)
    _refused_runner(monkeypatch)
    consumer = StandInConsumer()
    offsets = DurableOffsets(stand_in_app(consumer))
    chain = await _start(offsets, _one_batch())
    while len(attempts) < 3:  # refused, and waiting for its next attempt
        await asyncio.sleep(0.01)
    monkeypatch.setattr(commands, "_IN_HAND", [(chain, offsets)])
    await commands.finish_batches_before_handing_over(None)
    assert exits == [], "the hand-over ended a worker with nothing in the producer's hands"
    # Nor would the watch (it fires if Faust's flush holds the hook up past its time).
    assert not commands._watch._delivering(), "the watch would exit a worker producing nothing"
    given_up = len(attempts)
    await commands._count_assignment(None)  # the rejoin completes: a new generation
    app.consumer_generation_id = 2
    assert await chain.drain(3)
    assert exits == [], "a worker with nothing in the producer's hands exited at a rebalance"
    assert len(attempts) == given_up  # nothing produced after the hand-over gave it up
    await offsets.commit()
    assert consumer.commits == []  # redone from the committed offsets by their owner
    assert PUBLISH.trouble() is None  # nothing is failing on this worker any more


def _bare_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = commands.CommandRunner()
    monkeypatch.setattr(runner, "_kafka", lambda: (None, None))
    monkeypatch.setattr(commands, "runner", runner)


def _batch_at(offset: int) -> ProcessedBatch:
    records = [OutRecord("paystream.events", 0, b"t", b"outcome")]
    return ProcessedBatch([event(P0, offset)], [], records, ChangelogBatch(), [], [0])


async def test_a_delivery_asleep_when_the_watch_looks_does_not_produce_again_unwatched(
    monkeypatch: pytest.MonkeyPatch, exits: list[str]
) -> None:
    loop = asyncio.get_running_loop()
    attempts: list[float] = []

    async def send(producer: Any, records: Any, submitted: Any = None, **_: Any) -> Any:
        attempts.append(loop.time())
        if len(attempts) == 1:
            raise NotEnoughReplicasError()  # settled at once: the delivery sleeps
        # The retry's records are with the producer (aiokafka retries them for its
        # request timeout): they may land whenever the broker takes them.
        hang: asyncio.Future[Any] = loop.create_future()
        _HANGING.append(hang)
        sent = [SentBatch("paystream.events", 0, 1, hang)]
        if submitted is not None:
            submitted.extend(sent)
        return sent

    monkeypatch.setattr(commands, "send_batches", send)
    monkeypatch.setattr(commands, "PUBLISH_RETRY_MAX_SECONDS", 0.3)  # first pause 0.1 s
    app = _app()
    monkeypatch.setattr(commands, "app", app)
    _bare_runner(monkeypatch)
    offsets = DurableOffsets(_app())
    await _start(offsets, _batch_at(3))
    while not attempts:
        await asyncio.sleep(0.001)
    assert commands._delivering == 1 and commands._producing == 0  # asleep
    # A rebalance begins (Faust: app.rebalancing, then the watch); Faust's producer flush
    # holds the hook up (other records of the producer's, refused alike), so only the
    # watch stands between this worker and the group moving its partitions.
    monkeypatch.setattr(commands._watch, "seconds", 0.02)
    app.rebalancing = True
    commands._watch.started()
    await asyncio.sleep(0.5)
    assert exits or len(attempts) == 1, (
        "a delivery produced again during a rebalance whose hand-over had not run, after "
        "the watch had passed it: nothing ends those records' retries, which can land "
        "after the partitions' new owner's writes (a stale changelog value)"
    )


async def test_a_batch_that_deleted_from_the_store_is_not_dropped_with_the_worker_up(
    monkeypatch: pytest.MonkeyPatch, exits: list[str]
) -> None:
    attempts = _refuse_writes(monkeypatch)
    monkeypatch.setattr(commands, "PUBLISH_RETRY_MAX_SECONDS", 0.5)
    monkeypatch.setattr(commands, "REBALANCE_DRAIN_SECONDS", 0.3)
    app = _app()
    monkeypatch.setattr(commands, "app", app)
    _bare_runner(monkeypatch)
    consumer = StandInConsumer()
    offsets = DurableOffsets(SimpleNamespace(consumer=consumer, consumer_generation_id=None))
    chain = DeliveryChain()
    _CHAINS.append(chain)
    first, second = _batch_at(3), _batch_at(4)
    deleted: list[bool] = []

    async def done(b: ProcessedBatch) -> ProcessedBatch:
        return b

    async def process_second() -> ProcessedBatch:
        # process_batch runs the idempotency purge and the retention sweep on the store
        # (their tombstones go with this batch) when _may_delete says so.
        deleted.append(commands._may_delete(second.events, 0))
        return second

    def deliver(b: ProcessedBatch) -> Any:
        return commands._deliver(offsets, b.events, b, taken_at=0)

    await chain.run(done(first), deliver, on_done=functools.partial(commands._exit_if_failed, 1))
    while not attempts:  # the first batch is refused, and retried
        await asyncio.sleep(0.001)
    taking = asyncio.ensure_future(
        chain.run(process_second(), deliver, on_done=functools.partial(commands._exit_if_failed, 1))
    )
    while len(attempts) < 3:
        await asyncio.sleep(0.01)
    monkeypatch.setattr(commands, "_IN_HAND", [(chain, offsets)])
    await commands.finish_batches_before_handing_over(None)
    await commands._count_assignment(None)  # rejoined
    app.consumer_generation_id = 2
    assert await chain.drain(3)
    await taking
    await offsets.commit()
    delivered = consumer.commits != []
    assert not (deleted == [True] and not delivered and not exits), (
        "a batch whose processing deleted from the tables (idempotency purge, retention "
        "minimisation) was dropped with the worker up: the store lost those records and "
        "their tombstones are never produced (later passes skip them)"
    )


@pytest.mark.parametrize("refusal", [MessageSizeTooLargeError, RecordListTooLargeError])
async def test_a_batch_the_broker_will_never_take_is_not_retried_for_ever(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, refusal: type[Exception]
) -> None:
    calls: list[int] = []

    async def send(producer: Any, records: Any, *a: Any, **kw: Any) -> Any:
        calls.append(1)
        raise refusal()

    monkeypatch.setattr(commands, "send_batches", send)
    monkeypatch.setattr(commands, "PUBLISH_RETRY_MAX_SECONDS", 0.001)
    records = [
        OutRecord("paystream.events", 0, b"t", b"x" * 10),
        OutRecord("paystream-limits-changelog", 3, b'"limits:acme"', b"x" * 1_200_000),
    ]
    try:
        with pytest.raises(refusal), caplog.at_level(logging.CRITICAL, commands.log.name):
            await asyncio.wait_for(commands._publish(None, records, 1), 1.0)
    finally:
        PUBLISH.delivered()
    assert len(calls) == 1
    # Said with what the broker's error leaves out (review h81rd): which record, its size.
    (said,) = [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL]
    assert "paystream-limits-changelog[3]" in said and "limits:acme" in said, said
    assert "1,200,013 bytes" in said, said


class _Processor:
    """Runs each command (held up while ``slow`` is unset) and purges nothing: no
    idempotency record has expired."""

    def __init__(self) -> None:
        self.tenants: dict[str, Any] = {}
        self.committed = None
        self.expiry_clock_cap = None
        self.purged: list[str] = []
        self.slow = asyncio.Event()
        self.slow.set()
        self.gateways = SimpleNamespace(close_retired=self._close_retired)

    async def _close_retired(self, tenants: Any) -> None:
        return None

    async def process(self, inbound: Any) -> list[Any]:
        await self.slow.wait()  # a provider call
        return []

    def purge_expired(self, tenant: str, now: float, read_at: Any = None) -> int:
        self.purged.append(tenant)
        return 0  # nothing had expired: nothing deleted


def _processing_runner(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[commands.CommandRunner, _Processor]:
    runner = commands.CommandRunner()
    processor = _Processor()

    async def get() -> Any:
        return processor

    monkeypatch.setattr(runner, "processor", get)
    monkeypatch.setattr(runner, "_kafka", lambda: (None, None))
    monkeypatch.setattr(runner.retention, "step", lambda now: 0)  # nothing past retention
    monkeypatch.setattr(commands, "runner", runner)
    return runner, processor


async def test_a_batch_that_deleted_nothing_is_not_marked_deleted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(commands, "app", _app())
    runner, processor = _processing_runner(monkeypatch)
    batch = await runner.process_batch([_weak_event(P0, 3)])
    assert processor.purged == ["k"]  # the purge ran, and deleted nothing
    assert not batch.deleted, (
        "a batch whose purge and sweep deleted nothing is marked deleted: every give-up "
        "of it (a refused batch at a rebalance, the hand-over) now exits the worker"
    )


async def test_a_refused_batch_that_deleted_nothing_is_given_up_at_a_rebalance_without_an_exit(
    monkeypatch: pytest.MonkeyPatch, exits: list[str]
) -> None:
    """6cd3bee's fix (h69b 1c) with a batch as process_batch makes it: the first batch to
    meet the refusal was processed before any refusal, so the gate let its purge run."""
    attempts = _refuse_writes(monkeypatch)
    monkeypatch.setattr(commands, "PUBLISH_RETRY_MAX_SECONDS", 0.5)
    monkeypatch.setattr(commands, "REBALANCE_DRAIN_SECONDS", 0.3)
    app = _app()
    monkeypatch.setattr(commands, "app", app)
    runner, processor = _processing_runner(monkeypatch)
    consumer = StandInConsumer()
    offsets = DurableOffsets(SimpleNamespace(consumer=consumer, consumer_generation_id=None))
    chain = await _on_a_chain(offsets, runner.process_batch([_weak_event(P0, 3)]))
    while len(attempts) < 3:  # refused, and waiting for its next attempt
        await asyncio.sleep(0.01)
    monkeypatch.setattr(commands, "_IN_HAND", [(chain, offsets)])
    app.rebalancing = True
    await commands.finish_batches_before_handing_over(None)
    await commands._count_assignment(None)  # rejoined
    app.consumer_generation_id = 2
    app.rebalancing = False
    assert await chain.drain(3)
    assert processor.purged == ["k"]  # ran, deleted nothing
    assert exits == [], (
        "a refused batch that deleted nothing was given up at a rebalance and the worker "
        "exited: the next owner meets the same refusal, and the next rebalance ends it "
        "(the fleet-wide cascade 6cd3bee removed)"
    )


async def test_an_ordinary_rebalance_with_a_batch_still_processing_is_not_a_restart(
    monkeypatch: pytest.MonkeyPatch, exits: list[str]
) -> None:
    """No broker trouble at all: a deploy's rebalance finds a batch held up by a slow
    provider call past REBALANCE_DRAIN_SECONDS. The hook gives it up (nothing of it with
    the producer) and, once processed, _deliver drops it; its purge was skipped (the gate
    is checked again before each delete: the group is rebalancing)."""
    delivered: list[int] = []

    async def send(producer: Any, records: Any, *a: Any, **kw: Any) -> Any:
        delivered.append(1)
        return []

    monkeypatch.setattr(commands, "send_batches", send)
    monkeypatch.setattr(commands, "REBALANCE_DRAIN_SECONDS", 0.2)
    app = _app()
    monkeypatch.setattr(commands, "app", app)
    runner, processor = _processing_runner(monkeypatch)
    processor.slow.clear()
    consumer = StandInConsumer()
    offsets = DurableOffsets(SimpleNamespace(consumer=consumer, consumer_generation_id=None))
    chain = DeliveryChain()
    _CHAINS.append(chain)
    taking = asyncio.ensure_future(
        chain.run(
            runner.process_batch([_weak_event(P0, 3)]),
            lambda b: commands._deliver(offsets, b.events, b, taken_at=0),
            on_done=functools.partial(commands._exit_if_failed, 1),
        )
    )
    await asyncio.sleep(0.05)  # processing: waiting on the provider
    monkeypatch.setattr(commands, "_IN_HAND", [(chain, offsets)])
    app.rebalancing = True  # a deploy: a worker joins
    await commands.finish_batches_before_handing_over(None)  # gives the batch up, no exit
    assert exits == []
    await commands._count_assignment(None)
    app.consumer_generation_id = 2
    processor.slow.set()  # the provider answers
    await taking
    assert await chain.drain(3)
    app.rebalancing = False
    assert processor.purged == []  # nothing was deleted from the store
    assert delivered == []  # dropped, redone from the committed offsets
    assert exits == [], (
        "an ordinary rebalance that found a batch still processing (a slow provider) "
        "ended the worker though the batch deleted nothing: every such rebalance is now "
        "a restart, itself a rebalance for the rest of the group"
    )


async def test_a_frozen_worker_s_batch_that_deleted_nothing_is_dropped_without_an_exit(
    monkeypatch: pytest.MonkeyPatch, exits: list[str]
) -> None:
    """h61c: a batch in hand when the membership lapsed is dropped (no exit)."""
    monkeypatch.setattr(commands, "app", _app())
    runner, processor = _processing_runner(monkeypatch)
    batch = await runner.process_batch([_weak_event(P0, 3)])

    async def lapsed(generation: Any, what: str) -> bool:
        return False

    monkeypatch.setattr(commands, "still_a_member", lapsed)
    offsets = DurableOffsets(
        SimpleNamespace(consumer=StandInConsumer(), consumer_generation_id=None)
    )
    await commands._deliver(offsets, batch.events, batch, taken_at=0)
    assert processor.purged == ["k"]
    assert exits == [], "a batch that deleted nothing was dropped with an exit"


@pytest.mark.parametrize("what", ["purge", "sweep"])
async def test_a_batch_that_deleted_is_still_marked_deleted(
    monkeypatch: pytest.MonkeyPatch, what: str
) -> None:
    """(Passes before and after the fix: h69e's safety, an exit rather than a drop for a
    batch whose deletes reached the store, is kept where a delete was written.)"""
    monkeypatch.setattr(commands, "app", _app())
    runner, processor = _processing_runner(monkeypatch)
    if what == "purge":
        monkeypatch.setattr(processor, "purge_expired", lambda tenant, now, read_at=None: 1)
    else:

        def step(now: float) -> int:
            runner.retention.changed = 1  # one entity minimised (a write, not a removal)
            return 0

        monkeypatch.setattr(runner.retention, "step", step)
    batch = await runner.process_batch([_weak_event(P0, 3)])
    assert batch.deleted


# Checked and found correct (these pass before and after the fix).


async def test_the_purge_gate_reopens_once_the_broker_takes_a_batch_again(
    monkeypatch: pytest.MonkeyPatch, exits: list[str]
) -> None:
    answers: list[Exception | None] = [NotEnoughReplicasError(), NotEnoughReplicasError(), None]
    gate: list[bool] = []
    e = _weak_event(P0, 3)

    async def send(producer: Any, records: Any, *a: Any, **kw: Any) -> Any:
        gate.append(commands._may_delete([e], 0))
        answer = answers.pop(0)
        if answer is not None:
            raise answer
        return []

    monkeypatch.setattr(commands, "send_batches", send)
    monkeypatch.setattr(commands, "PUBLISH_RETRY_MAX_SECONDS", 0.001)
    monkeypatch.setattr(commands, "app", _app())
    runner, _ = _processing_runner(monkeypatch)
    offsets = DurableOffsets(
        SimpleNamespace(consumer=StandInConsumer(), consumer_generation_id=None)
    )
    batch = await runner.process_batch([_weak_event(P0, 4)])
    await commands._deliver(offsets, batch.events, batch, taken_at=0)
    assert gate == [True, False, False]  # closed while refused
    assert PUBLISH.trouble() is None and commands._may_delete([e], 0)  # and open again
    assert exits == []


async def test_a_rebalance_that_never_ends_does_not_hold_the_delivery_once_the_hook_runs(
    monkeypatch: pytest.MonkeyPatch, exits: list[str]
) -> None:
    attempts = _refuse_writes(monkeypatch)
    monkeypatch.setattr(commands, "PUBLISH_RETRY_MAX_SECONDS", 0.05)
    monkeypatch.setattr(commands, "REBALANCE_DRAIN_SECONDS", 0.3)
    app = _app()
    monkeypatch.setattr(commands, "app", app)
    runner, processor = _processing_runner(monkeypatch)
    monkeypatch.setattr(processor, "purge_expired", lambda *a, **k: 0)
    offsets = DurableOffsets(
        SimpleNamespace(consumer=StandInConsumer(), consumer_generation_id=None)
    )
    chain = await _on_a_chain(offsets, runner.process_batch([_weak_event(P0, 3)]))
    while not attempts:
        await asyncio.sleep(0.001)
    app.rebalancing = True  # and it never ends (Faust "stuck rebalancing")
    await asyncio.sleep(0.3)
    held = len(attempts)
    assert held <= 2  # no attempt while rebalancing (one may have begun before)
    monkeypatch.setattr(commands, "_IN_HAND", [(chain, offsets)])
    await commands.finish_batches_before_handing_over(None)  # Faust's hook, after its flush
    assert await chain.drain(1)  # given up, though app.rebalancing stays True
    assert len(attempts) == held and PUBLISH.trouble() is None

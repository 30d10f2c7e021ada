"""Review h69e of 6cd3bee (refused writes retried with the worker up; a batch waiting
between two produce attempts given up at a hand-over without an exit).

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
"""

from __future__ import annotations

import asyncio
import functools
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import (
    MessageSizeTooLargeError,
    NotEnoughReplicasError,
    RecordListTooLargeError,
)

from paystream.agents import commands
from paystream.agents.commands import ProcessedBatch
from paystream.agents.offsets import DurableOffsets
from paystream.agents.overlap import DeliveryChain
from paystream.agents.publish_health import PUBLISH
from paystream.streams.batch_producer import OutRecord, SentBatch
from paystream.tables.changelog import ChangelogBatch
from tests.agents.test_shutdown import P0, StandInConsumer, event

pytestmark = pytest.mark.asyncio(loop_scope="session")


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


def _app() -> Any:
    return SimpleNamespace(
        consumer=StandInConsumer(), consumer_generation_id=None, rebalancing=False
    )


def _runner(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = commands.CommandRunner()
    monkeypatch.setattr(runner, "_kafka", lambda: (None, None))
    monkeypatch.setattr(commands, "runner", runner)


def _batch(offset: int) -> ProcessedBatch:
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
    _runner(monkeypatch)
    offsets = DurableOffsets(_app())
    chain = DeliveryChain()
    _CHAINS.append(chain)
    batch = _batch(3)

    async def done() -> ProcessedBatch:
        return batch

    await chain.run(
        done(),
        lambda b: commands._deliver(offsets, b.events, b, taken_at=0),
        on_done=functools.partial(commands._exit_if_failed, 1),
    )
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
    attempts: list[int] = []

    async def refused(producer: Any, records: Any, *a: Any, **kw: Any) -> Any:
        attempts.append(1)
        raise NotEnoughReplicasError()

    monkeypatch.setattr(commands, "send_batches", refused)
    monkeypatch.setattr(commands, "PUBLISH_RETRY_MAX_SECONDS", 0.5)
    monkeypatch.setattr(commands, "REBALANCE_DRAIN_SECONDS", 0.3)
    app = _app()
    monkeypatch.setattr(commands, "app", app)
    _runner(monkeypatch)
    consumer = StandInConsumer()
    offsets = DurableOffsets(SimpleNamespace(consumer=consumer, consumer_generation_id=None))
    chain = DeliveryChain()
    _CHAINS.append(chain)
    first, second = _batch(3), _batch(4)
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
    monkeypatch: pytest.MonkeyPatch, refusal: type[Exception]
) -> None:
    calls: list[int] = []

    async def send(producer: Any, records: Any, *a: Any, **kw: Any) -> Any:
        calls.append(1)
        raise refusal()

    monkeypatch.setattr(commands, "send_batches", send)
    monkeypatch.setattr(commands, "PUBLISH_RETRY_MAX_SECONDS", 0.001)
    records = [OutRecord("paystream.events", 0, b"t", b"x" * 10)]
    try:
        with pytest.raises(refusal):
            await asyncio.wait_for(commands._publish(None, records, 1), 1.0)
    finally:
        PUBLISH.delivered()
    assert len(calls) == 1

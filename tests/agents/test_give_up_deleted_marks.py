"""Review h69g of 7b9ad5e: ``ProcessedBatch.deleted`` was set whenever the purge *may* run
(``purge_clock is not None``), which is nearly every batch, not when a delete was written.
Every give-up path of ``_deliver`` then exited the worker: the no-exit give-ups of 6cd3bee
(a refused batch at a rebalance) and of the hand-over (a batch still processing) were gone.
"""

from __future__ import annotations

import asyncio
import functools
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import NotEnoughReplicasError

from paystream.agents import commands
from paystream.agents.offsets import DurableOffsets
from paystream.agents.overlap import DeliveryChain
from paystream.agents.publish_health import PUBLISH
from tests.agents.test_shutdown import P0, StandInConsumer
from tests.agents.test_shutdown import event as _stand_in


class _Event:  # (the command's own event is set by weak reference)
    def __init__(self, message: Any) -> None:
        self.message = message


def event(tp: Any, offset: int) -> Any:
    return _Event(_stand_in(tp, offset).message)


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


@pytest.fixture(autouse=True)
async def _settle(exits: list[str]) -> Any:
    yield
    commands._watch.finished()
    PUBLISH.delivered()
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


def _runner(monkeypatch: pytest.MonkeyPatch) -> tuple[commands.CommandRunner, _Processor]:
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
    runner, processor = _runner(monkeypatch)
    batch = await runner.process_batch([event(P0, 3)])
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
    attempts: list[int] = []

    async def refused(producer: Any, records: Any, *a: Any, **kw: Any) -> Any:
        attempts.append(1)
        raise NotEnoughReplicasError()

    monkeypatch.setattr(commands, "send_batches", refused)
    monkeypatch.setattr(commands, "PUBLISH_RETRY_MAX_SECONDS", 0.5)
    monkeypatch.setattr(commands, "REBALANCE_DRAIN_SECONDS", 0.3)
    app = _app()
    monkeypatch.setattr(commands, "app", app)
    runner, processor = _runner(monkeypatch)
    consumer = StandInConsumer()
    offsets = DurableOffsets(SimpleNamespace(consumer=consumer, consumer_generation_id=None))
    chain = DeliveryChain()
    _CHAINS.append(chain)
    await chain.run(
        runner.process_batch([event(P0, 3)]),
        lambda b: commands._deliver(offsets, b.events, b, taken_at=0),
        on_done=functools.partial(commands._exit_if_failed, 1),
    )
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
    runner, processor = _runner(monkeypatch)
    processor.slow.clear()
    consumer = StandInConsumer()
    offsets = DurableOffsets(SimpleNamespace(consumer=consumer, consumer_generation_id=None))
    chain = DeliveryChain()
    _CHAINS.append(chain)
    taking = asyncio.ensure_future(
        chain.run(
            runner.process_batch([event(P0, 3)]),
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
    runner, processor = _runner(monkeypatch)
    batch = await runner.process_batch([event(P0, 3)])

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
    runner, processor = _runner(monkeypatch)
    if what == "purge":
        monkeypatch.setattr(processor, "purge_expired", lambda tenant, now, read_at=None: 1)
    else:

        def step(now: float) -> int:
            runner.retention.changed = 1  # one entity minimised (a write, not a removal)
            return 0

        monkeypatch.setattr(runner.retention, "step", step)
    batch = await runner.process_batch([event(P0, 3)])
    assert batch.deleted


# Checked and found correct (these pass before and after the fix).


async def test_the_purge_gate_reopens_once_the_broker_takes_a_batch_again(
    monkeypatch: pytest.MonkeyPatch, exits: list[str]
) -> None:
    answers: list[Exception | None] = [NotEnoughReplicasError(), NotEnoughReplicasError(), None]
    gate: list[bool] = []
    e = event(P0, 3)

    async def send(producer: Any, records: Any, *a: Any, **kw: Any) -> Any:
        gate.append(commands._may_delete([e], 0))
        answer = answers.pop(0)
        if answer is not None:
            raise answer
        return []

    monkeypatch.setattr(commands, "send_batches", send)
    monkeypatch.setattr(commands, "PUBLISH_RETRY_MAX_SECONDS", 0.001)
    monkeypatch.setattr(commands, "app", _app())
    runner, _ = _runner(monkeypatch)
    offsets = DurableOffsets(
        SimpleNamespace(consumer=StandInConsumer(), consumer_generation_id=None)
    )
    batch = await runner.process_batch([event(P0, 4)])
    await commands._deliver(offsets, batch.events, batch, taken_at=0)
    assert gate == [True, False, False]  # closed while refused
    assert PUBLISH.trouble() is None and commands._may_delete([e], 0)  # and open again
    assert exits == []


async def test_a_rebalance_that_never_ends_does_not_hold_the_delivery_once_the_hook_runs(
    monkeypatch: pytest.MonkeyPatch, exits: list[str]
) -> None:
    attempts: list[int] = []

    async def refused(producer: Any, records: Any, *a: Any, **kw: Any) -> Any:
        attempts.append(1)
        raise NotEnoughReplicasError()

    monkeypatch.setattr(commands, "send_batches", refused)
    monkeypatch.setattr(commands, "PUBLISH_RETRY_MAX_SECONDS", 0.05)
    monkeypatch.setattr(commands, "REBALANCE_DRAIN_SECONDS", 0.3)
    app = _app()
    monkeypatch.setattr(commands, "app", app)
    runner, processor = _runner(monkeypatch)
    monkeypatch.setattr(processor, "purge_expired", lambda *a, **k: 0)
    offsets = DurableOffsets(
        SimpleNamespace(consumer=StandInConsumer(), consumer_generation_id=None)
    )
    chain = DeliveryChain()
    _CHAINS.append(chain)
    await chain.run(
        runner.process_batch([event(P0, 3)]),
        lambda b: commands._deliver(offsets, b.events, b, taken_at=0),
        on_done=functools.partial(commands._exit_if_failed, 1),
    )
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

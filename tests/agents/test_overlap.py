"""DeliveryChain: a batch is processed while the one before it is delivered, and
deliveries happen one at a time, in batch order, never past a failed batch."""

from __future__ import annotations

import asyncio

import pytest

from paystream.agents.overlap import DeliveryChain, EarlierBatchFailed

pytestmark = pytest.mark.asyncio(loop_scope="session")


class Recorder:
    """Batches whose delivery waits for the broker to ack, noting what happened in which order."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self._acked: dict[str, asyncio.Event] = {}

    def ack(self, name: str) -> None:
        """The broker acknowledges batch ``name`` (before or after it is sent)."""
        self._acked.setdefault(name, asyncio.Event()).set()

    async def process(self, name: str) -> str:
        self.log.append(f"process {name}")
        await asyncio.sleep(0)
        return name

    async def deliver(self, name: str) -> None:
        self.log.append(f"deliver {name}")
        await self._acked.setdefault(name, asyncio.Event()).wait()
        self.log.append(f"delivered {name}")


async def test_the_next_batch_is_processed_while_the_previous_one_is_delivered() -> None:
    rec, chain = Recorder(), DeliveryChain()
    first = await chain.run(rec.process("a"), rec.deliver)
    second_run = asyncio.ensure_future(chain.run(rec.process("b"), rec.deliver))
    await asyncio.sleep(0.01)
    # b was processed while a's delivery was still waiting on the broker ...
    assert rec.log == ["process a", "deliver a", "process b"]
    assert not first.done()
    # ... but is handed back (so the agent takes more) only once a is delivered,
    assert not second_run.done()
    # and is delivered only after a, even if the broker would take it first.
    rec.ack("b")
    await asyncio.sleep(0.01)
    assert rec.log == ["process a", "deliver a", "process b"]
    rec.ack("a")
    second = await asyncio.wait_for(second_run, 1)
    assert await chain.drain(1)
    assert rec.log == [
        "process a", "deliver a", "process b", "delivered a", "deliver b", "delivered b"
    ]  # fmt: skip
    assert first.result() is None and second.result() is None


async def test_an_unacknowledged_batch_holds_the_agent_after_one_more() -> None:
    rec, chain = Recorder(), DeliveryChain()
    await chain.run(rec.process("a"), rec.deliver)  # the broker never acknowledges a
    later = asyncio.ensure_future(chain.run(rec.process("b"), rec.deliver))
    await asyncio.sleep(0.05)
    # One batch processed ahead, no more: nothing piles up behind a stuck broker.
    assert not later.done() and rec.log == ["process a", "deliver a", "process b"]
    assert not await chain.drain(0.01)
    rec.ack("a")
    rec.ack("b")
    await asyncio.wait_for(later, 1)
    assert await chain.drain(1)


async def test_a_failed_batch_stops_every_later_delivery() -> None:
    rec, chain = Recorder(), DeliveryChain()

    async def broken() -> str:
        raise RuntimeError("bug")

    failed = await chain.run(broken(), rec.deliver)
    assert failed.done() and isinstance(failed.exception(), RuntimeError)
    later = await chain.run(rec.process("b"), rec.deliver)
    await chain.drain()
    assert isinstance(later.exception(), EarlierBatchFailed)
    assert rec.log == ["process b"]  # processed, never delivered: its offsets stay


async def test_a_failed_delivery_stops_the_next_one_already_processed() -> None:
    rec, chain = Recorder(), DeliveryChain()
    broker_answers = asyncio.Event()

    async def refuse(name: str) -> None:
        rec.log.append(f"deliver {name}")
        await broker_answers.wait()
        raise ConnectionError(name)

    ended: list[asyncio.Task[None]] = []
    first = await chain.run(rec.process("a"), refuse, on_done=ended.append)
    second_run = asyncio.ensure_future(chain.run(rec.process("b"), rec.deliver))
    await asyncio.sleep(0.01)
    assert rec.log == ["process a", "deliver a", "process b"]  # b waits behind a
    broker_answers.set()
    second = await asyncio.wait_for(second_run, 1)
    await chain.drain(1)
    assert isinstance(first.exception(), ConnectionError) and ended == [first]
    assert isinstance(second.exception(), EarlierBatchFailed)
    assert "deliver b" not in rec.log


async def test_cancelling_the_caller_leaves_the_batch_running() -> None:
    rec, chain = Recorder(), DeliveryChain()
    started, go_on = asyncio.Event(), asyncio.Event()

    async def slow() -> str:
        started.set()
        await go_on.wait()
        return "a"

    ended: list[asyncio.Task[None]] = []
    caller = asyncio.ensure_future(chain.run(slow(), rec.deliver, on_done=ended.append))
    await started.wait()
    caller.cancel()  # as Faust cancels the agent on shutdown
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert chain.last is not None and not chain.last.done()
    go_on.set()
    rec.ack("a")
    assert await chain.drain(1)
    assert rec.log == ["deliver a", "delivered a"]
    assert ended == [chain.last]  # told, though the caller was gone


async def test_drain_without_batches_returns() -> None:
    assert await asyncio.wait_for(DeliveryChain().drain(), 1)

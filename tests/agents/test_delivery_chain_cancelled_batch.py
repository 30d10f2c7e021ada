"""DeliveryChain: a batch whose delivery was cancelled is not passed over either; the
batch after it fails as an earlier batch not delivered, never delivered itself."""

from __future__ import annotations

import asyncio

import pytest

from paystream.agents.overlap import DeliveryChain, EarlierBatchFailed

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_cancelled_delivery_fails_the_next_batch_as_not_delivered_before_it() -> None:
    chain = DeliveryChain()
    delivered: list[str] = []
    stuck = asyncio.Event()

    async def process(name: str) -> str:
        return name

    async def deliver(name: str) -> None:
        if name == "a":
            await stuck.wait()  # never acknowledged
        delivered.append(name)

    first = await chain.run(process("a"), deliver)
    second_run = asyncio.ensure_future(chain.run(process("b"), deliver))
    await asyncio.sleep(0.01)
    first.cancel()  # e.g. a hand-over gave up on it
    second = await asyncio.wait_for(second_run, 1)
    await chain.drain(1)
    assert first.cancelled()
    assert not second.cancelled() and isinstance(second.exception(), EarlierBatchFailed)
    assert delivered == []

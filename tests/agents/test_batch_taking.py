"""take_batches: at most ``max_`` events a batch, none of an older consumer generation
(partitions reassigned since they were fetched), and nothing handed over while flow
control is suspended (a rebalance in progress)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP, Message
from mode.utils.queues import FlowControlEvent, ThrowableQueue

from paystream.agents.batching import take_batches

pytestmark = pytest.mark.asyncio(loop_scope="session")

P0 = TP("t.commands", 0)


def event(offset: int, generation: int = 1) -> Any:
    return SimpleNamespace(
        message=Message(
            P0.topic, P0.partition, offset, 0.0, 0, None, b"k", b"v", None, tp=P0,
            generation_id=generation,
        )
    )  # fmt: skip


def agent_stream(*events: Any, generation: int = 1, suspended: bool = False) -> Any:
    queue: ThrowableQueue = ThrowableQueue(flow_control=FlowControlEvent())
    for e in events:
        queue.put_nowait(e)
    app = SimpleNamespace(
        flow_control=FlowControlEvent(initially_suspended=suspended),
        consumer_generation_id=generation,
    )
    return SimpleNamespace(channel=SimpleNamespace(queue=queue), app=app)


def offsets(batch: list[Any]) -> list[int]:
    return [e.message.offset for e in batch]


async def test_a_batch_holds_at_most_max_events_and_the_rest_come_next_in_order() -> None:
    batches = take_batches(agent_stream(*(event(o) for o in range(5))), 2, 0, idle=1)
    assert offsets(await anext(batches)) == [0, 1]
    assert offsets(await anext(batches)) == [2, 3]
    assert offsets(await anext(batches)) == [4]


async def test_events_of_an_older_generation_are_dropped() -> None:
    stream = agent_stream(event(0, 1), event(1, 2), event(2, 1), event(3, 2), generation=2)
    assert offsets(await anext(take_batches(stream, 10, 0, idle=1))) == [1, 3]


async def test_nothing_is_handed_over_while_flow_control_is_suspended() -> None:
    stream = agent_stream(event(0), event(1), suspended=True)
    taking = asyncio.ensure_future(anext(take_batches(stream, 10, 0, idle=1)))
    await asyncio.sleep(0.05)
    assert not taking.done()  # held while suspended, not dropped
    stream.app.flow_control.resume()
    assert offsets(await asyncio.wait_for(taking, 1)) == [0, 1]

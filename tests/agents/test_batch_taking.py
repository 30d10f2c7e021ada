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


def event(offset: int, generation: int = 1, key: bytes = b"k") -> Any:
    return SimpleNamespace(
        message=Message(
            P0.topic, P0.partition, offset, 0.0, 0, None, key, b"v", None, tp=P0,
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


def keys(batch: list[Any]) -> str:
    return "".join(e.message.key.decode() for e in batch)


async def test_a_batch_holds_at_most_per_key_max_events_of_one_key_in_order() -> None:
    """One tenant's commands run one at a time, and a batch waits for its longest run: a
    backlog of one tenant's 500 held every tenant sharing the batch for 500 provider calls
    (review h68g). The batch now ends before a key's (per_key_max + 1)th event, which
    comes first in the next; the order is kept."""
    sent = "aaabaacb"
    stream = agent_stream(*(event(o, key=k.encode()) for o, k in enumerate(sent)))
    batches = take_batches(stream, 100, 0, idle=1, per_key_max=2)
    taken = [keys(await anext(batches)) for _ in range(3)]
    assert taken == ["aa", "aba", "acb"]
    assert "".join(taken) == sent


async def test_per_key_max_applies_to_what_lands_while_the_batch_waits() -> None:
    stream = agent_stream(event(0, key=b"a"))
    queue = stream.channel.queue
    batches = take_batches(stream, 100, 0.05, idle=1, per_key_max=2)
    taking = asyncio.ensure_future(anext(batches))
    await asyncio.sleep(0)  # (the first taken: the batch waits `within` for the rest)
    for o, k in enumerate("ba", start=1):
        queue.put_nowait(event(o, key=k.encode()))
    queue.put_nowait(event(3, key=b"a"))
    assert keys(await taking) == "aba"
    assert offsets(await anext(batches)) == [3]

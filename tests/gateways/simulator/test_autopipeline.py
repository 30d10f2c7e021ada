"""The Redis auto-pipeline against a real Redis: coalescing, per-call results and errors."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from paystream.gateways.simulator.autopipeline import AutoPipeline

pytestmark = pytest.mark.asyncio


class CountingPipeline(AutoPipeline):
    def __init__(self, redis: Any) -> None:
        super().__init__(redis)
        self.round_trips: list[int] = []

    async def _pipeline(self, batch: list[Any]) -> list[Any]:
        self.round_trips.append(len(batch))
        return await super()._pipeline(batch)


@pytest_asyncio.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.from_url(redis_url)
    try:
        yield c
    finally:
        await c.aclose()


async def test_concurrent_calls_share_one_round_trip(client: aioredis.Redis) -> None:
    p = CountingPipeline(client)
    prefix = uuid.uuid4().hex
    await client.mset({f"{prefix}:{i}": str(i) for i in range(20)})
    values = await asyncio.gather(*(p.get(f"{prefix}:{i}") for i in range(20)))
    assert values == [str(i).encode() for i in range(20)]
    assert p.round_trips == [20]


async def test_each_call_gets_its_own_error(client: aioredis.Redis) -> None:
    p = CountingPipeline(client)
    key = f"{uuid.uuid4().hex}:list"
    await client.rpush(key, "x")
    ok, wrong_type = await asyncio.gather(
        p.execute("LLEN", key), p.get(key), return_exceptions=True
    )
    assert ok == 1
    assert isinstance(wrong_type, ResponseError) and "WRONGTYPE" in str(wrong_type)
    assert p.round_trips == [2]


async def test_scripts_survive_a_script_flush(client: aioredis.Redis) -> None:
    p = CountingPipeline(client)
    script = client.register_script("return ARGV[1] .. KEYS[1]")
    await client.script_flush()
    results = await asyncio.gather(*(p.run_script(script, [f"k{i}"], ["v"]) for i in range(3)))
    assert results == [b"vk0", b"vk1", b"vk2"]
    assert p.round_trips == [3, 3]  # NOSCRIPT for all three, then the retry


async def test_sequential_steps_of_concurrent_tasks_stay_coalesced(
    client: aioredis.Redis,
) -> None:
    """Like tenants in a batch: each task awaits step after step."""
    p = CountingPipeline(client)
    prefix = uuid.uuid4().hex

    async def tenant(i: int) -> int:
        total = 0
        for step in range(3):
            total += int(await p.execute("INCR", f"{prefix}:{i}:{step}"))
        return total

    assert await asyncio.gather(*(tenant(i) for i in range(8))) == [3] * 8
    assert p.round_trips == [8, 8, 8]


async def test_overlapping_flushes_each_read_their_own_replies(client: aioredis.Redis) -> None:
    """A second flush starts while the first still waits on Redis: no replies swap."""
    p = CountingPipeline(client)
    prefix = uuid.uuid4().hex
    await client.mset({f"{prefix}:{i}": str(i) for i in range(6)})
    # BLPOP with a timeout holds its connection ~0.2 s; the GETs queued after it flush
    # while that is in flight and must come back on their own connection, in order.
    slow = asyncio.ensure_future(p.execute("BLPOP", f"{prefix}:empty", "0.2"))
    await asyncio.sleep(0.01)
    values = await asyncio.gather(*(p.get(f"{prefix}:{i}") for i in range(6)))
    assert values == [str(i).encode() for i in range(6)]
    assert await slow is None
    assert p.round_trips == [1, 6]


async def test_a_dropped_connection_is_replaced_without_failing_the_call(
    client: aioredis.Redis,
) -> None:
    p = CountingPipeline(client)
    my_id = await p.execute("CLIENT", "ID")
    await client.execute_command("CLIENT", "KILL", "ID", my_id)
    assert await p.execute("CLIENT", "ID") != my_id
    assert p.round_trips == [1, 1, 1]  # the stale connection's attempt, then a fresh one

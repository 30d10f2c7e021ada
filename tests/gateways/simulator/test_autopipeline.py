"""The Redis auto-pipeline against a real Redis: coalescing, writing a turn's first command
at once, per-call results and errors."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import redis
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, ResponseError

from paystream.gateways.simulator.autopipeline import AutoPipeline

pytestmark = pytest.mark.asyncio


class CountingPipeline(AutoPipeline):
    def __init__(self, redis: Any) -> None:
        super().__init__(redis)
        self.round_trips: list[int] = []

    async def _pipeline(
        self, batch: list[Any], written: Any = None, order: Any = None
    ) -> list[Any]:
        self.round_trips.append(len(batch))
        return await super()._pipeline(batch, written, order)


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
    assert sum(p.round_trips) == 24
    # The first step shares one round trip (no connection is held yet). Later, a turn
    # writes its first command at once and the rest together: the first task to resume
    # runs ahead alone ([1]), the seven others resume together ([1, 6] or [7]).
    assert p.round_trips[0] == 8
    assert len(p.round_trips) <= 6


async def test_a_turns_first_command_reaches_redis_before_the_turn_ends(
    client: aioredis.Redis, redis_url: str
) -> None:
    """Redis runs the first command while the rest of the turn is still computing."""
    p = CountingPipeline(client)
    first, rest = f"{uuid.uuid4().hex}:first", f"{uuid.uuid4().hex}:rest"
    await p.execute("PING")  # a connection is now held
    observer = redis.Redis.from_url(redis_url)
    try:
        one = p.execute("INCR", first)
        others = [p.execute("INCR", rest) for _ in range(3)]
        # Still in the same turn (no await yet): only the first has been written.
        deadline = time.monotonic() + 5
        while observer.get(first) is None and time.monotonic() < deadline:
            time.sleep(0.001)
        assert observer.get(first) == b"1"
        assert observer.get(rest) is None
    finally:
        observer.close()
    assert await one == 1
    assert await asyncio.gather(*others) == [1, 2, 3]
    assert p.round_trips == [1, 1, 3]


async def test_a_command_that_cannot_be_packed_fails_alone(client: aioredis.Redis) -> None:
    p = CountingPipeline(client)
    key = f"{uuid.uuid4().hex}:k"
    await p.execute("PING")  # the next command takes the written-at-once path
    with pytest.raises(DataError):
        await p.execute("SET", key, {"not": "packable"})
    assert await p.execute("SET", key, "v") == b"OK"
    assert await p.get(key) == b"v"
    assert len(p._idle) == 1  # the connection was kept, not leaked


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


async def _hold_two_connections(p: CountingPipeline, prefix: str) -> None:
    """Overlapping flushes: the BLPOP holds one connection while the GET takes another."""
    slow = asyncio.ensure_future(p.execute("BLPOP", f"{prefix}:empty", "0.2"))
    await asyncio.sleep(0.01)
    await p.get(f"{prefix}:x")
    await slow
    assert len(p._idle) == 2


async def _kill_connections_of(client: aioredis.Redis, observer: aioredis.Redis) -> None:
    """Have the server drop every connection of ``client`` (and only those)."""
    name = client.connection_pool.connection_kwargs["client_name"]
    for entry in await observer.client_list():
        if entry.get("name") == name:
            await observer.client_kill_filter(_id=entry["id"])


@pytest_asyncio.fixture
async def named(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.from_url(redis_url, client_name=f"autopipeline-{uuid.uuid4().hex[:8]}")
    try:
        yield c
    finally:
        await c.aclose()


async def test_dropped_connections_are_all_replaced_without_failing_a_read(
    named: aioredis.Redis, client: aioredis.Redis
) -> None:
    p = CountingPipeline(named)
    prefix = uuid.uuid4().hex
    await client.set(f"{prefix}:k", "v")
    await _hold_two_connections(p, prefix)
    await _kill_connections_of(named, client)
    assert await p.get(f"{prefix}:k") == b"v"
    # The stale connection's attempt, then one on a fresh connection: the other stale one
    # was dropped rather than tried.
    assert p.round_trips[2:] == [1, 1]
    assert await p.get(f"{prefix}:k") == b"v"


async def test_a_command_that_may_not_repeat_is_not_retried(
    named: aioredis.Redis, client: aioredis.Redis
) -> None:
    p = CountingPipeline(named)
    key = f"{uuid.uuid4().hex}:n"
    assert await p.execute("INCR", key) == 1
    await _kill_connections_of(named, client)
    with pytest.raises(RedisConnectionError):
        await p.execute("INCR", key)  # may or may not have run: the caller decides
    assert await p.execute("INCR", key) == 2  # the next call reconnects


async def test_commands_reach_redis_in_the_order_they_were_submitted(
    client: aioredis.Redis,
) -> None:
    """A command queued for its turn's end is written before the next turn's first."""
    p = CountingPipeline(client)
    prefix = uuid.uuid4().hex
    await _hold_two_connections(p, prefix)
    key = f"{prefix}:order"
    first = p.execute("PING")  # written at once
    queued = p.execute("RPUSH", key, "queued")  # written at the turn's end
    await asyncio.sleep(0)
    later = p.execute("RPUSH", key, "later")  # the next turn's first
    await asyncio.gather(first, queued, later)
    assert await client.lrange(key, 0, -1) == [b"queued", b"later"]


async def test_no_command_overtakes_one_waiting_for_a_connection(
    client: aioredis.Redis,
) -> None:
    """With no connection free, the turn's flush waits for a new one; a command of the
    next turn, with a connection freed meanwhile, still waits its turn."""
    p = CountingPipeline(client)
    key = f"{uuid.uuid4().hex}:order"
    results = []
    for n in range(5):  # queued ones (no connection held yet) then later turns' ones
        results.append(p.execute("RPUSH", key, str(n)))
        await asyncio.sleep(0)
    await asyncio.gather(*results)
    assert await client.lrange(key, 0, -1) == [str(n).encode() for n in range(5)]
    assert p._unwritten == 0


async def test_flushes_waiting_for_new_connections_write_in_order(
    client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No connection held: each turn's flush asks the pool for one, and connections come
    in any order (here the first asked comes last). Writes still follow the flushes.
    (Before: [b"2", b"1", b"0"]; found as [0, 3, 2, 1, 4] under CI load.)"""
    p = CountingPipeline(client)
    pool = client.connection_pool
    real = pool.get_connection
    asked = 0

    async def slower_the_earlier(*args: Any, **kwargs: Any) -> Any:
        nonlocal asked
        asked += 1
        await asyncio.sleep(0.05 / asked)
        return await real(*args, **kwargs)

    monkeypatch.setattr(pool, "get_connection", slower_the_earlier)
    key = f"{uuid.uuid4().hex}:order"
    results = []
    for n in range(3):
        results.append(p.execute("RPUSH", key, str(n)))
        await asyncio.sleep(0)
    await asyncio.gather(*results)
    assert await client.lrange(key, 0, -1) == [b"0", b"1", b"2"]
    assert p._unwritten == 0 and p._last_unwritten is None

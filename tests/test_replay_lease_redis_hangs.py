"""The replay lease (paystream/replay_lease.py) on a Redis that hangs (SIGSTOP): its
client's socket timeout bounds each request, so a replay holding the lease stops
(LeaseLost, committing nothing more) and one starting is refused, each within a bound,
never waiting for Redis to come back (review h78b)."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest
from redis.exceptions import RedisError

from paystream.replay_lease import LeaseLost, ReplayLease
from paystream.settings import load_settings
from tests.fixtures.frozen_redis import frozen, own_redis

# The lease client's socket timeout (5 s) and redis-py's retries of a timed-out request,
# with slack for a loaded host.
BOUND = 30.0


async def _holder_steps(holder: ReplayLease) -> tuple[float, float]:
    """How long the holder's confirm (LeaseLost: before a commit) and release take."""
    started = time.monotonic()
    with pytest.raises(LeaseLost):
        await holder.confirm()
    confirm_took = time.monotonic() - started
    started = time.monotonic()
    await holder.release()
    return confirm_took, time.monotonic() - started


async def _timed_refusal(newcomer: ReplayLease) -> float:
    """How long a new replay's acquire takes to be refused (RedisError)."""
    started = time.monotonic()
    with pytest.raises(RedisError):
        await newcomer.acquire()
    return time.monotonic() - started


async def test_a_hung_redis_ends_the_lease_and_refuses_a_new_one_in_bounded_time(
    tmp_path: Path,
) -> None:
    with own_redis(tmp_path / "redis") as rd:
        settings = load_settings(redis_url=rd.url, commands_topic=f"c-{uuid.uuid4().hex[:8]}")
        # (a short time to live: trusted without asking for 2 s, less than one request's
        # timeout, so a commit asks Redis and finds it not answering)
        holder, newcomer = ReplayLease(settings, ttl_seconds=3.0), ReplayLease(settings)
        await holder.acquire()
        try:
            with frozen(rd):
                # The holder's steps and the newcomer's at the same time: each on a client
                # of its own, each timed by itself (one bound's wait, not three in a row).
                (confirm_took, release_took), acquire_took = await asyncio.gather(
                    _holder_steps(holder), _timed_refusal(newcomer)
                )
        finally:
            await holder.release()
            await newcomer.release()
    assert confirm_took < BOUND, confirm_took
    assert acquire_took < BOUND, acquire_took
    assert release_took < BOUND, release_took

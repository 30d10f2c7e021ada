"""Fixtures for pipeline tests: a processor with dict tables and the real simulator."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest_asyncio
import redis.asyncio as aioredis

from paystream.settings import load_settings
from tests.agents.harness import Harness


@asynccontextmanager
async def running_harness(
    redis_url: str, committed: Callable[[int], int] | None = None, **settings: Any
) -> AsyncIterator[Harness]:
    """A harness on ``redis_url`` with quick gateway retries, and ``settings`` on top;
    ``committed``: the commands topic's committed offset per partition."""
    client = aioredis.from_url(redis_url)
    options: dict[str, Any] = {
        "gateway_backoff_base_ms": 1,
        "gateway_max_attempts": 3,
        # Tests send records with fixed timestamps, which age past the retention's
        # `stale` cut-off as the years pass: off, but where a test sets it.
        "entity_retention_seconds": 0,
        # Nor are their commands read "a day late" (parked stale): where a test sets it.
        "park_late_commands": False,
    }
    h = Harness(
        settings=load_settings(redis_url=redis_url, **{**options, **settings}),
        redis=client,
        committed=committed,
    )
    try:
        yield h
    finally:
        await h.pool.aclose()
        await client.aclose()


@pytest_asyncio.fixture
async def harness(redis_url: str) -> AsyncIterator[Harness]:
    async with running_harness(redis_url) as h:
        yield h

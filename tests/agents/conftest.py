"""Fixtures for pipeline tests: a processor with dict tables and the real simulator."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
import redis.asyncio as aioredis

from paystream.settings import load_settings
from tests.agents.harness import Harness


@pytest_asyncio.fixture
async def harness(redis_url: str) -> AsyncIterator[Harness]:
    client = aioredis.from_url(redis_url)
    settings = load_settings(redis_url=redis_url, gateway_backoff_base_ms=1, gateway_max_attempts=3)
    h = Harness(settings=settings, redis=client)
    try:
        yield h
    finally:
        await h.pool.aclose()
        await client.aclose()

"""Gateway test fixtures: real Redis for the simulator, localstripe for Stripe."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aredis

from paystream.gateways.registry import GATEWAYS
from tests.gateways.harness import Harness

__all__ = ["harness", "redis_client"]


@pytest.fixture(scope="session")
async def redis_client(gateway_redis_url: str) -> AsyncIterator[aredis.Redis]:
    client = aredis.Redis.from_url(gateway_redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def tenant_id() -> str:
    """A fresh tenant per test, so provider-side state never leaks between tests."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=sorted(GATEWAYS))
async def harness(
    request: pytest.FixtureRequest, tenant_id: str, redis_client: aredis.Redis
) -> AsyncIterator[Harness]:
    """One gateway from GATEWAYS (parametrised indirectly by the contract suite)."""
    name: str = request.param
    url = request.getfixturevalue("localstripe_url") if name == "stripe" else ""
    square = request.getfixturevalue("square_url") if name == "square" else ""
    paddle = request.getfixturevalue("paddle_url") if name == "paddle" else ""
    h = Harness(
        name, tenant_id, redis=redis_client, stripe_url=url, square_url=square, paddle_url=paddle
    )
    yield h
    await h.aclose()

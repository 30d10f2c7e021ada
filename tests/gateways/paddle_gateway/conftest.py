"""The Paddle gateway's tests run their gateways on the session's Redis, as workers do."""

from __future__ import annotations

import pytest
import redis.asyncio as aredis

from tests.gateways.paddle_gateway.wire import use_redis


@pytest.fixture(autouse=True)
def _session_redis(redis_client: aredis.Redis) -> None:
    use_redis(redis_client)

"""Shared setup of the Connect tests (connected accounts, transfers, destination charges):
a Square or Paddle gateway that reaches nothing, and a bare handler context to call a
handler on it directly, so "unsupported" is proved to come before any provider call."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import redis.asyncio as aredis
from pydantic import SecretStr

from paystream.agents.handlers import HandlerContext, Tables
from paystream.gateways.base import GatewayContext, PaymentGateway
from paystream.gateways.registry import GatewayDeps, build_gateway
from paystream.settings import load_settings
from paystream.streams.outcomes import CommandRef
from tests.fixtures.square_fake import FAKE_SQUARE_LOCATION


def handler_ctx(gateway: PaymentGateway, command_type: str) -> HandlerContext:
    """A context for calling ``HANDLERS[command_type]`` directly, with empty tables."""
    cmd = CommandRef(
        tenant_id="t1",
        command_id="c1",
        command_type=command_type,
        idempotency_key="k1",
        time=datetime.now(UTC),
    )
    return HandlerContext(cmd=cmd, gateway=gateway, tables=Tables({}, {}, {}, {}, {}))


@asynccontextmanager
async def unreachable_gateway(redis_url: str, provider: str) -> AsyncIterator[PaymentGateway]:
    """A ``provider`` (square or paddle) gateway aimed at an address no server holds: a call
    made would be `provider_unavailable`, so an `unsupported` answer came before any."""
    settings = load_settings(
        square_api_base="http://127.0.0.1:1", paddle_api_base="http://127.0.0.1:1"
    )
    credential = "access_token" if provider == "square" else "api_key"
    options = {"location_id": FAKE_SQUARE_LOCATION} if provider == "square" else {}
    client = aredis.Redis.from_url(redis_url)
    ctx = GatewayContext(
        tenant_id="t1",
        provider=provider,
        credentials={credential: SecretStr("test-secret-not-real")},
        options=options,
    )
    gateway = build_gateway(ctx, GatewayDeps(settings=settings, redis=client))
    try:
        yield gateway
    finally:
        await gateway.aclose()
        await client.aclose()

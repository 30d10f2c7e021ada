"""paystream.http_client's retries, against a real HTTP server that answers 503 first.

(The ingress itself is exercised in tests/e2e/test_http_ingress.py; a worker cannot be
made to answer 503 on cue, so this server stands in for one that is briefly unavailable.)
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp.web
import pytest
import pytest_asyncio

from paystream.http_client import Accepted, IngressClient, IngressError

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def flaky() -> AsyncIterator[tuple[str, list[bytes], list[int]]]:
    """A server answering the statuses queued in ``plan`` in turn; ``bodies``: what came."""
    bodies: list[bytes] = []
    plan: list[int] = []

    async def commands(request: aiohttp.web.Request) -> aiohttp.web.Response:
        bodies.append(await request.read())
        status = plan.pop(0) if plan else 202
        if status == 503:
            return aiohttp.web.json_response(
                {"error": "unavailable", "message": "later"},
                status=503,
                headers={"Retry-After": "0"},
            )
        event = json.loads(bodies[-1])
        answer = {"accepted": True, "tenant": event["tenantid"], "command_id": event["id"],
                  "idempotency_key": event["id"]}  # fmt: skip
        return aiohttp.web.json_response(answer, status=202)

    app = aiohttp.web.Application()
    app.router.add_post("/v1/commands", commands)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", bodies, plan
    finally:
        await runner.cleanup()


async def test_a_503_is_sent_again_as_the_same_command(
    flaky: tuple[str, list[bytes], list[int]],
) -> None:
    url, bodies, plan = flaky
    plan.extend([503, 503])
    async with IngressClient(url, "psk_test", retries=3) as client:
        answer = await client.command("customer.create", "shop", {}, command_id="c-1")
    assert answer == Accepted("shop", "c-1", "c-1")
    assert len(bodies) == 3 and len(set(bodies)) == 1  # byte for byte the same command


async def test_past_its_retries_the_503_is_said(flaky: tuple[str, list[bytes], list[int]]) -> None:
    url, bodies, plan = flaky
    plan.extend([503] * 5)
    async with IngressClient(url, "psk_test", retries=1) as client:
        with pytest.raises(IngressError) as refused:
            await client.command("customer.create", "shop", {})
    assert refused.value.status == 503 and len(bodies) == 2

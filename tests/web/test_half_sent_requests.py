"""The connection limits reach the servers really started (review h58q): a half-sent request
on the worker's Faust aiohttp web server, and on the ingress's runner, is closed once
keepalive_timeout passes."""

from __future__ import annotations

import asyncio

import aiohttp.web
import pytest

from paystream.devstack._process import free_port
from paystream.web import http_limits
from paystream.web.ingress_server import make_runner


async def _closed_within(port: int, seconds: float) -> bool:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-A: 1\r\n")  # no end
    await writer.drain()
    try:
        got = await asyncio.wait_for(reader.read(), seconds)
        return got == b"" or got.startswith(b"HTTP/1.1 4")
    except TimeoutError:
        return False
    finally:
        writer.close()


@pytest.mark.asyncio
async def test_a_faust_web_server_given_the_limits_closes_a_half_sent_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Faust's own aiohttp driver, as a worker serves with it (app.py gives the worker's
    the limits: test_http_refusals_review.py), on a Faust app of this test's."""
    import faust

    port = free_port()
    app = faust.App("half-sent-test", web_bind="127.0.0.1", web_port=port, env={})
    monkeypatch.setitem(http_limits.HANDLER_LIMITS, "keepalive_timeout", 1.0)
    http_limits.limit_faust_web(app.web, 512)
    try:
        await app.web.start_server()
        assert await _closed_within(port, 4.0)
    finally:
        await app.web._runner.cleanup()


@pytest.mark.asyncio
async def test_the_ingress_runner_closes_a_half_sent_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(http_limits.HANDLER_LIMITS, "keepalive_timeout", 1.0)
    app = aiohttp.web.Application()
    app.router.add_get("/healthz", lambda r: aiohttp.web.Response(text="ok"))
    runner = make_runner(app, 512)
    await runner.setup()
    port = free_port()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        assert await _closed_within(port, 4.0)
    finally:
        await runner.cleanup()

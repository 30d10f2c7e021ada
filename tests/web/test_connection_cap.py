"""Both web servers stop accepting connections past PAYSTREAM_WEB_MAX_CONNECTIONS
(http_limits.py): a peer holding many idle or half-sent connections could otherwise take
a worker's memory. Over the cap a connection is answered 503 and closed; once one
closes, the next is served."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp.web
import pytest
from prometheus_client import REGISTRY

from paystream.devstack._process import free_port
from paystream.web import http_limits
from paystream.web.ingress_server import make_runner

HALF_SENT = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n"  # no end of headers
WHOLE = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
# Past the cap a probe's GET is still served (http_limits.PROBE_PATHS): any other request
# is answered 503.
OTHER = WHOLE.replace(b"/healthz", b"/v1/other")


async def _answer(port: int, request: bytes = WHOLE) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5.0)
    finally:
        writer.close()


async def _held(port: int) -> asyncio.StreamWriter:
    """A connection holding a half-sent request, once the server has taken it."""
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(HALF_SENT)
    await writer.drain()
    return writer


def _refused(server: str) -> float:
    value = REGISTRY.get_sample_value(
        "paystream_http_connections_refused_total", {"server": server}
    )
    return value or 0.0


async def _until(condition: object, seconds: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.02)


@pytest.fixture
async def ingress_port() -> AsyncIterator[tuple[int, aiohttp.web.AppRunner]]:
    app = aiohttp.web.Application()
    app.router.add_get("/healthz", lambda r: aiohttp.web.Response(text="ok"))
    runner = make_runner(app, 3)
    await runner.setup()
    port = free_port()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield port, runner
    finally:
        await runner.cleanup()


@pytest.mark.asyncio
async def test_past_the_cap_a_connection_is_answered_503_and_the_next_after_a_close_is_served(
    ingress_port: tuple[int, aiohttp.web.AppRunner],
) -> None:
    port, runner = ingress_port
    assert (await _answer(port)).startswith(b"HTTP/1.1 200")
    before = _refused("ingress")
    held = [await _held(port) for _ in range(3)]
    assert runner.server is not None
    await _until(lambda: len(runner.server.connections) == 3)  # type: ignore[union-attr]

    busy = await _answer(port, OTHER)
    assert busy == http_limits.BUSY
    assert busy.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in busy
    assert _refused("ingress") == before + 1

    held.pop().close()
    await _until(lambda: len(runner.server.connections) < 3)  # type: ignore[union-attr]
    assert (await _answer(port)).startswith(b"HTTP/1.1 200")
    for writer in held:
        writer.close()


@pytest.mark.asyncio
async def test_a_worker_faust_web_server_is_capped_too() -> None:
    """Faust's own aiohttp driver, as a worker serves with it (app.py limits the
    worker's: test_http_refusals_review.py), on a Faust app of this test's."""
    import faust

    port = free_port()
    app = faust.App("connection-cap-test", web_bind="127.0.0.1", web_port=port, env={})
    http_limits.limit_faust_web(app.web, 2)
    await app.web.start_server()
    try:
        held = [await _held(port) for _ in range(2)]
        server = app.web._runner.server
        await _until(lambda: len(server.connections) == 2)
        before = _refused("worker")
        assert await _answer(port, OTHER) == http_limits.BUSY
        assert _refused("worker") == before + 1
        for writer in held:
            writer.close()
    finally:
        await app.web._runner.cleanup()


@pytest.mark.asyncio
async def test_past_the_cap_probes_are_served_within_their_reserve_and_close(
    ingress_port: tuple[int, aiohttp.web.AppRunner],
) -> None:
    """A platform's probes share the port: a full cap failed them and the platform
    restarted healthy workers (review h64i). Past the cap a probe's GET is served and
    closed after its answer, while fewer than the reserve are open; a probe that sends
    no whole request head within the triage time, or any other request, gets the 503."""
    port, runner = ingress_port
    held = [await _held(port) for _ in range(3)]
    assert runner.server is not None
    await _until(lambda: len(runner.server.connections) == 3)  # type: ignore[union-attr]
    keep_alive = WHOLE.replace(b"Connection: close\r\n", b"Connection: keep-alive\r\n")
    for request in (WHOLE, keep_alive, WHOLE.replace(b"/healthz", b"/readyz")):
        got = await _answer(port, request)  # (read to its end: closed after the answer)
        assert not got.startswith(b"HTTP/1.1 503"), got
    assert await _answer(port, OTHER) == http_limits.BUSY
    assert await _answer(port, b"POST /healthz HTTP/1.1\r\nHost: x\r\n\r\n") == http_limits.BUSY
    # A probe path whose head never ends: refused once the triage time is up.
    assert await _answer(port, HALF_SENT) == http_limits.BUSY
    # The reserve: with as many probes open as it holds, a probe is refused too.
    probes = runner.server.probes  # type: ignore[attr-defined]
    stand_ins = [object() for _ in range(http_limits._PROBE_RESERVE)]
    probes.update(stand_ins)
    try:
        assert await _answer(port, WHOLE) == http_limits.BUSY
    finally:
        probes.difference_update(stand_ins)
    assert not (await _answer(port, WHOLE)).startswith(b"HTTP/1.1 503")
    for writer in held:
        writer.close()

"""The probe reserve past the connection cap (http_limits._Triage) serves probes only
(review h64k: an HTTP/1.0 keep-alive probe stayed open and served any request after it
past the cap; probes announcing a body held the reserve while aiohttp waited for it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp.web
import pytest

from paystream.devstack._process import free_port
from paystream.web import http_limits
from paystream.web.ingress_server import make_runner

HALF_SENT = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n"
KUBELET = b"GET /healthz HTTP/1.1\r\nHost: 10.0.0.7:6066\r\nConnection: close\r\n\r\n"
CAP = 2


@pytest.fixture
async def capped() -> AsyncIterator[tuple[int, aiohttp.web.AppRunner, list]]:
    app = aiohttp.web.Application()
    app.router.add_get("/healthz", lambda r: aiohttp.web.Response(text="ok"))

    async def commands(request: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.Response(text="served-past-the-cap")

    app.router.add_post("/v1/commands", commands)
    runner = make_runner(app, CAP)
    await runner.setup()
    port = free_port()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", port).start()
    held: list = []
    try:
        for _ in range(CAP):  # the cap is full: idle peers holding half-sent requests
            _r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(HALF_SENT)
            held.append(w)
        for _ in range(250):
            if len(runner.server.connections) == CAP:  # type: ignore[union-attr]
                break
            await asyncio.sleep(0.02)
        assert len(runner.server.connections) == CAP  # type: ignore[union-attr]
        yield port, runner, held
    finally:
        for w in held:
            w.close()
        await runner.cleanup()


async def _read_response(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await asyncio.wait_for(reader.readexactly(length), 5.0)


async def _kubelet_probe(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(KUBELET)
        return (await asyncio.wait_for(reader.read(), 5.0)).split(b"\r\n", 1)[0]
    finally:
        writer.close()


@pytest.mark.asyncio
async def test_an_http10_keep_alive_probe_is_closed_and_serves_nothing_else_past_the_cap(
    capped: tuple[int, aiohttp.web.AppRunner, list],
) -> None:
    """An injected 'Connection: close' lost to the client's own 'Connection: keep-alive'
    on HTTP/1.0 (llhttp: keep-alive is what counts for 1.0): the probe's connection was
    kept, and any request on it was served past the cap. The client's own Connection
    lines are dropped now."""
    port, _runner, _held = capped
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        first = await _read_response(reader)
        assert first.startswith(b"HTTP/1.0 200")
        writer.write(
            b"POST /v1/commands HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
        )
        try:
            second = await asyncio.wait_for(reader.read(65536), 3.0)
        except TimeoutError:
            second = b""
        # Closed after its answer, as the reserve promises: nothing more is served.
        assert b"served-past-the-cap" not in second, second
    finally:
        writer.close()


@pytest.mark.asyncio
async def test_answered_http10_keep_alive_probes_do_not_hold_the_reserve(
    capped: tuple[int, aiohttp.web.AppRunner, list],
) -> None:
    """8 answered probes kept alive (75 s each, renewed by any request) filled the
    reserve, and the kubelet's probe was refused again."""
    port, _runner, held = capped
    for _ in range(http_limits._PROBE_RESERVE):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert (await _read_response(reader)).startswith(b"HTTP/1.0 200")
        held.append(writer)
    assert await _kubelet_probe(port) == b"HTTP/1.1 200 OK"


@pytest.mark.asyncio
async def test_probes_announcing_a_body_are_refused_and_hold_no_reserve(
    capped: tuple[int, aiohttp.web.AppRunner, list],
) -> None:
    """A probe GET with 'Content-Length: 1000' and no body was answered, then aiohttp
    lingered 10 s (lingering_time) reading the body before it closed: 8 of them, renewed
    every 10 s, kept the kubelet's probe refused. A head announcing a body is refused."""
    port, _runner, held = capped
    for _ in range(http_limits._PROBE_RESERVE):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        assert (await _read_response(reader)).startswith(b"HTTP/1.1 503")
        held.append(writer)
    assert await _kubelet_probe(port) == b"HTTP/1.1 200 OK"

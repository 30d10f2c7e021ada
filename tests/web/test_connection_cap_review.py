"""The connection cap (http_limits.py) as review h60c probed it: a burst of connects
within one loop turn stays within it; a refused peer that already sent its request still
reads the 503 (not a reset); idle keep-alive connections count; refusals leak nothing;
and on uvloop, the loop workers and the ingress run by default, a refusal is answered
without an error (an isinstance check on asyncio.Transport failed there)."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator

import aiohttp
import aiohttp.web
import pytest
import uvloop

from paystream.devstack._process import free_port
from paystream.web import http_limits
from paystream.web.ingress_server import make_runner

HALF_SENT = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n"
WHOLE = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
# Past the cap a probe's GET is still served (http_limits.PROBE_PATHS): any other request
# is answered 503.
OTHER = WHOLE.replace(b"/healthz", b"/v1/other")


async def _until(condition, seconds: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.02)


async def _serve(cap: int, app: aiohttp.web.Application | None = None):  # type: ignore[no-untyped-def]
    if app is None:
        app = aiohttp.web.Application()
        app.router.add_get("/healthz", lambda r: aiohttp.web.Response(text="ok"))
        app.router.add_post("/post", lambda r: aiohttp.web.Response(text="ok"))
    runner = make_runner(app, cap)
    await runner.setup()
    port = free_port()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", port).start()
    return port, runner


@pytest.fixture
async def capped() -> AsyncIterator[tuple[int, aiohttp.web.AppRunner]]:
    port, runner = await _serve(2)
    try:
        yield port, runner
    finally:
        await runner.cleanup()


# ---- 1. a burst of simultaneous connects -------------------------------------------


@pytest.mark.asyncio
async def test_a_burst_of_connects_stays_within_the_cap(
    capped: tuple[int, aiohttp.web.AppRunner],
) -> None:
    """50 peers connect at once (their SYNs all queued before the loop accepts any): the
    server should hold no more than PAYSTREAM_WEB_MAX_CONNECTIONS (2 here)."""
    port, runner = capped
    socks = []
    for _ in range(50):  # blocking connects: the kernel completes them from its backlog
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(HALF_SENT)
        socks.append(s)
    try:
        await asyncio.sleep(0.5)
        held = len(runner.server.connections)  # type: ignore[union-attr]
        assert held <= 2, f"{held} connections held past a cap of 2"
    finally:
        for s in socks:
            s.close()


# ---- 2. the 503 to a client that already sent its request --------------------------


async def _fill(port: int, n: int) -> list[asyncio.StreamWriter]:
    held = []
    for _ in range(n):
        _r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(HALF_SENT)
        await w.drain()
        held.append(w)
    return held


@pytest.mark.asyncio
async def test_a_client_posting_a_body_over_the_cap_gets_the_503_not_a_reset(
    capped: tuple[int, aiohttp.web.AppRunner],
) -> None:
    """A command POSTed (a 256 KiB body) to a server at its cap: the client should read
    the 503 (Retry-After: the command was not taken), not a connection reset."""
    port, runner = capped
    held = await _fill(port, 2)
    await _until(lambda: len(runner.server.connections) == 2)  # type: ignore[union-attr]
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"http://127.0.0.1:{port}/post", data=b"x" * (256 * 1024)) as resp,
        ):
            assert resp.status == 503
    finally:
        for w in held:
            w.close()


@pytest.mark.asyncio
async def test_a_small_request_already_sent_still_reads_the_503(
    capped: tuple[int, aiohttp.web.AppRunner],
) -> None:
    port, runner = capped
    held = await _fill(port, 2)
    await _until(lambda: len(runner.server.connections) == 2)  # type: ignore[union-attr]
    try:
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(OTHER)  # before the server accepts
        await asyncio.sleep(0.3)
        s.settimeout(2)
        got = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        s.close()
        assert got == http_limits.BUSY
    finally:
        for w in held:
            w.close()


# ---- 3. keep-alive connections idle at the cap are counted --------------------------


@pytest.mark.asyncio
async def test_idle_keep_alive_connections_are_counted(
    capped: tuple[int, aiohttp.web.AppRunner],
) -> None:
    port, runner = capped
    idle = []
    for _ in range(2):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")  # keep-alive
        await w.drain()
        assert (await r.readuntil(b"ok")).startswith(b"HTTP/1.1 200")
        idle.append(w)
    await _until(lambda: len(runner.server.connections) == 2)  # type: ignore[union-attr]
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(OTHER)
    assert await asyncio.wait_for(r.read(), 5) == http_limits.BUSY
    w.close()
    for w in idle:
        w.close()


# ---- 4. refused connections leak nothing -------------------------------------------


@pytest.mark.asyncio
async def test_refused_connections_leak_no_fd_and_no_task(
    capped: tuple[int, aiohttp.web.AppRunner],
) -> None:
    port, runner = capped
    held = await _fill(port, 2)
    await _until(lambda: len(runner.server.connections) == 2)  # type: ignore[union-attr]
    await asyncio.sleep(0.1)
    fds = len(os.listdir("/proc/self/fd"))
    tasks = len(asyncio.all_tasks())
    for _ in range(100):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(OTHER)
        assert await asyncio.wait_for(r.read(), 5) == http_limits.BUSY
        w.close()
        await w.wait_closed()
    await asyncio.sleep(0.2)
    assert len(os.listdir("/proc/self/fd")) <= fds + 2
    assert len(asyncio.all_tasks()) <= tasks + 1
    assert len(runner.server.connections) == 2  # type: ignore[union-attr]
    for w in held:
        w.close()


# ---- 5. uvloop ---------------------------------------------------------------------


def test_on_uvloop_a_connection_over_the_cap_is_answered_503_without_an_error() -> None:
    errors: list[str] = []  # (reprs only: a kept context would keep the transport open)

    async def main() -> bytes:
        asyncio.get_running_loop().set_exception_handler(
            lambda loop, ctx: errors.append(repr(ctx.get("exception")))
        )
        app = aiohttp.web.Application()
        app.router.add_get("/healthz", lambda r: aiohttp.web.Response(text="ok"))
        runner = make_runner(app, 1)
        await runner.setup()
        port = free_port()
        await aiohttp.web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            _r, held = await asyncio.open_connection("127.0.0.1", port)
            held.write(HALF_SENT)
            await held.drain()
            while len(runner.server.connections) < 1:  # type: ignore[union-attr]
                await asyncio.sleep(0.02)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(OTHER)
            answer = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            held.close()
            return answer
        finally:
            await runner.cleanup()

    answer = uvloop.run(main())
    assert errors == []
    assert answer == http_limits.BUSY

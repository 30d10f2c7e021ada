"""A request body read with bounds on its size and its time, on a real aiohttp server."""

from __future__ import annotations

import asyncio
import gzip
import socket
from collections.abc import AsyncIterator

import aiohttp
import aiohttp.web
import pytest
import pytest_asyncio

from paystream.web.bodies import BodyTooLarge, BodyTooSlow, BodyUnreadable, read_body

LIMIT = 1024
SECONDS = 0.5


async def _handler(request: aiohttp.web.Request) -> aiohttp.web.Response:
    try:
        body = await read_body(request, LIMIT, SECONDS)
    except BodyTooLarge:
        return aiohttp.web.Response(status=413)
    except BodyTooSlow:
        return aiohttp.web.Response(status=408)
    except BodyUnreadable:
        return aiohttp.web.Response(status=400)
    return aiohttp.web.Response(body=body)


@pytest_asyncio.fixture
async def url() -> AsyncIterator[str]:
    app = aiohttp.web.Application()
    app.router.add_post("/", _handler)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    yield f"http://127.0.0.1:{port}/"
    await runner.cleanup()


async def _post(url: str, data: object, headers: dict[str, str] | None = None) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=data, headers=headers) as resp,
    ):
        await resp.read()
        return resp.status


async def test_a_body_within_the_limit_is_read_whole(url: str) -> None:
    async with aiohttp.ClientSession() as session, session.post(url, data=b"x" * LIMIT) as resp:
        assert (resp.status, await resp.read()) == (200, b"x" * LIMIT)


async def test_a_declared_length_over_the_limit_is_refused_unread(url: str) -> None:
    assert await _post(url, b"x" * (LIMIT + 1)) == 413


async def test_a_chunked_body_is_refused_once_past_the_limit(url: str) -> None:
    # No Content-Length to refuse it by: read until past the limit, never buffered whole.
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b"x" * 512

    assert await _post(url, chunks()) == 413


async def test_a_trickled_body_is_given_up_on(url: str) -> None:
    async def trickle() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"x"
            await asyncio.sleep(0.1)

    assert await _post(url, trickle()) == 408


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_body_its_encoding_does_not_decode_is_unreadable(url: str, encoding: str) -> None:
    assert await _post(url, b"not compressed", {"Content-Encoding": encoding}) == 400


async def test_an_encoded_body_is_read_decoded(url: str) -> None:
    headers = {"Content-Encoding": "gzip"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=gzip.compress(b"{}"), headers=headers) as resp,
    ):
        assert (resp.status, await resp.read()) == (200, b"{}")

"""A request aiohttp's parser refuses is logged as one throttled line naming its error's
class: never the message, which quotes the offending header (a Cookie header holding the
operators' token), nor a traceback per request (review finding)."""

from __future__ import annotations

import logging
import sys

import pytest
from aiohttp.http_exceptions import LineTooLong

from paystream.web import bad_requests


def _refused_record(exc: BaseException) -> logging.LogRecord:
    try:
        raise exc
    except BaseException:
        return logging.LogRecord(
            "aiohttp.server", logging.ERROR, __file__, 1, "Error handling request from %s",
            ("127.0.0.1",), sys.exc_info(),
        )  # fmt: skip


def test_a_refused_request_is_one_line_without_its_header(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log_filter = bad_requests.BadRequestLog()
    leak = LineTooLong(b"paystream_token=s3cret; grafana_session=xxxx", 8190)
    with caplog.at_level(logging.WARNING, logger=bad_requests.log.name):
        kept = [log_filter.filter(_refused_record(leak)) for _ in range(200)]
    assert not any(kept)  # aiohttp's own record, message and traceback, is dropped
    # (Its own logger's records: another test's producer, collected now, logs too.)
    mine = [r for r in caplog.records if r.name == bad_requests.log.name]
    assert [r.getMessage() for r in mine] == ["refused a malformed HTTP request (LineTooLong)"]
    other = _refused_record(RuntimeError("a handler's bug"))
    assert log_filter.filter(other)  # anything else aiohttp logs is left alone


def test_it_is_installed_once_on_aiohttps_server_logger() -> None:
    server = logging.getLogger("aiohttp.server")
    bad_requests.install()
    bad_requests.install()
    assert sum(isinstance(f, bad_requests.BadRequestLog) for f in server.filters) == 1


async def test_the_answer_quotes_nothing_of_the_request() -> None:
    """The parser's 400 quoted the offending line back: an Authorization key or the token
    cookie with it, for any proxy that records responses (security review finding)."""
    import asyncio

    import aiohttp.web
    from aiohttp.web_protocol import RequestHandler

    bad_requests.install()
    bad_requests.install()
    assert not getattr(
        getattr(RequestHandler.handle_error, "__wrapped__", None), "paystream_without_echo", False
    )  # wrapped once, not twice
    app = aiohttp.web.Application()

    async def fails(_request: aiohttp.web.Request) -> aiohttp.web.Response:
        raise RuntimeError("a handler's bug")

    app.router.add_get("/fails", fails)
    runner = aiohttp.web.AppRunner(app, access_log=None)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def answer(request: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        await writer.drain()
        answered = await reader.read()
        writer.close()
        return answered

    try:
        for request in (
            b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\x01key\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nCookie: a=" + b"x" * 9000 + b"s3cret\r\n\r\n",
        ):
            head, _, body = (await answer(request)).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.0 400 ") and b"application/json" in head, head
            assert body.decode() == bad_requests.REFUSAL
        # A handler's failure is still aiohttp's plain 500, with nothing of the request.
        head, _, body = (
            await answer(b"GET /fails HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        ).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 500 ") and b"Server Error" in body, (head, body)
    finally:
        await runner.cleanup()

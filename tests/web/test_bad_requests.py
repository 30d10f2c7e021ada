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

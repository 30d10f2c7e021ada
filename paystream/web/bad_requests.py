"""Malformed HTTP requests to a worker's web port: one throttled line, not a traceback.

aiohttp logs each request its parser refuses (a line or header over 8 KiB, a control
character) at ERROR with a traceback whose message quotes the offending line or header.
A browser sends every cookie of a host in one Cookie header, whatever the port: next to
a large one of another local service, ours (the operators' token) was written to the
log. And anyone reaching the port could write a traceback per request.

The 400 answer quoted the same line back to the client, an ``Authorization`` key or the
token cookie with it, for any proxy that records responses to keep: it says only what
was wrong now, in JSON as the routes' own errors.
"""

from __future__ import annotations

import functools
import json
import logging
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from paystream.log_limits import ThrottledLog

__all__ = ["REFUSAL", "BadRequestLog", "install"]

log = logging.getLogger(__name__)


class BadRequestLog(logging.Filter):
    """Drops aiohttp's record of a refused request; logs its error's class, at most once
    a minute per class, never its message."""

    def __init__(self) -> None:
        super().__init__()
        self._throttled = ThrottledLog(log)

    def filter(self, record: logging.LogRecord) -> bool:
        exc = _refusal(record.exc_info[1] if record.exc_info else None)
        if exc is None:
            return True
        kind = type(exc).__name__
        self._throttled.warning(kind, "refused a malformed HTTP request (%s)", kind)
        return False


def _refusal(exc: BaseException | None) -> BaseException | None:
    """The parser's refusal behind ``exc``: itself, or one it was raised from. A body that
    does not decompress is found only when aiohttp drains an unread body after the answer
    (a 401 sent before it was read), as a RequestPayloadError raised from the parser's
    ContentEncodingError, logged as "Unhandled exception" with three tracebacks: anyone,
    without a key, wrote three per request (review h60h)."""
    seen = 0
    while exc is not None and seen < 8:  # (a chain is short; a cycle is not followed)
        if isinstance(exc, HttpProcessingError):
            return exc
        # Causes only: an error raised while handling a refusal (its context) is a bug
        # of its own, whose traceback must be logged (review h60l).
        exc = exc.__cause__
        seen += 1
    return None


# The body of every answer to a request the parser refused, whatever it was.
REFUSAL = json.dumps(
    {"error": "bad_request", "message": "malformed HTTP request (a line, header or size)"}
)


def _without_echo(handle_error: Any) -> Any:
    """aiohttp passes a message only for the parser's refusals (it quotes the request);
    its 500 and 504 answers, without one, are left as they are."""

    @functools.wraps(handle_error)
    def answer(self: RequestHandler, request: Any, status: int = 500, exc: Any = None,
               message: str | None = None) -> Any:  # fmt: skip
        if message is None:
            return handle_error(self, request, status, exc, message)
        response = handle_error(self, request, status, exc, REFUSAL)
        response.content_type = "application/json"
        return response

    answer.paystream_without_echo = True  # type: ignore[attr-defined]
    return answer


def install() -> None:
    """On aiohttp's server logger and its request handler, once."""
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, BadRequestLog) for f in server.filters):
        server.addFilter(BadRequestLog())
    if not getattr(RequestHandler.handle_error, "paystream_without_echo", False):
        RequestHandler.handle_error = _without_echo(RequestHandler.handle_error)  # type: ignore[method-assign]

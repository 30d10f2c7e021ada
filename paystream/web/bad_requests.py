"""Malformed HTTP requests to a worker's web port: one throttled line, not a traceback.

aiohttp logs each request its parser refuses (a line or header over 8 KiB, a control
character) at ERROR with a traceback whose message quotes the offending line or header.
A browser sends every cookie of a host in one Cookie header, whatever the port: next to
a large one of another local service, ours (the operators' token) was written to the
log. And anyone reaching the port could write a traceback per request.
"""

from __future__ import annotations

import logging

from aiohttp.http_exceptions import HttpProcessingError

from paystream.log_limits import ThrottledLog

__all__ = ["BadRequestLog", "install"]

log = logging.getLogger(__name__)


class BadRequestLog(logging.Filter):
    """Drops aiohttp's record of a refused request; logs its error's class, at most once
    a minute per class, never its message."""

    def __init__(self) -> None:
        super().__init__()
        self._throttled = ThrottledLog(log)

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        kind = type(exc).__name__
        self._throttled.warning(kind, "refused a malformed HTTP request (%s)", kind)
        return False


def install() -> None:
    """On aiohttp's server logger, once."""
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, BadRequestLog) for f in server.filters):
        server.addFilter(BadRequestLog())

"""Limits on what a connection to either web server (a worker's Faust web, `paystream
ingress`) may hold before its request is read, and on how many may be open at once.

aiohttp's defaults keep a connection that has sent part of its request headers open for
an hour (``keepalive_timeout`` 3630 s, counted from the connection's start while no
request is read) and let it hold 128 header lines of 8 KiB: a peer with no credential
held ~1 MiB a connection, 188 MiB for 100 of them (review finding). An idle or
half-sent connection now goes after 75 s (longer than the usual proxy's idle timeout, so
that a proxy reusing a connection does not find it closed under it), with at most 64
header lines.

aiohttp also accepts connections without limit: a peer opening thousands of half-sent
ones (each up to ~512 KiB of headers for 75 s) could take a worker's memory, and with it
its tables and its Kafka connections. Past ``PAYSTREAM_WEB_MAX_CONNECTIONS`` open
connections a new one is answered 503 and closed unread; a proxy or load balancer in
front (the chart's Ingress) still does the finer work of limiting each client.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp.web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

from paystream import metrics
from paystream.log_limits import ThrottledLog

__all__ = ["BUSY", "HANDLER_LIMITS", "CappedRunner", "limit_faust_web"]

log = logging.getLogger(__name__)

HANDLER_LIMITS: dict[str, Any] = {"keepalive_timeout": 75.0, "max_headers": 64}

_BUSY_BODY = json.dumps(
    {"error": "unavailable", "message": "this server has too many open connections; retry"}
).encode()
# The whole answer to a connection over the cap, written before anything is read.
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n"
    b"Content-Length: " + str(len(_BUSY_BODY)).encode() + b"\r\n\r\n" + _BUSY_BODY
)

_throttled = ThrottledLog(log)


class _Busy(asyncio.Protocol):
    """A connection over the cap: answered 503 at once and closed; what it sends is
    never parsed (close() still flushes the answer)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(BUSY)
        transport.close()


class _CappedServer(Server):
    """aiohttp's server, making a request handler only while fewer than
    ``max_connections`` are open. It counts connections as aiohttp does (from a
    handler's connection_made until its last request is done), so a burst of accepts
    within one loop turn may pass the cap by that burst."""

    max_connections: int
    server_name: str

    def __call__(self) -> RequestHandler:
        if len(self._connections) < self.max_connections:
            return super().__call__()
        metrics.HTTP_CONNECTIONS_REFUSED.labels(self.server_name).inc()
        _throttled.warning(
            self.server_name,
            "%s web server: %d connections open, the most PAYSTREAM_WEB_MAX_CONNECTIONS "
            "allows: new ones are answered 503",
            self.server_name,
            self.max_connections,
        )
        return _Busy()  # type: ignore[return-value]  # any protocol will do for asyncio


class CappedRunner(aiohttp.web.AppRunner):
    """An AppRunner whose server refuses connections past ``max_connections``."""

    def __init__(
        self,
        app: aiohttp.web.Application,
        *,
        max_connections: int,
        server_name: str,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self._max_connections = max_connections
        self._server_name = server_name

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        # aiohttp takes no server class or protocol factory of ours (the application
        # builds its Server), so the one it built is given the cap's subclass: same
        # layout, one method more.
        server.__class__ = _CappedServer
        assert isinstance(server, _CappedServer)
        server.max_connections = self._max_connections
        server.server_name = self._server_name
        return server


def limit_faust_web(web: Any, max_connections: int) -> None:
    """Give a Faust web driver the limits, before it starts: Faust makes its aiohttp
    runner with aiohttp's defaults and takes no options for it, so the runner is
    replaced by a capped one made as Faust makes its own."""
    web._runner = CappedRunner(
        web.web_app,
        access_log=None,
        max_connections=max_connections,
        server_name="worker",
        **HANDLER_LIMITS,
    )

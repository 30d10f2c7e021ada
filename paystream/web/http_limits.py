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
connections a new one is answered 503 and closed, what it sent never parsed; a proxy
or load balancer in front (the chart's Ingress) still does the finer work of limiting
each client. But its request head is read first (a few KiB, within seconds): a
platform's liveness and readiness probes share the port, and a GET of /healthz or
/readyz is served past the cap, within a reserve of its own (``_Triage``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, cast

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


# A refused connection's peer may have sent its request already: closed with it unread,
# the kernel resets the connection and the peer never reads the 503. So the answer is
# followed by a FIN, and what the peer sends is read and dropped for a while before the
# close ("lingering close", as HTTP servers do), within these bounds.
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 64 * 1024
_LINGER_MAX = 1024  # refused connections lingering at once (per process); others just close


class _Busy(asyncio.Protocol):
    """A connection over the cap: answered 503 at once, what it sends never parsed."""

    lingering = 0  # across all servers of the process

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._left = _LINGER_BYTES
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses, but are ones.)
        tcp = cast(asyncio.Transport, transport)
        tcp.write(BUSY)
        if _Busy.lingering >= _LINGER_MAX or not tcp.can_write_eof():
            tcp.close()  # (flushes the answer first)
            return
        self._transport = tcp
        _Busy.lingering += 1
        tcp.write_eof()
        self._timer = asyncio.get_running_loop().call_later(_LINGER_SECONDS, tcp.close)

    def data_received(self, data: bytes) -> None:
        self._left -= len(data)
        if self._left < 0 and self._transport is not None:
            self._transport.close()

    def eof_received(self) -> bool:
        return False  # the peer is done: close

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._transport is not None:
            self._transport = None
            _Busy.lingering -= 1


# Past the cap, a platform's liveness and readiness probes are still served: they share
# the port with every client, and a full cap (a flood of idle connections, or senders
# waiting on their outcomes) failed them, and the platform restarted healthy workers
# (review h64i). A connection over the cap has its request head read (within the bounds
# below); a GET of a probe path is served, closed after its answer, while fewer than
# _PROBE_RESERVE are; anything else is answered 503.
PROBE_PATHS = frozenset({b"/healthz", b"/readyz"})
_PROBE_RESERVE = 8
_TRIAGE_SECONDS = 2.0
_TRIAGE_BYTES = 4096
_TRIAGE_MAX = 1024  # over-cap connections read at once (per process); others refused
# Header lines no probe's GET carries (a body, a switch of protocol): such a head is
# refused. (Content-Length: 0 passes.)
_PROBE_REFUSED = frozenset({b"content-length", b"transfer-encoding", b"upgrade", b"expect"})


class _Triage(asyncio.Protocol):
    """A connection over the cap, until its request head says whether it is a probe."""

    open = 0  # across all servers of the process

    def __init__(self, server: _CappedServer) -> None:
        self._server = server
        self._head = b""
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        _Triage.open += 1
        self._timer = asyncio.get_running_loop().call_later(_TRIAGE_SECONDS, self._refuse)

    def data_received(self, data: bytes) -> None:
        if self._transport is None:
            return
        self._head += data
        if b"\r\n\r\n" not in self._head:
            if len(self._head) > _TRIAGE_BYTES:
                self._refuse()
            return
        head = self._probe_head()
        if head is not None and len(self._server.probes) < _PROBE_RESERVE:
            self._serve(head)
        else:
            self._refuse()

    def _probe_head(self) -> bytes | None:
        """The request head to serve if it is a probe's, made to close after its answer:
        its own Connection and Keep-Alive lines dropped (an HTTP/1.0 keep-alive kept the
        connection, and any request after it was served past the cap; review h64k), and
        what follows the head dropped too. None for anything else: another method or
        path, a body announced (its wait held a reserve slot; review h64k), an upgrade,
        a folded or malformed header line."""
        raw = self._head.partition(b"\r\n\r\n")[0]
        line, *headers = raw.split(b"\r\n")
        method, _, rest = line.partition(b" ")
        target, _, version = rest.partition(b" ")
        if method != b"GET" or target.partition(b"?")[0] not in PROBE_PATHS:
            return None
        if version not in (b"HTTP/1.0", b"HTTP/1.1"):
            return None
        kept = [line]
        for header in headers:
            name, colon, value = header.partition(b":")
            name = name.lower()
            if not colon or not name or name != name.strip() or header[:1] in b" \t":
                return None
            if name in _PROBE_REFUSED and (name != b"content-length" or value.strip() != b"0"):
                return None
            if name not in (b"connection", b"keep-alive"):
                kept.append(header)
        return b"\r\n".join([*kept, b"Connection: close", b"", b""])

    def _release(self) -> asyncio.Transport | None:
        transport, self._transport = self._transport, None
        if transport is not None:
            _Triage.open -= 1
            if self._timer is not None:
                self._timer.cancel()
        return transport

    def _serve(self, head: bytes) -> None:
        transport = self._release()
        assert transport is not None
        handler = Server.__call__(self._server)  # (a handler of its own, past the cap)
        self._server.probes.add(handler)
        transport.set_protocol(handler)
        handler.connection_made(transport)
        handler.data_received(head)

    def _refuse(self) -> None:
        transport = self._release()
        if transport is None:
            return
        self._server.refused()
        busy = _Busy()
        transport.set_protocol(busy)
        busy.connection_made(transport)
        busy.data_received(self._head)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._release()


# A handler made but not yet connected is dropped from the count after this long (its
# connection_made never came: the peer went during a TLS handshake, say).
_PENDING_SECONDS = 10.0


class _CappedServer(Server):
    """aiohttp's server, making a request handler only while fewer than
    ``max_connections`` are open. aiohttp counts a connection from its handler's
    connection_made (until its last request is done); handlers made but not yet
    connected are counted too, or every accept of one loop turn would pass the cap
    (review h60c: 50 of 50 past a cap of 2)."""

    max_connections: int
    server_name: str
    _pending: dict[RequestHandler, float]
    probes: set[RequestHandler]  # probes served past the cap, open

    def __call__(self) -> RequestHandler:
        now = time.monotonic()
        if self._pending:
            stale = [h for h, at in self._pending.items() if now - at > _PENDING_SECONDS]
            for handler in stale:
                del self._pending[handler]
        # (Probes served past the cap take no client's place.)
        probes = sum(1 for handler in self.probes if handler in self._connections)
        open_ = len(self._connections) - probes + len(self._pending)
        if open_ < self.max_connections:
            handler = super().__call__()
            self._pending[handler] = now
            return handler
        if _Triage.open >= _TRIAGE_MAX:
            self.refused()
            return _Busy()  # type: ignore[return-value]  # any protocol will do for asyncio
        return _Triage(self)  # type: ignore[return-value]

    def refused(self) -> None:
        """Count and say (once a minute) a connection answered 503."""
        metrics.HTTP_CONNECTIONS_REFUSED.labels(self.server_name).inc()
        _throttled.warning(
            self.server_name,
            "%s web server: %d connections open, the most PAYSTREAM_WEB_MAX_CONNECTIONS "
            "allows: new ones are answered 503",
            self.server_name,
            self.max_connections,
        )

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        self._pending.pop(handler, None)
        super().connection_made(handler, transport)

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        super().connection_lost(handler, exc)
        self.probes.discard(handler)


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
        server._pending = {}
        server.probes = set()
        # The series exists from the start at 0: an alert's increase() sees a first refusal.
        metrics.HTTP_CONNECTIONS_REFUSED.labels(self._server_name)
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

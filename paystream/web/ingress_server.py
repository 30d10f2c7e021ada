"""`paystream ingress`: ``POST /v1/commands`` in a process of its own.

A worker serves the same route beside its views (web/ingress_route.py), on the core
that runs its pipeline: each request there costs the worker more than the command it
carries (`paystream bench`'s ingress phases). This process does the HTTP side alone:
it reads the tenant registry (for tenant keys), produces each command with a producer
of its own, and reads the events topic for waiting senders, so it scales on request
rate apart from the workers (a Deployment of its own in the Helm chart) and leaves
their cores to the pipeline. It holds no state: any number run side by side.

Routes, as a worker's: ``POST /v1/commands``; ``GET /healthz``, alive (200 while it
serves; a broker outage is no reason to restart it); ``GET /readyz``, ready (200 once
the tenant registry is read, the producer connected, and the brokers answer now: a load
balancer sends no request to an instance that would answer 503); ``GET /metrics``.
A background part that dies (the registry's reader) ends the process with status 1, so
its supervisor starts a fresh one rather than leave it serving on a frozen registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any

import aiohttp.web
from aiokafka import AIOKafkaProducer
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.metrics_core import Metric

from paystream import log_limits, metrics
from paystream.errors import PaystreamError
from paystream.settings import Settings, is_loopback, weak_token_warnings
from paystream.streams import broker_compat, record_batches
from paystream.streams.admin import bootstrap_servers
from paystream.streams.codec import KafkaRecord
from paystream.streams.kafka_auth import client_auth
from paystream.tenancy.mirror import RegistryMirror
from paystream.tenancy.models import UNREGISTERED
from paystream.web import bad_requests
from paystream.web.bearer import bearer, matches
from paystream.web.hosts import host_allowed, host_well_formed
from paystream.web.http_limits import HANDLER_LIMITS, CappedRunner
from paystream.web.ingress import IDLE_READER_SECONDS, CommandIngress
from paystream.web.outcome_waits import OutcomeWaits
from paystream.web.produce import NotProduced, acknowledged
from paystream.web.route_errors import json_route_errors, name_the_server

__all__ = ["IngressServer", "serve"]

log = logging.getLogger(__name__)

# How often an idle outcome reader is looked at (it stops after IDLE_READER_SECONDS).
_IDLE_CHECK_SECONDS = 60.0
# How often the throttled warnings' held-back counts are written (log_limits.py).
_FLUSH_SECONDS = 1.0
# In-flight requests get this long to finish once the process is told to stop (waiting
# senders are answered 202 at once).
SHUTDOWN_GRACE_SECONDS = 15.0
# /readyz asks the brokers for metadata, answered within this, and remembers a success
# this long (probes of several load balancers cost one request).
BROKER_CHECK_SECONDS = 2.0
BROKER_CHECK_FRESH_SECONDS = 1.0


class IngressServer:
    """The ingress's parts and their lifecycle, as an aiohttp application."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = RegistryMirror(settings)
        self.waits = OutcomeWaits(settings)
        self.ingress = CommandIngress(settings, self.registry, self._produce, self.waits)
        # Set when a background part ended that should run for the process's life.
        self.failed = asyncio.Event()
        self._producer: AIOKafkaProducer | None = None
        self._registry_task: asyncio.Task[None] | None = None
        self._producer_task: asyncio.Task[None] | None = None
        self._idle_task: asyncio.Task[None] | None = None
        self._flush_task: asyncio.Task[None] | None = None
        self._brokers_answered_at: float | None = None
        # Requests being handled, and whether the process is stopping (new requests are
        # then refused 503, "not taken", while those in flight finish).
        self.in_flight = 0
        self.stopping = False
        self._drained = asyncio.Event()
        self._drained.set()

    def app(self) -> aiohttp.web.Application:
        app = aiohttp.web.Application(middlewares=[self._tracked])
        app.router.add_post("/v1/commands", self.ingress.handle, expect_handler=self._expect)
        app.router.add_get("/healthz", self._alive)
        app.router.add_get("/readyz", self._ready)
        app.router.add_get("/metrics", self._metrics)
        app.cleanup_ctx.append(self._running)
        # Before the server waits out in-flight requests: a sender waiting for its
        # outcome is answered 202 now, not held to the end of its wait.
        app.on_shutdown.append(self._stop_waits)
        return app

    async def _stop_waits(self, _app: aiohttp.web.Application) -> None:
        await self.waits.stop()

    @aiohttp.web.middleware
    async def _tracked(
        self,
        request: aiohttp.web.Request,
        handler: Callable[[aiohttp.web.Request], Awaitable[aiohttp.web.StreamResponse]],
    ) -> aiohttp.web.StreamResponse:
        if self.stopping and request.path == "/v1/commands":
            # (On a kept-alive connection, after the listener closed.)
            return _stopping()
        self.in_flight += 1
        self._drained.clear()
        try:
            return await json_route_errors(request, handler)
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self._drained.set()

    async def _expect(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse | None:
        """``Expect: 100-continue``: while stopping, refused before the body as the
        request itself would be (aiohttp asks this before the middlewares run)."""
        if self.stopping:
            return _stopping()
        return await self.ingress.expect(request)

    async def drain(self, grace: float) -> None:
        """Stop taking requests; answer the waiting senders 202 now; give the requests in
        flight (a body still arriving among them) up to ``grace`` seconds."""
        self.stopping = True
        await self.waits.stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), grace)

    async def _running(self, _app: aiohttp.web.Application) -> AsyncIterator[None]:
        settings = self.settings
        broker_compat.apply(settings)  # (the development broker's quirks, as a worker's)
        record_batches.install(settings)  # (its outcome and registry readers, as a worker's)
        # As the worker's producer sends commands: every replica's acknowledgement, a
        # millisecond's linger so concurrent requests share a produce request.
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers(settings.require_broker()),
            **client_auth(settings),
            acks="all",
            linger_ms=1,
            request_timeout_ms=int(settings.producer_request_timeout_seconds * 1000),
        )
        self._registry_task = self._supervised(self.registry.run(), "the tenant registry reader")
        self._producer_task = self._supervised(self._producer_started(), "", ends=True)
        self._idle_task = self._supervised(self._stop_idle_reader(), "the idle reader check")
        self._flush_task = self._supervised(_write_held_back_counts(), "the held-back counts")
        tasks = (self._registry_task, self._producer_task, self._idle_task, self._flush_task)
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.waits.stop()
            await self._producer.stop()

    def _supervised(
        self, work: Coroutine[Any, Any, None], what: str, *, ends: bool = False
    ) -> asyncio.Task[None]:
        """A background task whose failure (or end, unless it ``ends``) fails the process."""
        task = asyncio.create_task(work)

        def done(task: asyncio.Task[None]) -> None:
            if task.cancelled():
                return
            exc = task.exception()
            if exc is None and ends:
                return
            log.error("ingress: %s stopped; exiting", what or "a background task", exc_info=exc)
            self.failed.set()

        task.add_done_callback(done)
        return task

    async def _producer_started(self) -> None:
        """Connect the producer, retrying while the broker is away (the registry's reader
        does the same): the process answers 503 meanwhile, it does not exit."""
        assert self._producer is not None
        while True:
            try:
                await self._producer.start()
                return
            except Exception as exc:
                log.warning("ingress: the producer did not connect (%s); retrying", exc)
                await asyncio.sleep(2)

    async def _stop_idle_reader(self) -> None:
        while True:
            await asyncio.sleep(_IDLE_CHECK_SECONDS)
            await self.waits.stop_if_idle(IDLE_READER_SECONDS)

    @property
    def producer_connected(self) -> bool:
        task = self._producer_task
        return task is not None and task.done() and not task.cancelled()

    async def brokers_answer(self) -> bool:
        """Do the brokers answer a metadata request now (within BROKER_CHECK_SECONDS)?"""
        producer = self._producer
        if producer is None or not self.producer_connected:
            return False
        loop = asyncio.get_running_loop()
        answered = self._brokers_answered_at
        if answered is not None and loop.time() - answered < BROKER_CHECK_FRESH_SECONDS:
            return True
        try:
            async with asyncio.timeout(BROKER_CHECK_SECONDS):
                await producer.client.fetch_all_metadata()
        except Exception:
            return False
        self._brokers_answered_at = loop.time()
        return True

    async def ready(self) -> bool:
        """The registry read (and still followed), the producer connected, the brokers
        answering, and not stopping."""
        if self.stopping:
            return False
        following = self._registry_task is not None and not self._registry_task.done()
        if not (following and self.registry.ready.is_set()):
            return False
        return await self.brokers_answer()

    async def _produce(self, rec: KafkaRecord, tenant: str) -> None:
        producer = self._producer
        if producer is None or not self.producer_connected:
            raise NotProduced("the producer is not connected yet", maybe_taken=False)
        await acknowledged(
            lambda: producer.send(
                self.settings.commands_topic, rec.value, key=rec.key, headers=list(rec.headers)
            ),
            tenant,
            "ingress",
        )

    async def _alive(self, _request: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response({"alive": True})

    async def _ready(self, _request: aiohttp.web.Request) -> aiohttp.web.Response:
        if await self.ready():
            return aiohttp.web.json_response({"ready": True})
        return aiohttp.web.json_response(
            {
                "ready": False,
                "registry_loaded": self.registry.ready.is_set(),
                "producer_connected": self.producer_connected,
            },
            status=503,
        )

    async def _metrics(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        # It lists every tenant with its request counts: with PAYSTREAM_METRICS_TOKEN set,
        # for its bearer only; without, as a worker without a token answers (a web page
        # re-pointing its own domain at this port, DNS rebinding, must not read them).
        host = request.headers.get("Host")
        if not host_well_formed(host):
            return aiohttp.web.json_response(
                {"error": "bad_host", "message": "the Host header is not a host[:port]"},
                status=400,
            )
        token = self.settings.metrics_token
        if token is not None:
            if not matches(bearer(request.headers), token):
                return aiohttp.web.json_response(
                    {"error": "unauthorized", "message": "PAYSTREAM_METRICS_TOKEN required"},
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="paystream"'},
                )
        elif not host_allowed(host, self.settings.web_host_names() | {self.settings.ingress_host}):
            return aiohttp.web.json_response(
                {
                    "error": "host_not_allowed",
                    "message": "without PAYSTREAM_METRICS_TOKEN this ingress answers only "
                    "addresses, localhost, its own host and PAYSTREAM_WEB_ALLOWED_HOSTS",
                },
                status=403,
            )
        return aiohttp.web.Response(
            body=generate_latest(_OWN_METRICS),
            headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"},
        )


class _OwnMetrics:
    """The metrics this process keeps: its requests, its refused connections and the
    process's own (the workers' families, defined on import, would be exported as zeros
    beside a worker's). Refused connections are a shared family, labelled by server:
    PaystreamWebConnectionsRefused reads it from both (review h61a: the ingress's went
    unexported, so the alert could not fire for the public server)."""

    PREFIXES = ("paystream_ingress_", "paystream_http_connections_refused", "process_", "python_")

    def collect(self) -> Iterator[Metric]:
        for family in REGISTRY.collect():
            if family.name.startswith(self.PREFIXES):
                yield family


_OWN_METRICS = _OwnMetrics()


def configure_logging(log_level: str) -> None:
    """Timestamped lines on stderr at the configured level; aiokafka (which logs record
    values, commands' data among them, at DEBUG) never below INFO; aiohttp's refused
    requests one throttled line each (bad_requests)."""
    level = logging.getLevelName(log_level.upper().replace("WARN", "WARNING"))
    logging.basicConfig(
        level=level, format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"
    )
    logging.getLogger("aiokafka").setLevel(max(logging.INFO, level))
    bad_requests.install()


def make_runner(app: aiohttp.web.Application, max_connections: int) -> aiohttp.web.AppRunner:
    """The server's runner: no access log (requests are logged as refused or not at
    all), and the connection limits both web servers take (http_limits.py)."""
    return CappedRunner(
        app,
        max_connections=max_connections,
        server_name="ingress",
        shutdown_timeout=SHUTDOWN_GRACE_SECONDS,
        access_log=None,
        **HANDLER_LIMITS,
    )


async def serve(settings: Settings, host: str, port: int) -> int:
    """Serve until SIGTERM or SIGINT (0), or a background part fails (1); in-flight
    requests then finish."""
    configure_logging(settings.log_level)
    name_the_server()
    server = IngressServer(settings)
    runner = make_runner(server.app(), settings.web_max_connections)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = aiohttp.web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise PaystreamError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
        log.info("ingress: serving POST /v1/commands on %s:%d", host, port)
        for warning in weak_token_warnings(settings):
            log.warning("ingress: %s", warning)
        if settings.metrics_token is None and not (settings.web_open or is_loopback(host)):
            log.warning(
                "ingress: /metrics lists every tenant's request counts to whoever reaches "
                "port %d: set PAYSTREAM_METRICS_TOKEN (and scrape with it), or "
                "PAYSTREAM_WEB_OPEN=true on a closed network",
                port,
            )
        stopped = asyncio.create_task(stop.wait())
        failed = asyncio.create_task(server.failed.wait())
        await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        failed.cancel()
        log.info("ingress: stopping, %d request(s) in flight", server.in_flight)
        # No new connection; then the requests in flight finish, bodies still arriving
        # included, before the server closes its connections.
        await site.stop()
        await server.drain(SHUTDOWN_GRACE_SECONDS)
        return 1 if server.failed.is_set() else 0
    finally:
        with contextlib.suppress(Exception):
            await runner.cleanup()


async def _write_held_back_counts() -> None:
    """Each throttled warning's count of the lines it held back (refused requests, not
    produced commands), once its minute has ended: also when its cause stopped."""
    while True:
        await asyncio.sleep(_FLUSH_SECONDS)
        log_limits.flush_all()


def _stopping() -> aiohttp.web.Response:
    """A command refused while the ingress stops: not taken, sent again to another (or
    this one restarted); counted as any 503, and the connection closed after it."""
    metrics.INGRESS.labels(UNREGISTERED, "unavailable").inc()
    answer = aiohttp.web.json_response(
        {
            "error": "unavailable",
            "message": "this ingress is stopping: the command was not taken; retry",
        },
        status=503,
        headers={"Retry-After": "1"},
    )
    answer.force_close()
    return answer

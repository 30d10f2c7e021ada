"""`paystream ingress`: ``POST /v1/commands`` in a process of its own.

A worker serves the same route beside its views (web/ingress_route.py), on the core
that runs its pipeline: each request there costs the worker more than the command it
carries (`paystream bench`'s ingress phases). This process does the HTTP side alone:
it reads the tenant registry (for tenant keys), produces each command with a producer
of its own, and reads the events topic for waiting senders, so it scales on request
rate apart from the workers (a Deployment of its own in the Helm chart) and leaves
their cores to the pipeline. It holds no state: any number run side by side.

Routes: ``POST /v1/commands``; ``GET /healthz`` (200 once the registry has caught up
and the producer is connected, else 503: a load balancer's readiness probe);
``GET /metrics`` (Prometheus).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator

import aiohttp.web
from aiokafka import AIOKafkaProducer
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from paystream.settings import Settings
from paystream.streams import broker_compat
from paystream.streams.admin import bootstrap_servers
from paystream.streams.codec import KafkaRecord
from paystream.streams.kafka_auth import client_auth
from paystream.tenancy.mirror import RegistryMirror
from paystream.web import bad_requests
from paystream.web.ingress import IDLE_READER_SECONDS, CommandIngress
from paystream.web.outcome_waits import OutcomeWaits
from paystream.web.produce import NotProduced, acknowledged

__all__ = ["IngressServer", "serve"]

log = logging.getLogger(__name__)

# How often an idle outcome reader is looked at (it stops after IDLE_READER_SECONDS).
_IDLE_CHECK_SECONDS = 60.0
# In-flight requests get this long to finish once the process is told to stop.
SHUTDOWN_GRACE_SECONDS = 15.0


class IngressServer:
    """The ingress's parts and their lifecycle, as an aiohttp application."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = RegistryMirror(settings)
        self.waits = OutcomeWaits(settings)
        self.ingress = CommandIngress(settings, self.registry, self._produce, self.waits)
        self._producer: AIOKafkaProducer | None = None
        self._registry_task: asyncio.Task[None] | None = None
        self._producer_task: asyncio.Task[None] | None = None
        self._idle_task: asyncio.Task[None] | None = None

    def app(self) -> aiohttp.web.Application:
        app = aiohttp.web.Application()
        app.router.add_post("/v1/commands", self.ingress.handle)
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.cleanup_ctx.append(self._running)
        return app

    async def _running(self, _app: aiohttp.web.Application) -> AsyncIterator[None]:
        settings = self.settings
        broker_compat.apply(settings)  # (the development broker's quirks, as a worker's)
        # As the worker's producer sends commands: every replica's acknowledgement, a
        # millisecond's linger so concurrent requests share a produce request.
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers(settings.require_broker()),
            **client_auth(settings),
            acks="all",
            linger_ms=1,
            request_timeout_ms=int(settings.producer_request_timeout_seconds * 1000),
        )
        self._registry_task = asyncio.create_task(self.registry.run(), name="registry")
        self._producer_task = asyncio.create_task(self._producer_started(), name="producer")
        self._idle_task = asyncio.create_task(self._stop_idle_reader(), name="idle-reader")
        tasks = (self._registry_task, self._producer_task, self._idle_task)
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.waits.stop()
            await self._producer.stop()

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

    @property
    def ready(self) -> bool:
        """The registry caught up (and still followed) and the producer connected."""
        following = self._registry_task is not None and not self._registry_task.done()
        return following and self.registry.ready.is_set() and self.producer_connected

    async def _produce(self, rec: KafkaRecord, tenant: str) -> None:
        producer = self._producer
        if producer is None or not self.producer_connected:
            raise NotProduced("the producer is not connected yet")
        await acknowledged(
            lambda: producer.send(
                self.settings.commands_topic, rec.value, key=rec.key, headers=list(rec.headers)
            ),
            tenant,
            "ingress",
        )

    async def _health(self, _request: aiohttp.web.Request) -> aiohttp.web.Response:
        if self.ready:
            return aiohttp.web.json_response({"ready": True})
        return aiohttp.web.json_response(
            {"ready": False, "registry_loaded": self.registry.ready.is_set()}, status=503
        )

    async def _metrics(self, _request: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.Response(
            body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )


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


async def serve(settings: Settings, host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT, then let in-flight requests finish."""
    configure_logging(settings.log_level)
    runner = aiohttp.web.AppRunner(
        IngressServer(settings).app(),
        shutdown_timeout=SHUTDOWN_GRACE_SECONDS,
        access_log=None,
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await aiohttp.web.TCPSite(runner, host, port).start()
        log.info("ingress: serving POST /v1/commands on %s:%d", host, port)
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await runner.cleanup()

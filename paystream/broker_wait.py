"""A worker started while no broker answers waits for one, instead of exiting.

Faust exits 1 when its producer cannot bootstrap. A worker the liveness probe restarted
during a broker outage (a wedged agent, README "At 3 a.m.") then exited at once, again
and again: CrashLoopBackOff for the rest of the outage, and up to five minutes of the
kubelet's back-off after the brokers were back before a worker tried again (review
h60i). Now, before Faust starts, the brokers are asked for their metadata; while none
answers, the worker's web port answers ``/healthz`` 200 (alive: waiting is what it
should do) and ``/readyz`` 503, and it asks again with a growing pause (at most 15 s).
SIGTERM or SIGINT meanwhile stops it (exit 0). `paystream ingress` retries its producer
the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable

import aiohttp.web
from aiokafka.admin import AIOKafkaAdminClient

from paystream.errors import described
from paystream.settings import Settings
from paystream.streams.admin import bootstrap_servers
from paystream.streams.kafka_auth import client_auth
from paystream.streams.kafka_refusals import bootstrap_refusals_held
from paystream.web.http_limits import HANDLER_LIMITS, CappedRunner

__all__ = ["WAITING", "brokers_answer", "wait_for_brokers", "waited_for_brokers"]

log = logging.getLogger(__name__)

WAITING = "waiting for the Kafka brokers to answer"
_FIRST_PAUSE_S = 1.0
_MAX_PAUSE_S = 15.0
_REQUEST_TIMEOUT_MS = 5_000


async def brokers_answer(settings: Settings) -> str | None:
    """None when a broker answered a metadata request; else why not (one line, with
    aiokafka's last refusal: a refused TLS certificate reads otherwise as an outage,
    review h60j)."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers(settings.require_broker()),
        request_timeout_ms=_REQUEST_TIMEOUT_MS,
        **client_auth(settings),
    )
    with bootstrap_refusals_held() as refusals:
        try:
            await admin.start()
            return None
        except Exception as exc:  # any failure is "not yet": reported, and asked again
            refusals.quoted = True
            why = described(exc) + (f"; {refusals.last}" if refusals.last else "")
            return why[:500]
        finally:
            with contextlib.suppress(Exception):
                await admin.close()


async def _unless_stopped(asked: Awaitable[str | None], stop: asyncio.Event) -> str | None:
    """The brokers asked, given up (None) the moment ``stop`` is set: a SIGTERM during a
    probe (up to 5 s a broker) that then found them was lost, and Faust started (h60j)."""
    probe = asyncio.ensure_future(asked)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({probe, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (probe, stopped):
            task.cancel()
        await asyncio.gather(probe, stopped, return_exceptions=True)
    return None if stop.is_set() or probe.cancelled() else probe.result()


def _app() -> aiohttp.web.Application:
    """The web port's answers while waiting: alive, not ready."""

    async def alive(_request: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response({"alive": True, "waiting": WAITING})

    async def not_ready(_request: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response(
            {"ready": False, "reasons": [WAITING]}, status=503, headers={"Retry-After": "5"}
        )

    app = aiohttp.web.Application()
    app.router.add_get("/healthz", alive)
    app.router.add_get("/readyz", not_ready)
    return app


async def wait_for_brokers(settings: Settings) -> bool:
    """Return True once a broker answers (at once when one does), False when stopped
    by SIGTERM or SIGINT first (whenever it comes: the handlers are in place first)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner: CappedRunner | None = None
    try:
        why = await _unless_stopped(brokers_answer(settings), stop)
        pause = _FIRST_PAUSE_S
        while not stop.is_set() and why is not None:
            if runner is None:
                runner = await _serve_while_waiting(settings)
            log.warning("worker: %s (%s); asking again in %.0f s", WAITING, why, pause)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)
            pause = min(pause * 2, _MAX_PAUSE_S)
            if not stop.is_set():
                why = await _unless_stopped(brokers_answer(settings), stop)
        if stop.is_set():
            log.info("worker: stopped while %s", WAITING)
            return False
        if runner is not None:
            log.info("worker: the brokers answer; starting")
        return True
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if runner is not None:
            await runner.cleanup()


async def _serve_while_waiting(settings: Settings) -> CappedRunner:
    runner = CappedRunner(
        _app(), max_connections=settings.web_max_connections, server_name="worker",
        access_log=None, **HANDLER_LIMITS,
    )  # fmt: skip
    await runner.setup()
    try:
        await aiohttp.web.TCPSite(runner, settings.web_host, settings.web_port).start()
    except OSError as exc:  # (probes then fail; the wait goes on regardless)
        log.warning("worker: cannot serve /healthz while waiting: %s", exc)
    return runner


def waited_for_brokers(settings: Settings) -> bool:
    """wait_for_brokers on a loop of its own, closed after: Faust then makes its own (not
    asyncio.run, which leaves the thread with no current loop for Faust to find)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(wait_for_brokers(settings))
    finally:
        loop.close()

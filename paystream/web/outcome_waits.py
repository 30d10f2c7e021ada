"""Outcomes awaited by HTTP senders (``Prefer: wait``): read from the events topic.

The outcome of a command comes from whichever worker owns its tenant, so the worker
that took the request reads the events topic for it, as any client does: a
``PaystreamClient`` started at the first wait (from the topic's end) and stopped once
nobody has waited for a while, so a worker whose senders never wait reads nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from paystream.client import PaystreamClient
from paystream.settings import Settings

__all__ = ["OutcomeWaits"]

log = logging.getLogger(__name__)


class OutcomeWaits:
    """One lazily started outcome reader for a worker's waiting HTTP senders."""

    # After a start that failed (the broker unreachable), waits are not offered for this
    # long: each request would otherwise try again, one after another.
    RETRY_START_SECONDS = 5.0

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        self._client: PaystreamClient | None = None
        self._lock = asyncio.Lock()
        self._used = clock()
        self._failed_at: float | None = None
        self._starting: asyncio.Future[PaystreamClient | None] | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        """Stopped for good: the process is stopping."""
        return self._closed

    async def reader(self, within: float) -> PaystreamClient | None:
        """The running reader (started now if need be: outcomes from now on are seen);
        None if it is not running within ``within`` seconds, failed to start a moment
        ago, or the worker is stopping: the sender is answered without waiting. The start
        is this object's, not the request's: a sender that gives up does not cancel it."""
        if self._closed:
            return None
        self._used = self._clock()
        client = self._client
        if client is not None and client.reading:
            return client
        if self._failed_at is not None and self._used - self._failed_at < self.RETRY_START_SECONDS:
            return None
        starting = self._starting
        if starting is None or starting.done():
            starting = self._starting = asyncio.ensure_future(self._start())
        # Waited for, not awaited: a stop() cancelling the start answers this sender None
        # (its command is then produced without a wait), not CancelledError.
        await asyncio.wait({starting}, timeout=within)
        if not starting.done() or starting.cancelled():
            return None
        return starting.result()

    async def _start(self) -> PaystreamClient | None:
        async with self._lock:
            old, self._client = self._client, None
            if old is not None:  # its reader failed (broker gone): a fresh one
                await _stopped(old)
            try:
                # (Made here too: its TLS context reads the CA file, which may be gone.)
                client = PaystreamClient(self._settings)
                await client.start()  # (stops what it started if it fails or is cancelled)
            except Exception as exc:
                self._failed_at = self._clock()
                log.warning("ingress: the outcome reader did not start (%s)", type(exc).__name__)
                return None
            self._failed_at = None
            self._client = client
            return client

    async def stop_if_idle(self, idle_seconds: float) -> None:
        """Stop the reader if nobody has waited on it for ``idle_seconds``."""
        async with self._lock:
            client = self._client
            if client is None or client.awaited:
                return
            if self._clock() - self._used < idle_seconds:
                return
            self._client = None
        await _stopped(client)

    async def stop(self) -> None:
        """For good (the worker is stopping): no reader is started after this."""
        self._closed = True
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
            await asyncio.gather(self._starting, return_exceptions=True)
        async with self._lock:
            client, self._client = self._client, None
        if client is not None:
            await _stopped(client)


async def _stopped(client: PaystreamClient) -> None:
    try:
        await client.stop()
    except Exception:
        log.warning("stopping the ingress outcome reader failed", exc_info=True)

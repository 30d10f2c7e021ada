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
    # long: each request would otherwise try again, one after another, behind the lock.
    RETRY_START_SECONDS = 5.0

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        self._client: PaystreamClient | None = None
        self._lock = asyncio.Lock()
        self._used = clock()
        self._failed_at: float | None = None
        self._closed = False

    async def reader(self, within: float) -> PaystreamClient | None:
        """The running reader (started now if need be: outcomes from now on are seen);
        None if it cannot be had within ``within`` seconds, failed to start a moment ago,
        or the worker is stopping: the sender is answered without waiting."""
        try:
            async with asyncio.timeout(within):
                return await self._reader()
        except TimeoutError:
            self._failed_at = self._clock()
            return None

    async def _reader(self) -> PaystreamClient | None:
        async with self._lock:
            now = self._clock()
            if self._closed:
                return None
            if self._failed_at is not None and now - self._failed_at < self.RETRY_START_SECONDS:
                return None
            self._used = now
            client = self._client
            if client is not None and client.reading:
                return client
            if client is not None:  # its reader failed (broker gone): a fresh one
                self._client = None
                await _stopped(client)
            client = PaystreamClient(self._settings)
            try:
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
        async with self._lock:
            client, self._client = self._client, None
        if client is not None:
            await _stopped(client)


async def _stopped(client: PaystreamClient) -> None:
    try:
        await client.stop()
    except Exception:
        log.warning("stopping the ingress outcome reader failed", exc_info=True)

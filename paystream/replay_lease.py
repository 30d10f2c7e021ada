"""One `paystream dlq replay` at a time per deployment: a lease in Redis.

Two replays at once both re-send the records between the committed offsets and the
ends, and each commits as if it were alone. Comparing the committed offsets before a
commit (``dlq._FencedCommits``) notices the other only if its commit lands first, and
the check and the commit are two requests. So a replay first takes the deployment's
lease (a key named after the commands topic it re-sends to, set only if absent, with a
time to live), renews it while it runs and deletes it as it ends; a replay that finds
it taken stops at once, before reading anything.

A holder trusts the lease without asking for one renewal period less than the time to
live since it last renewed (time the machine was suspended counts); past that it asks
Redis before its next re-send, and it always asks before a commit. A holder that cannot
renew (Redis unreachable, or the process stopped or suspended past the time to live)
cannot know that nobody took the lease meanwhile: it stops, committing nothing more. A
lease left by a replay that died expires by itself.

(A consumer group whose assignor gives everything to one member would do without Redis,
but the development broker's group coordinator can be left with a departed leader by a
leave during a rebalance, and every later join of that group then waits for good.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from typing import Any

import redis.asyncio as aioredis

from paystream.settings import Settings
from paystream.token_scripts import EXPIRE_IF_HELD, RELEASE_IF_HELD

__all__ = ["LeaseLost", "ReplayLease", "lease_key"]

log = logging.getLogger(__name__)

TTL_SECONDS = 30.0


def _clock() -> float:
    """Seconds, counting time the machine spent suspended (as Redis's expiry does:
    ``time.monotonic`` stops while a laptop or VM sleeps, on Linux)."""
    return time.clock_gettime(_BOOTTIME) if _BOOTTIME is not None else time.monotonic()


_BOOTTIME: int | None = getattr(time, "CLOCK_BOOTTIME", None)  # (Linux only)


class LeaseLost(RuntimeError):
    """The lease is another replay's (never ours, or perhaps not any more)."""


def lease_key(commands_topic: str) -> str:
    return f"paystream:dlq-replay-lease:{commands_topic}"


class ReplayLease:
    """The replay lease of one deployment (its commands topic); see the module doc."""

    def __init__(self, settings: Settings, *, ttl_seconds: float = TTL_SECONDS) -> None:
        if not settings.redis_url:
            raise ValueError("the replay lease needs REDIS_URL")
        self.key = lease_key(settings.commands_topic)
        self.ttl_seconds = ttl_seconds
        # Renewed this often; trusted without asking Redis for one period less than the
        # time to live (a re-send or commit under way still ends inside it), so a holder
        # that missed a renewal asks before its next step.
        self.renew_every = ttl_seconds / 3
        # Says who holds it (for the one refused) and is unique to this run.
        self.token = f"{socket.gethostname()} pid {os.getpid()} {os.urandom(6).hex()}"
        self._redis: Any = aioredis.from_url(settings.redis_url, socket_timeout=5.0)
        self._renewed_at = 0.0  # _clock() as the last renewal was asked (0: not held)
        self._acquired = False  # set (perhaps) in Redis by us: release deletes it if ours
        self._lost = False
        self._renewer: asyncio.Task[None] | None = None

    @property
    def held(self) -> bool:
        """Ours without asking: renewed recently enough, never found taken."""
        return (
            not self._lost
            and self._renewed_at > 0
            and _clock() - self._renewed_at < self.ttl_seconds - self.renew_every
        )

    async def acquire(self) -> None:
        """Take the lease; :class:`LeaseLost` naming the holder if it is taken."""
        started = _clock()
        ttl_ms = int(self.ttl_seconds * 1000)
        self._acquired = True  # (a SET whose answer is lost may have landed)
        try:
            taken = await self._redis.set(self.key, self.token, nx=True, px=ttl_ms)
            if not taken:
                self._acquired = False
                holder = await self._redis.get(self.key)
                left_ms = await self._redis.pttl(self.key)
        except BaseException:
            await self.release()
            raise
        if not taken:
            await self._close()
            who = holder.decode("utf-8", "replace") if holder else "a replay just ending"
            left = (
                f"; it expires within {left_ms / 1000:.0f} s if not renewed" if left_ms > 0 else ""
            )
            raise LeaseLost(f"another replay holds the lease ({who}{left})")
        self._renewed_at = started
        self._renewer = asyncio.ensure_future(self._renew_periodically())

    async def ensure_held(self) -> None:
        """:class:`LeaseLost` unless the lease is ours without asking (:attr:`held`) or
        Redis says it still is (renewing it)."""
        if not self.held and not self._lost:
            await self._renew()
        if not self.held:
            self._lost = True
            raise LeaseLost(
                f"the lease could not be renewed within {self.ttl_seconds:.0f} s: another "
                "replay may hold it now"
            )

    async def confirm(self) -> None:
        """Renew now (before a commit, the one step another replay's could undo);
        :class:`LeaseLost` if Redis says the lease is not ours, or if it has not been
        renewed for long enough that it may not be (Redis unreachable)."""
        if not self._lost:
            await self._renew()
        if not self.held:
            self._lost = True
            raise LeaseLost("Redis no longer holds the lease as this replay's")

    async def release(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(BaseException):
                await self._renewer
            self._renewer = None
        if self._acquired:  # (ours or not, the script deletes it only if ours)
            with contextlib.suppress(Exception):
                await self._redis.eval(RELEASE_IF_HELD, 1, self.key, self.token)
        self._acquired = False
        self._renewed_at = 0.0
        await self._close()

    async def _renew(self) -> None:
        started = _clock()
        try:
            ours = await self._redis.eval(
                EXPIRE_IF_HELD, 1, self.key, self.token, int(self.ttl_seconds * 1000)
            )
        except Exception as exc:
            log.warning("could not renew the replay lease: %r", exc)
            return  # (``held`` runs out by itself if this goes on)
        if ours:
            self._renewed_at = started
        else:
            self._lost = True  # expired and perhaps taken: never ours again

    async def _renew_periodically(self) -> None:
        while not self._lost:
            await asyncio.sleep(self.renew_every)
            await self._renew()

    async def _close(self) -> None:
        with contextlib.suppress(Exception):
            await self._redis.aclose()

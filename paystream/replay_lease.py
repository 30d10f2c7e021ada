"""One `paystream dlq replay` at a time per deployment: a lease in Redis.

Two replays at once both re-send the records between the committed offsets and the
ends, and each commits as if it were alone. Comparing the committed offsets before a
commit (``dlq._FencedCommits``) notices the other only if its commit lands first, and
the check and the commit are two requests. So a replay first takes the deployment's
lease (a key named after the commands topic it re-sends to, set only if absent, with a
time to live), renews it while it runs and deletes it as it ends; a replay that finds
it taken stops at once, before reading anything.

A holder that cannot renew (Redis down, or the process paused past the time to live)
cannot know that nobody took the lease meanwhile: it counts it lost from the moment the
time to live could have run out since its last renewal, and stops before re-sending or
committing anything else. A lease left by a replay that died expires by itself.

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

__all__ = ["LeaseLost", "ReplayLease", "lease_key"]

log = logging.getLogger(__name__)

TTL_SECONDS = 30.0
# Renewed this often: a holder misses two renewals before another may take it.
RENEW_EVERY_SECONDS = TTL_SECONDS / 3

# Only the holder's own token extends or removes the lease.
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


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
        # Says who holds it (for the one refused) and is unique to this run.
        self.token = f"{socket.gethostname()} pid {os.getpid()} {os.urandom(6).hex()}"
        self._redis: Any = aioredis.from_url(settings.redis_url, socket_timeout=5.0)
        self._renewed_at = 0.0  # monotonic time of the last renewal (0: not held)
        self._lost = False
        self._renewer: asyncio.Task[None] | None = None

    @property
    def held(self) -> bool:
        """Ours for sure: renewed within the time to live, never found taken."""
        return (
            not self._lost
            and self._renewed_at > 0
            and time.monotonic() - self._renewed_at < self.ttl_seconds
        )

    async def acquire(self) -> None:
        """Take the lease; :class:`LeaseLost` naming the holder if it is taken."""
        started = time.monotonic()
        ttl_ms = int(self.ttl_seconds * 1000)
        try:
            taken = await self._redis.set(self.key, self.token, nx=True, px=ttl_ms)
        except BaseException:
            await self._close()
            raise
        if not taken:
            holder = await self._redis.get(self.key)
            await self._close()
            who = holder.decode("utf-8", "replace") if holder else "a replay just ending"
            raise LeaseLost(f"another replay holds the lease ({who})")
        self._renewed_at = started
        self._renewer = asyncio.ensure_future(self._renew_periodically())

    async def ensure_held(self) -> None:
        """:class:`LeaseLost` unless the lease is still ours (renewing it now if the
        last renewal is getting old)."""
        if self._lost:
            raise LeaseLost("another replay may hold the lease now")
        if time.monotonic() - self._renewed_at >= RENEW_EVERY_SECONDS * 2:
            await self._renew()
        if not self.held:
            self._lost = True
            raise LeaseLost(
                f"the lease was not renewed within its {self.ttl_seconds:.0f} s: "
                "another replay may hold it now"
            )

    async def release(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(BaseException):
                await self._renewer
            self._renewer = None
        if self._renewed_at and not self._lost:
            with contextlib.suppress(Exception):
                await self._redis.eval(_RELEASE, 1, self.key, self.token)
        self._renewed_at = 0.0
        await self._close()

    async def _renew(self) -> None:
        started = time.monotonic()
        try:
            ours = await self._redis.eval(
                _RENEW, 1, self.key, self.token, int(self.ttl_seconds * 1000)
            )
        except Exception:
            log.warning("could not renew the replay lease", exc_info=True)
            return  # (``held`` runs out by itself if this goes on)
        if ours:
            self._renewed_at = started
        else:
            self._lost = True  # expired and perhaps taken: never ours again

    async def _renew_periodically(self) -> None:
        while not self._lost:
            await asyncio.sleep(RENEW_EVERY_SECONDS)
            await self._renew()

    async def _close(self) -> None:
        with contextlib.suppress(Exception):
            await self._redis.aclose()

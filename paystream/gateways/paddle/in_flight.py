"""Paddle creates in flight, tracked in Redis for the whole worker fleet.

Paddle keeps no idempotency keys, and a create's lookup sees only what Paddle made: a try
still running (its SDK thread goes on after the deadline, and Paddle may process it
later still) is invisible to it, whichever worker sent it and whether or not that worker
still runs. So a create takes its request's key in Redis (one per tenant and request tag:
never the idempotency key itself) before its lookup, atomically, with a token of its own;
the key says "a try of this request may still be made at Paddle" for as long as it lives:

* taken for the SDK's timeout plus the landing margin, and set to that again as the POST
  is sent (the lookup before it may have taken a while);
* deleted (by its holder's token only) once the create's answer is known: made, refused,
  or never sent;
* set to expire after the landing margin when the answer was lost (a timeout, a dropped
  connection, a 5xx): Paddle may still make it; left to expire on its own if even that
  cannot be said (Redis unreachable, the worker killed).

A try that finds the key held is answered ``idempotency_error`` (retryable, its
``retry_after`` the key's time left), as a provider holding a key in use answers. Redis
unreachable, or not answering within ``REDIS_WAIT_SECONDS`` (stopped, partitioned: the
worker's client has no socket timeout): ``provider_unavailable`` (retryable, refused
before any request), as the simulator answers when its store is: a create is never
sent unguarded (docs/paddle.md, "Exactly once without idempotency keys"); Redis's
refusal, not Paddle's, so no verdict on the tenant's Paddle circuit
(``local_dependency``). ``knows_request`` reads the key (``held``), never takes it:
while it is held, "not made" cannot be said."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

from redis.exceptions import RedisError

from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.paddle.errors import PROVIDER
from paystream.token_scripts import EXPIRE_IF_HELD, RELEASE_IF_HELD

__all__ = ["KEEP_BEATS_MAX", "REDIS_WAIT_SECONDS", "InFlight", "in_flight_key"]

log = logging.getLogger(__name__)

# Most renewals of a sent POST's key (each after a third of its time to live): at the
# default timeout (10 s) a beat each 10 s, 5 minutes of a POST's thread.
KEEP_BEATS_MAX = 30
# Longest a request to Redis is waited for (the gateway passes less under a short call
# timeout; a create's requests wait no longer than what is left of its call's deadline,
# InFlight._wait). The worker's client has no socket timeout (agents/commands.py): a Redis that
# hangs would hold a create until the call's deadline, read as Paddle's own timeout, and
# open the tenant's Paddle circuit, parking its reads too (review h78b). Its settling
# tasks would wait for ever, each on a connection of its own.
REDIS_WAIT_SECONDS = 2.0

# Set when absent (-1); renewed when it holds our token (-2); else its time left (ms).
# Another's without an expiry (none is set so: restored, or set by hand) is given one,
# not to hold the request back for good, and that time is answered: PTTL's own -1 would
# read as "taken" (review h77g F2).
_TAKE = """
local held = redis.call('get', KEYS[1])
if not held then
  redis.call('set', KEYS[1], ARGV[1], 'px', ARGV[2])
  return -1
end
if held == ARGV[1] then
  redis.call('pexpire', KEYS[1], ARGV[2])
  return -2
end
local left = redis.call('pttl', KEYS[1])
if left < 0 then
  redis.call('pexpire', KEYS[1], ARGV[2])
  return tonumber(ARGV[2])
end
return left
"""
_TAKEN, _KEPT = -1, -2


def in_flight_key(tenant_id: str, tag: str) -> str:
    """The Redis key of a tenant's create under a request tag (a digest of the key).
    One for a payment and a refund under the same tag (a different command key in
    practice; sharing only makes one wait for the other). Not renamed per operation:
    during a rolling deploy, workers on either name would not see each other's tries."""
    return f"paystream:paddle:in-flight:{tenant_id}:{tag}"


def new_token() -> str:
    """One try's token: only its holder deletes or extends the key."""
    return os.urandom(12).hex()


class InFlight:
    """One tenant's creates in flight at Paddle, in the fleet's Redis (see module doc)."""

    def __init__(
        self, redis: Any, tenant_id: str, *, wait_seconds: float = REDIS_WAIT_SECONDS
    ) -> None:
        self._redis = redis
        self._tenant_id = tenant_id
        self._wait_seconds = wait_seconds
        # Deletes and expiries scheduled from the SDK's threads: kept until done.
        self._settling: set[asyncio.Task[None]] = set()
        # A sent POST's renewal under way, by its try's token (keep_while_sent).
        self._renewing: dict[str, asyncio.Future[None]] = {}

    def _unavailable(
        self, why: str, what: str = "no Paddle create is sent without its in-flight key"
    ) -> GatewayError:
        exc = GatewayError(
            ErrorCode.PROVIDER_UNAVAILABLE,
            f"{what} in Redis ({why})",
            provider=PROVIDER,
            retryable=True,
            reached_provider=False,
        )
        exc.local_dependency = True  # (Redis, not Paddle: no verdict on its circuit)
        return exc

    async def held(self, tag: str) -> float | None:
        """Seconds the key is held yet (another's without expiry: 0), None when free;
        read only, never taken. ``provider_unavailable`` when Redis cannot be asked.
        Without Redis (REDIS_URL unset) no create is sent (``take``): None."""
        if self._redis is None:
            return None
        try:
            async with asyncio.timeout(self._wait_seconds):
                left_ms = int(await self._redis.pttl(in_flight_key(self._tenant_id, tag)))
        except (RedisError, OSError) as exc:
            what = "cannot tell whether a try of the request is in flight without its key"
            raise self._unavailable(type(exc).__name__, what) from exc
        if left_ms == -2:  # (no such key)
            return None
        return max(left_ms, 0) / 1000

    async def take(
        self, tag: str, token: str, seconds: float, *, deadline: float | None = None
    ) -> bool:
        """Hold the key under ``token`` for ``seconds``: True when it was free, False when
        it held ``token`` already (this process's try, renewed); ``idempotency_error``
        while another try holds it, ``provider_unavailable`` without Redis (or none
        answering before ``deadline``: ``_wait``)."""
        if self._redis is None:
            raise self._unavailable("REDIS_URL is not set")
        key = in_flight_key(self._tenant_id, tag)
        try:
            left_ms = int(await self._eval(_TAKE, key, token, _ms(seconds), deadline=deadline))
        except (RedisError, OSError) as exc:
            # (a SET whose answer was lost may have landed: ours to delete)
            self._settle(self._run(RELEASE_IF_HELD, key, token))
            raise self._unavailable(type(exc).__name__) from exc
        except BaseException:  # (cancelled by the deadline: as above)
            self._settle(self._run(RELEASE_IF_HELD, key, token))
            raise
        if left_ms in (_TAKEN, _KEPT):
            return left_ms == _TAKEN
        left = max(left_ms, 50) / 1000  # (0: just going)
        raise GatewayError(
            ErrorCode.IDEMPOTENCY_ERROR,
            "an earlier try of this request may still be made at Paddle (in flight here "
            f"or at another worker): looked for once it can no longer land (in {left:.1f}s)",
            provider=PROVIDER,
            retryable=True,
            retry_after=left,
            reached_provider=False,
        )

    async def renew(
        self, tag: str, token: str, seconds: float, *, deadline: float | None = None
    ) -> None:
        """Hold the key ``seconds`` more, before a POST: ``idempotency_error`` if it is no
        longer this try's (it expired during a long lookup: another may have sent);
        ``provider_unavailable`` if Redis does not answer before ``deadline`` (``_wait``:
        after a long lookup, less than a whole wait is left)."""
        key = in_flight_key(self._tenant_id, tag)
        try:
            held = await self._eval(EXPIRE_IF_HELD, key, token, _ms(seconds), deadline=deadline)
        except (RedisError, OSError) as exc:
            raise self._unavailable(type(exc).__name__) from exc
        if not held:
            raise GatewayError(
                ErrorCode.IDEMPOTENCY_ERROR,
                "this try's in-flight key expired before its POST: looked for again",
                provider=PROVIDER,
                retryable=True,
                reached_provider=False,
            )

    async def release(self, tag: str, token: str) -> None:
        """Delete the key if still ``token``'s (the answer is known)."""
        await self._run(RELEASE_IF_HELD, in_flight_key(self._tenant_id, tag), token)

    async def release_briefly(self, tag: str, token: str) -> None:
        """``release`` once a create's answer is known, waited for only briefly (a tenth
        of the wait): a healthy Redis answers well within it, so the next try finds the
        key free; a Redis that hangs delays the known answer by no more, where a whole
        wait could take it past the call's deadline, to be counted as Paddle's timeout
        (review h78j F1). The release goes on after, as ``release_soon``'s."""
        done = self._settle(self.release(tag, token))
        await asyncio.wait({done}, timeout=self._wait_seconds / 10)

    def release_soon(self, tag: str, token: str) -> None:
        """``release``, not waited for (a try cancelled, a thread's end)."""
        self._settle(self.release(tag, token))

    def expire_soon(self, tag: str, token: str, seconds: float) -> None:
        """Let the key live ``seconds`` more if still ``token``'s (the answer was lost)."""
        self._settle(self._expire(tag, token, seconds))

    async def _expire(self, tag: str, token: str, seconds: float) -> None:
        key = in_flight_key(self._tenant_id, tag)
        await self._run(EXPIRE_IF_HELD, key, token, _ms(seconds))

    def keep_while_sent(self, tag: str, token: str, seconds: float) -> asyncio.Task[None]:
        """Hold the key ``seconds`` more every ``seconds`` / 3 while a POST's thread runs
        (until ``settle_from_thread`` stops it): ``requests``' timeout bounds its connect
        and each read, not the call, so the thread may run several timeouts (review h77g
        F1). At most KEEP_BEATS_MAX times: a thread never settled (its submit failed)
        does not hold the request back for as long as the process lives."""
        key = in_flight_key(self._tenant_id, tag)

        async def beat() -> None:
            for _ in range(KEEP_BEATS_MAX):
                await asyncio.sleep(seconds / 3)
                # (shielded: stopped mid-renewal as the thread ends, it is let finish,
                # within the wait, and the key settled after it, _after; cut short, its
                # request could still reach Redis after the settling's and hold the key
                # a whole time to live again)
                renewal = asyncio.ensure_future(self._run(EXPIRE_IF_HELD, key, token, _ms(seconds)))
                self._renewing[token] = renewal
                renewal.add_done_callback(lambda _: self._renewing.pop(token, None))
                await asyncio.shield(renewal)

        task = asyncio.ensure_future(beat())
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        return task

    def settle_from_thread(
        self,
        loop: asyncio.AbstractEventLoop,
        tag: str,
        token: str,
        lost_margin: float | None,
        kept: asyncio.Task[None] | None = None,
    ) -> None:
        """From an SDK thread, as its POST ended: ``kept`` (its ``keep_while_sent``)
        stopped, and the key released, or (``lost_margin``) set to expire after it."""
        with contextlib.suppress(RuntimeError):  # (the loop closed: the key expires)
            loop.call_soon_threadsafe(self._settle_after, kept, tag, token, lost_margin)

    def _settle_after(
        self, kept: asyncio.Task[None] | None, tag: str, token: str, lost_margin: float | None
    ) -> None:
        self._settle(self._after(kept, tag, token, lost_margin))

    async def _after(
        self, kept: asyncio.Task[None] | None, tag: str, token: str, lost_margin: float | None
    ) -> None:
        """The key settled, ``kept`` stopped: after its renewal under way, if any, so that
        Redis takes the two in that order."""
        if kept is not None:
            kept.cancel()
        renewal = self._renewing.pop(token, None)
        if renewal is not None:  # (else nothing to wait for: settled at once, as ever)
            await renewal
        if lost_margin is None:
            await self.release(tag, token)
        else:
            await self._expire(tag, token, lost_margin)

    async def _run(self, script: str, key: str, *args: Any) -> None:
        if self._redis is None:
            return
        try:
            await self._eval(script, key, *args)
        except (RedisError, OSError) as exc:
            # (left to expire: a retry waits out its time to live, no more)
            log.warning("paddle in-flight key not updated (%s): left to expire", type(exc).__name__)

    async def _eval(self, script: str, key: str, *args: Any, deadline: float | None = None) -> Any:
        """The script's answer; TimeoutError (an OSError) past the wait (module doc)."""
        async with asyncio.timeout(self._wait(deadline)):
            return await self._redis.eval(script, 1, key, *args)

    def _wait(self, deadline: float | None) -> float:
        """How long one request to Redis is waited for: the whole wait, or less when the
        call's ``deadline`` (the loop's time) is nearer: what is left of it but a fifth of
        the wait (room for the key's brief release after the refusal, ``release_briefly``,
        and for the deadline timer's tick), so that a hung Redis is refused as one that
        is down, never run into the deadline to be taken for Paddle's timeout."""
        if deadline is None:
            return self._wait_seconds
        left = deadline - asyncio.get_running_loop().time() - self._wait_seconds / 5
        return max(0.0, min(self._wait_seconds, left))

    def _settle(self, work: Any) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        return task


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))

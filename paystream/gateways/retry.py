"""Retries with backoff and jitter, behind a per-(tenant, provider) circuit breaker.

Only retryable GatewayErrors are retried, always with the same idempotency key (the
caller's closure carries it), so a retry can never apply an effect twice. A decline
or invalid request is the provider *answering*, so it counts as health, not failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.settings import Settings

__all__ = ["CircuitBreaker", "CircuitOpen", "CircuitState", "RetriesExhausted", "RetryPolicy"]

log = logging.getLogger(__name__)

T = TypeVar("T")
_MAX_DELAY_SECONDS = 5.0
_MAX_HINTED_DELAY_SECONDS = 30.0
# Most a call waits for another call's half-open probe to end before it is turned away.
_TRIAL_WAIT_SECONDS = 10.0


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class RetriesExhausted(GatewayError):
    """Every attempt failed transiently; park the command on the retry topic."""

    def __init__(self, last: GatewayError, attempts: int) -> None:
        super().__init__(
            last.code,
            f"gave up after {attempts} attempts: {last.message}",
            provider=last.provider,
            retryable=True,
            http_status=last.http_status,
            provider_request_id=last.provider_request_id,
        )
        self.last = last
        self.attempts = attempts


class CircuitOpen(GatewayError):
    """The (tenant, provider) circuit is open: fail fast without calling the provider."""

    def __init__(self, provider: str, tenant_id: str, retry_after: float) -> None:
        super().__init__(
            ErrorCode.PROVIDER_UNAVAILABLE,
            f"circuit open for tenant {tenant_id!r}; retry in {retry_after:.1f}s",
            provider=provider,
            retryable=True,
        )
        self.retry_after = retry_after


# The states as module globals: a member looked up on its enum class costs a few
# times a global's lookup, and the breaker asks on every call (the same objects).
_CLOSED = CircuitState.CLOSED
_OPEN = CircuitState.OPEN
_HALF_OPEN = CircuitState.HALF_OPEN

# What ``release`` and ``on_failure`` take for "the trial in flight, whichever it is".
CURRENT_TRIAL = object()

# A circuit not closed shows open on the gauge while calls keep coming, and this long
# after the last one (its tenant's traffic may have moved to another worker).
SHOWN_IDLE_SECONDS = 600.0


@dataclass
class CircuitBreaker:
    """Opens after N consecutive transient failures; one trial call after the reset delay."""

    failure_threshold: int
    reset_seconds: float
    clock: Callable[[], float] = time.monotonic
    state: CircuitState = CircuitState.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    last_call: float = 0.0  # when a call last came (held back or not)
    # Whose circuit, for the log lines of its opening and closing ("tenant at provider").
    name: str = ""
    # The half-open trial in flight (a token of its own: a former trial ending late must
    # not free the current one's slot; review h68v), else None.
    _trial: object | None = field(default=None, repr=False)
    # Calls under way (a tenant's commands on different payments run side by side,
    # agents/tenant_chains.py), and what calls waiting for the trial's verdict wait on.
    in_flight: int = 0
    _trial_ended: asyncio.Event | None = field(default=None, repr=False)

    def before_call(self) -> float | None:
        """None if a call may go ahead, else seconds until the circuit may be tried."""
        self.last_call = self.clock()
        state = self.state
        if state is _CLOSED:
            return None
        if state is _OPEN:
            waited = self.clock() - self.opened_at
            if waited < self.reset_seconds:
                return self.reset_seconds - waited
            self.state = _HALF_OPEN
        if self.state is _HALF_OPEN:
            if self._trial is not None:
                return self.reset_seconds  # only one probe at a time
            self._trial = object()
        return None

    def trial(self) -> object | None:
        """The call ``before_call`` just let through: its trial token when it is the
        half-open probe, else None (to hand back to ``release`` and ``on_failure``)."""
        return self._trial if self.state is _HALF_OPEN else None

    def _trial_over(self, trial: object | None) -> None:
        if trial is CURRENT_TRIAL or (trial is not None and trial is self._trial):
            self._trial = None
            self._wake_waiters()

    def _wake_waiters(self) -> None:
        if self._trial_ended is not None:
            self._trial_ended.set()
            self._trial_ended = None

    def trial_running(self) -> bool:
        """A half-open probe is in flight: its answer decides the next call's fate."""
        return self.state is _HALF_OPEN and self._trial is not None

    async def trial_settled(self, most_seconds: float) -> None:
        """Wait (at most ``most_seconds``) for the probe in flight to end. Serially the next
        command would have come after it; run beside it, a call turned away at once was
        parked even when the probe succeeded a moment later."""
        if self._trial_ended is None:
            self._trial_ended = asyncio.Event()
        # (asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that comes
        # as the wait ends, and the cancelled call went on to the provider.)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(most_seconds):
                await self._trial_ended.wait()

    def on_success(self) -> None:
        if self.state is not _CLOSED:
            log.info(
                "circuit of %s closed: the provider answers again; re-drive what was "
                "parked meanwhile with `paystream dlq replay`",
                self.name or "a tenant",
            )
        self.state, self.failures, self._trial = _CLOSED, 0, None
        self._wake_waiters()

    def shows_open(self) -> bool:
        """What the circuit gauge says: not closed, and called within ``SHOWN_IDLE_SECONDS``.

        A provider that stays down for a quiet tenant (a command a minute) shows open
        throughout, between probes too; a circuit nobody calls any more (its tenant's
        partitions moved to another worker) stops showing open after a while, rather
        than for as long as the process lives."""
        if self.state is CircuitState.CLOSED:
            return False
        return self.clock() - self.last_call < max(SHOWN_IDLE_SECONDS, self.reset_seconds)

    def release(self, trial: object | None = CURRENT_TRIAL) -> None:
        """A call ended without an answer either way (cancelled): if it was the trial
        (``trial``: its token, or CURRENT_TRIAL), another may probe."""
        self._trial_over(trial)

    def on_failure(self, trial: object | None = CURRENT_TRIAL) -> None:
        """A transient failure; ``trial`` as for ``release`` (a late failure of a call let
        through before does not free the probe's slot)."""
        self.failures += 1
        # N failures in a row of each call under way: calls side by side meet one blip
        # together (4 calls failing twice each is 8 failures before any can succeed,
        # where one at a time each success would have reset the count).
        threshold = self.failure_threshold * max(1, self.in_flight)
        if self.state is CircuitState.HALF_OPEN or self.failures >= threshold:
            if self.state is CircuitState.CLOSED:  # (not each failed trial: one a reset)
                log.warning(
                    "circuit of %s opened after %d transient failures in a row: its "
                    "commands are parked (for `paystream dlq replay`) until a trial call, "
                    "%g s on, succeeds",
                    self.name or "a tenant",
                    self.failures,
                    self.reset_seconds,
                )
            self.state, self.opened_at = CircuitState.OPEN, self.clock()
        self._trial_over(trial)  # (after the verdict: a call it wakes finds the circuit open)


def _not_about_the_request(exc: GatewayError) -> bool:
    """A refusal that says nothing of what the provider did with the request: refused
    before sending, or before the provider reads the request and its key (credentials,
    access, no way through)."""
    return (
        not exc.reached_provider
        or exc.code in (ErrorCode.AUTHENTICATION_FAILED, ErrorCode.PERMISSION_DENIED)
        or exc.code is ErrorCode.PROVIDER_UNAVAILABLE
    )


@dataclass(eq=False)  # identity: the metrics follow each policy by weak reference
class RetryPolicy:
    """Retry transient failures with exponential backoff and full jitter, per circuit."""

    max_attempts: int
    backoff_base_seconds: float
    failure_threshold: int
    reset_seconds: float
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    rand: Callable[[], float] = random.random
    clock: Callable[[], float] = time.monotonic
    breakers: dict[tuple[str, str], CircuitBreaker] = field(default_factory=dict)
    # Most a call waits for another call's half-open probe to end, in all.
    trial_wait_seconds: float = _TRIAL_WAIT_SECONDS

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            max_attempts=settings.gateway_max_attempts,
            backoff_base_seconds=settings.gateway_backoff_base_ms / 1000,
            failure_threshold=settings.breaker_failure_threshold,
            reset_seconds=settings.breaker_reset_seconds,
        )

    def breaker(self, tenant_id: str, provider: str) -> CircuitBreaker:
        key = (tenant_id, provider)
        if key not in self.breakers:
            self.breakers[key] = CircuitBreaker(
                self.failure_threshold,
                self.reset_seconds,
                clock=self.clock,
                name=f"{tenant_id} at {provider}",
            )
        return self.breakers[key]

    def forget(self, tenant_id: str) -> None:
        """Drop the tenant's circuits (it was removed, or moved to another provider)."""
        for key in [k for k in self.breakers if k[0] == tenant_id]:
            del self.breakers[key]

    def delay(self, attempt: int) -> float:
        """Full jitter: uniform in [0, base * 2^(attempt-1)], capped."""
        ceiling = min(_MAX_DELAY_SECONDS, self.backoff_base_seconds * 2 ** (attempt - 1))
        return ceiling * self.rand()

    async def call(self, tenant_id: str, provider: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn`` (which must reuse one idempotency key) until it answers or we give up."""
        breaker = self.breakers.get((tenant_id, provider))  # (one lookup, not two)
        if breaker is None:
            breaker = self.breaker(tenant_id, provider)
        breaker.in_flight += 1  # (the breaker's threshold counts calls under way)
        try:
            return await self._attempts(breaker, tenant_id, provider, fn)
        finally:
            breaker.in_flight -= 1

    async def _attempts(
        self,
        breaker: CircuitBreaker,
        tenant_id: str,
        provider: str,
        fn: Callable[[], Awaitable[T]],
    ) -> T:
        # An earlier attempt's failure after which the provider may have acted (a lost
        # answer, a 5xx): a later refusal that is no answer to the request itself must
        # not end the command as if nothing had happened.
        may_have_acted: GatewayError | None = None
        for attempt in range(1, self.max_attempts + 1):
            wait = breaker.before_call()
            if wait is not None and breaker.trial_running():
                # Another call of the tenant's is the probe: its verdict decides. Up to
                # trial_wait_seconds in all (not the reset delay: a probe may take its
                # whole call timeout), and again when the probe ended with no verdict (a
                # 409, cancelled) and another waiter took its slot.
                loop = asyncio.get_running_loop()
                give_up = loop.time() + self.trial_wait_seconds
                while wait is not None and breaker.trial_running():
                    left = give_up - loop.time()
                    if left <= 0:
                        break
                    await breaker.trial_settled(left)
                    wait = breaker.before_call()
            if wait is not None:
                raise CircuitOpen(provider, tenant_id, wait)
            trial = breaker.trial()  # (this attempt's token when it is the probe)
            try:
                result = await fn()
            except GatewayError as exc:
                if not exc.retryable:
                    if exc.reached_provider:
                        breaker.on_success()  # the provider answered; it is healthy
                    else:
                        # Refused before any request: no verdict on the provider (as a
                        # half-open probe it would close a circuit whose provider is down).
                        breaker.release(trial)
                    if may_have_acted is not None and _not_about_the_request(exc):
                        # E.g. the key rolled between a timed-out charge and its retry:
                        # the 401 comes before the provider looks the key up. Parked,
                        # not rejected: the first attempt may have charged.
                        raise RetriesExhausted(may_have_acted, attempt) from exc
                    raise
                if exc.code is not ErrorCode.RATE_LIMITED:  # a 429 ran nothing
                    may_have_acted = exc
                if exc.unreadable_answer:
                    breaker.on_success()  # it answered; a retry gets the same answer
                    raise RetriesExhausted(exc, attempt) from exc
                if exc.code is ErrorCode.IDEMPOTENCY_ERROR:
                    # A 409: a concurrent request holds the key (a crashed worker's, or
                    # our own timed-out attempt the provider is still running). No
                    # verdict either way: one busy key must not open the tenant's
                    # circuit, nor erase the timeouts before it (a slow provider gives
                    # timeout, 409, timeout, 409...: review finding).
                    breaker.release(trial)
                elif exc.local_dependency:
                    # The gateway's own store refused, the provider never asked: a
                    # failure of neither (Redis down must not park the tenant's reads).
                    breaker.release(trial)
                else:
                    breaker.on_failure(trial)
                if attempt == self.max_attempts or not exc.retry_now:
                    raise RetriesExhausted(exc, attempt) from exc
                # A provider's own hint wins: e.g. an idempotency key still held by a
                # crashed worker's request frees up only when that claim expires.
                hinted = min(exc.retry_after, _MAX_HINTED_DELAY_SECONDS) if exc.retry_after else 0.0
                await self.sleep(max(self.delay(attempt), hinted))
                continue
            except Exception:
                # Not an answer from the provider (a bug, an unmapped client error): a
                # failure all the same, or a half-open circuit would wait for its probe
                # for ever and park every command of the tenant until a restart.
                breaker.on_failure(trial)
                raise
            except BaseException:
                breaker.release(trial)  # cancelled (shutdown, deadline): no verdict
                raise
            breaker.on_success()
            return result
        raise AssertionError("unreachable: the loop returns or raises")

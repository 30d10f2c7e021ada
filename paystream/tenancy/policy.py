"""Per-tenant provider call wrapper: time limit + metrics around the gateway RetryPolicy."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from paystream import metrics
from paystream.gateways.deadlines import CallDeadlines
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.retry import CircuitState, RetryPolicy
from paystream.settings import Settings
from paystream.tenancy.models import Tenant

__all__ = ["call_policy"]

T = TypeVar("T")


def call_policy(settings: Settings) -> Callable[[Tenant], Callable[..., Awaitable[Any]]]:
    """Per-tenant call wrappers sharing one RetryPolicy (and its breakers) per worker."""
    policy = RetryPolicy.from_settings(settings)
    timeout = settings.gateway_timeout_seconds
    # A limit may overrun by one tick: a tenth of it, at most 100 ms.
    deadlines = CallDeadlines(tick=min(0.1, timeout / 10))

    def for_tenant(tenant: Tenant) -> Callable[..., Awaitable[Any]]:
        provider = tenant.gateway
        # Label lookups cost more than the updates: resolve them once per tenant wrapper.
        breaker_open = metrics.BREAKER_OPEN.labels(tenant.tenant_id, provider)
        call_seconds: dict[str, Any] = {}

        async def attempt(fn: Callable[[], Awaitable[T]]) -> T:
            started = time.perf_counter()
            result = "ok"
            try:
                with deadlines.limit(timeout):
                    return await fn()
            except TimeoutError as exc:
                result = ErrorCode.TIMEOUT.value
                # Retried with the same idempotency key: the provider may have acted.
                raise GatewayError(
                    ErrorCode.TIMEOUT, f"no answer within {timeout}s", provider=provider
                ) from exc
            except GatewayError as exc:
                result = exc.code.value
                raise
            finally:
                histogram = call_seconds.get(result)
                if histogram is None:
                    histogram = call_seconds[result] = metrics.GATEWAY_CALLS.labels(
                        provider, result
                    )
                histogram.observe(time.perf_counter() - started)

        breaker = policy.breaker(tenant.tenant_id, provider)
        shown: list[CircuitState | None] = [None]  # the state the gauge shows

        async def call(fn: Callable[[], Awaitable[T]]) -> T:
            try:
                return await policy.call(tenant.tenant_id, provider, lambda: attempt(fn))
            finally:
                if breaker.state is not shown[0]:  # a gauge update per call cost ~1%
                    shown[0] = breaker.state
                    breaker_open.set(0 if breaker.state is CircuitState.CLOSED else 1)

        return call

    return for_tenant

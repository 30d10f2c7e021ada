"""Per-tenant provider call wrapper: time limit + metrics around the gateway RetryPolicy."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from paystream import metrics
from paystream.gateways.deadlines import CallDeadlines
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.retry import RetryPolicy
from paystream.settings import Settings
from paystream.tenancy.models import Tenant

__all__ = ["CallPolicy", "call_policy"]

T = TypeVar("T")


class CallPolicy:
    """Per-tenant call wrappers sharing one RetryPolicy (and its breakers) per worker."""

    def __init__(self, settings: Settings) -> None:
        self.policy = RetryPolicy.from_settings(settings)
        metrics.BREAKER_OPEN.track(self.policy)
        self.timeout = settings.gateway_timeout_seconds
        # A limit may overrun by one tick: a tenth of it, at most 100 ms.
        self.deadlines = CallDeadlines(tick=min(0.1, self.timeout / 10))

    def forget(self, tenant_id: str) -> None:
        """The tenant was removed or changed provider: its circuits go (and their gauge)."""
        self.policy.forget(tenant_id)

    def __call__(self, tenant: Tenant) -> Callable[..., Awaitable[Any]]:
        policy, deadlines, timeout = self.policy, self.deadlines, self.timeout
        provider = tenant.gateway
        # Label lookups cost more than the updates: resolve them once per tenant wrapper.
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

        async def call(fn: Callable[[], Awaitable[T]]) -> T:
            return await policy.call(tenant.tenant_id, provider, lambda: attempt(fn))

        return call


def call_policy(settings: Settings) -> CallPolicy:
    """The worker's provider call policy (one per process: its breakers are shared)."""
    return CallPolicy(settings)

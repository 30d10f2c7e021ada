"""Per-tenant provider call wrapper: time limit + metrics around the gateway RetryPolicy."""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from prometheus_client import Histogram

from paystream import metrics
from paystream.gateways.deadlines import CallDeadlines
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.retry import RetryPolicy
from paystream.settings import Settings
from paystream.tenancy.models import Tenant

__all__ = ["CALL_CANCELED", "CALL_ERROR", "CallPolicy", "call_policy", "observer"]

T = TypeVar("T")

# The call histogram's results besides "ok" and the gateway error codes.
CALL_ERROR = "error"
CALL_CANCELED = "canceled"


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
            except asyncio.CancelledError:
                result = CALL_CANCELED  # (the agent stopping: it was no answer)
                raise
            except Exception:
                result = CALL_ERROR  # (a failure of the gateway code's own)
                raise
            finally:
                observe = call_seconds.get(result)
                if observe is None:
                    observe = call_seconds[result] = observer(
                        metrics.GATEWAY_CALLS.labels(provider, result)
                    )
                observe(time.perf_counter() - started)

        def call(fn: Callable[[], Awaitable[T]]) -> Awaitable[T]:
            # The retry loop's own coroutine, handed back to be awaited: no coroutine of
            # this wrapper's around it (it would only pass the result through).
            return policy.call(tenant.tenant_id, provider, lambda: attempt(fn))

        return call


def observer(histogram: Histogram) -> Callable[[float], None]:
    """``histogram.observe`` for one labelled child, the same counts at half the cost.

    prometheus_client's observe checks, per call, that the metric is not a parent with
    labels and whether an exemplar came, then walks the bucket bounds in Python; here
    the check is made once and the bucket found by bisection. Same updates: the sum,
    then the first bucket whose bound is not below the value (none for a NaN, as there).
    A histogram not laid out as expected keeps its own ``observe``."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if not (isinstance(bounds, list) and isinstance(buckets, list) and total is not None):
        return histogram.observe
    if len(bounds) != len(buckets) or bounds != sorted(bounds):
        return histogram.observe
    histogram._raise_if_not_observable()
    last = len(bounds)

    def observe(amount: float) -> None:
        total.inc(amount)
        i = bisect_left(bounds, amount)
        if i < last and amount <= bounds[i]:
            buckets[i].inc(1)

    return observe


def call_policy(settings: Settings) -> CallPolicy:
    """The worker's provider call policy (one per process: its breakers are shared)."""
    return CallPolicy(settings)

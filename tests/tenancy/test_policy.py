"""The call policy around every provider call: time limit, retries, breaker gauge."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from paystream import metrics
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.retry import SHOWN_IDLE_SECONDS, RetriesExhausted
from paystream.settings import load_settings
from paystream.tenancy.models import Tenant
from paystream.tenancy.policy import call_policy


def _tenant() -> Tenant:
    return Tenant(tenant_id="t-deadline", gateway="simulator")


async def test_policy_turns_a_slow_provider_into_a_retried_timeout() -> None:
    settings = load_settings(
        gateway_timeout_seconds=0.05, gateway_max_attempts=2, gateway_backoff_base_ms=1
    )
    call = call_policy(settings)(_tenant())
    attempts = 0

    async def slow() -> str:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(5)
        return "never"

    with pytest.raises(RetriesExhausted) as caught:
        await call(slow)
    assert attempts == 2
    assert caught.value.code is ErrorCode.TIMEOUT
    assert "no answer within 0.05s" in caught.value.message
    timeouts = metrics.GATEWAY_CALLS.labels("simulator", ErrorCode.TIMEOUT.value)
    assert timeouts._sum.get() > 0


async def test_policy_passes_answers_and_provider_errors_through() -> None:
    call = call_policy(load_settings(gateway_timeout_seconds=1.0))(_tenant())

    async def answers() -> str:
        await asyncio.sleep(0)
        return "ok"

    async def declines() -> str:
        raise GatewayError(ErrorCode.CARD_DECLINED, "declined", provider="simulator")

    assert await call(answers) == "ok"
    with pytest.raises(GatewayError) as caught:
        await call(declines)
    assert caught.value.code is ErrorCode.CARD_DECLINED


def _calls(result: str, provider: str = "paddle-x") -> float:
    value = REGISTRY.get_sample_value(
        "paystream_gateway_call_seconds_count", {"provider": provider, "result": result}
    )
    return value or 0.0


async def test_a_call_that_failed_otherwise_is_not_counted_ok() -> None:
    """A failure of the gateway code's own (a bug: internal_error) and a call cut short
    by the worker stopping were both counted result="ok", hiding them from the error
    ratio alert (review finding)."""
    call = call_policy(load_settings(gateway_timeout_seconds=5.0))(
        Tenant(tenant_id="t-errors", gateway="paddle-x")
    )

    async def broken() -> str:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        await call(broken)

    async def hangs() -> str:
        await asyncio.sleep(5)
        return "never"

    task = asyncio.ensure_future(call(hangs))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (_calls("error"), _calls("canceled"), _calls("ok")) == (1.0, 1.0, 0.0)


def _circuit_open(tenant: str, provider: str = "simulator") -> float | None:
    return REGISTRY.get_sample_value(
        "paystream_circuit_open", {"tenant": tenant, "provider": provider}
    )


async def _down() -> str:
    raise GatewayError(ErrorCode.PROVIDER_UNAVAILABLE, "503", provider="simulator")


async def test_policy_breaker_gauge_follows_the_circuit() -> None:
    settings = load_settings(
        gateway_timeout_seconds=1.0,
        gateway_max_attempts=1,
        breaker_failure_threshold=1,
        breaker_reset_seconds=60,
    )
    tenant = Tenant(tenant_id="t-gauge", gateway="simulator")
    call = call_policy(settings)(tenant)

    async def ok() -> str:
        return "ok"

    await call(ok)
    assert _circuit_open("t-gauge") == 0
    with pytest.raises(RetriesExhausted):
        await call(_down)
    assert _circuit_open("t-gauge") == 1
    await asyncio.sleep(0)
    assert _circuit_open("t-gauge") == 1  # held back until its probe is due


async def test_a_circuit_shows_open_between_probes_and_not_once_nobody_calls_it() -> None:
    """A provider down for a quiet tenant (a command a minute) shows open throughout,
    between probes too; once nobody calls the circuit (its tenant's partitions moved to
    another worker) it stops showing open after a while, not for the process's life."""
    settings = load_settings(
        gateway_max_attempts=1, breaker_failure_threshold=1, breaker_reset_seconds=5
    )
    policy = call_policy(settings)
    now = [1000.0]
    policy.policy.clock = lambda: now[0]
    call = policy(Tenant(tenant_id="t-quiet", gateway="simulator"))
    for _ in range(10):  # a command a minute, the provider down all along
        with pytest.raises(RetriesExhausted):
            await call(_down)
        assert _circuit_open("t-quiet") == 1
        now[0] += 30
        assert _circuit_open("t-quiet") == 1  # between probes (the scrape misses nothing)
        now[0] += 30
    now[0] += SHOWN_IDLE_SECONDS
    assert _circuit_open("t-quiet") == 0  # nobody calls it here any more


async def test_a_forgotten_tenant_has_no_circuit_gauge() -> None:
    settings = load_settings(
        gateway_max_attempts=1, breaker_failure_threshold=1, breaker_reset_seconds=60
    )
    policy = call_policy(settings)
    with pytest.raises(RetriesExhausted):
        await policy(Tenant(tenant_id="t-gone", gateway="simulator"))(_down)
    assert _circuit_open("t-gone") == 1
    policy.forget("t-gone")
    assert _circuit_open("t-gone") is None


def test_the_call_histogram_counts_as_prometheus_client_does() -> None:
    import math

    from prometheus_client import CollectorRegistry, Histogram

    from paystream.tenancy.policy import observer

    registry = CollectorRegistry()
    hist = Histogram(
        "t_seconds", "t", ["way"], buckets=(0.001, 0.005, 0.01, 1, 10), registry=registry
    )
    values = [0.0, 0.0005, 0.001, 0.0010001, 0.005, 0.007, 0.01, 0.5, 1, 9.99, 10, 11, 1e9]
    values += [-1.0, math.inf, math.nan]
    fast = observer(hist.labels("fast"))
    for value in values:
        hist.labels("slow").observe(value)
        fast(value)

    def samples(way: str) -> list[tuple[str, dict[str, str], float]]:
        out = []
        for metric in registry.collect():
            for s in metric.samples:
                if s.labels.get("way") == way and not s.name.endswith("_created"):
                    labels = {k: v for k, v in s.labels.items() if k != "way"}
                    out.append((s.name, labels, s.value))
        return out

    slow, quick = samples("slow"), samples("fast")
    assert len(slow) == len(quick) > 0
    for (n1, l1, v1), (n2, l2, v2) in zip(slow, quick, strict=True):
        assert (n1, l1) == (n2, l2)
        assert v1 == v2 or (math.isnan(v1) and math.isnan(v2))


def test_a_histogram_with_labels_cannot_be_observed_directly() -> None:
    from prometheus_client import CollectorRegistry, Histogram

    from paystream.tenancy.policy import observer

    hist = Histogram("u_seconds", "u", ["way"], registry=CollectorRegistry())
    with pytest.raises(ValueError, match="missing label values"):
        observer(hist)(1.0)

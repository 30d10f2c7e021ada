"""The per-tenant gateway pool: clients built once per tenant record, let go of when the
tenant goes, and a tenant whose gateway cannot be built tried once per record."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from pydantic import SecretStr

from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.registry import GatewayDeps
from paystream.gateways.retry import RetriesExhausted
from paystream.settings import load_settings
from paystream.tenancy import gateways as pool_module
from paystream.tenancy.crypto import CryptoError
from paystream.tenancy.gateways import GatewayPool
from paystream.tenancy.models import Tenant
from paystream.tenancy.policy import call_policy

SEALED = {"api_key": "v1.mk-0000.AAAA.AAAA"}


async def down() -> None:
    raise GatewayError(ErrorCode.PROVIDER_UNAVAILABLE, "503", provider="simulator")


@pytest_asyncio.fixture
async def simulator_pool(redis_url: str) -> AsyncIterator[GatewayPool]:
    """A pool whose simulator tenants keep their state in a real Redis."""
    redis = aioredis.from_url(redis_url)
    pool = _pool([], redis)
    try:
        yield pool
    finally:
        await pool.aclose()
        await redis.aclose()


def _pool(opened: list[str], redis: object = None, **kw: object) -> GatewayPool:
    def open_secret(tenant: Tenant, name: str) -> SecretStr:
        opened.append(tenant.tenant_id)
        raise CryptoError(f"{name} is sealed under master key mk-0000, which is not loaded")

    settings = load_settings(gateway_max_attempts=1, breaker_failure_threshold=1, **kw)
    return GatewayPool(
        GatewayDeps(settings=settings, redis=redis),
        open_secret=open_secret,
        call_policy=call_policy(settings),
    )


async def test_a_tenant_whose_gateway_cannot_be_built_is_tried_and_logged_once_per_record(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A secret sealed under a key the worker lacks: every command used to rebuild the
    gateway, try the decryption again and log a warning (500 commands, 500 lines)."""
    opened: list[str] = []
    pool = _pool(opened)
    tenant = Tenant(tenant_id="t-sealed", gateway="stripe", secrets=SEALED)
    with caplog.at_level(logging.WARNING, logger=pool_module.__name__):
        for _ in range(50):
            # A fresh Tenant object each time, as the registry hands one per record read.
            with pytest.raises(CryptoError):
                pool.get(Tenant.model_validate(tenant.model_dump()))
    assert opened == ["t-sealed"]
    warnings = [r for r in caplog.records if "t-sealed" in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    assert "AAAA" not in caplog.text
    # The record changes (a rotated secret): built, and refused, afresh.
    changed = Tenant(tenant_id="t-sealed", gateway="stripe", secrets={"api_key": "v1.mk-0001.B.B"})
    with pytest.raises(CryptoError):
        pool.get(changed)
    assert opened == ["t-sealed", "t-sealed"]
    await pool.aclose()


async def test_a_removed_tenant_s_client_is_closed_and_its_circuit_forgotten(
    simulator_pool: GatewayPool,
) -> None:
    pool = simulator_pool
    kept = Tenant(tenant_id="t-kept", gateway="simulator")
    gone = Tenant(tenant_id="t-removed", gateway="simulator")
    gone_gateway = pool.get(gone)
    pool.get(kept)
    closed: list[str] = []
    original = gone_gateway.aclose

    async def aclose() -> None:
        closed.append("t-removed")
        await original()

    gone_gateway.aclose = aclose  # type: ignore[method-assign]
    with pytest.raises(RetriesExhausted):
        await pool.call_for(gone)(down)
    labels = {"tenant": "t-removed", "provider": "simulator"}
    assert REGISTRY.get_sample_value("paystream_circuit_open", labels) == 1

    kept_gateway = pool.get(kept)
    pool.retire_absent({"t-kept", "t-removed"})
    await pool.close_retired()
    assert closed == []  # both still registered
    pool.retire_absent({"t-kept"})
    await pool.close_retired()
    assert closed == ["t-removed"]
    assert REGISTRY.get_sample_value("paystream_circuit_open", labels) is None
    assert pool.get(kept) is kept_gateway  # the others keep their clients
    await pool.aclose()
    assert closed == ["t-removed"]  # closed once


async def test_the_registry_sweep_runs_between_batches_when_due(
    simulator_pool: GatewayPool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool = simulator_pool
    swept = pool.get(Tenant(tenant_id="t-swept", gateway="simulator"))
    staying = Tenant(tenant_id="t-staying", gateway="simulator")
    stays = pool.get(staying)
    await pool.close_retired(set())
    assert pool.get(staying) is stays  # the sweep is not due yet: nothing let go
    monkeypatch.setattr(pool_module, "ABSENT_SWEEP_SECONDS", 0.0)
    await pool.close_retired({"t-staying"})
    assert pool.get(staying) is stays
    assert pool.get(Tenant(tenant_id="t-swept", gateway="simulator")) is not swept


async def test_a_tenant_moved_to_another_provider_loses_the_old_circuit(
    simulator_pool: GatewayPool,
) -> None:
    pool = simulator_pool
    before = Tenant(tenant_id="t-moving", gateway="simulator")
    pool.get(before)
    with pytest.raises(RetriesExhausted):
        await pool.call_for(before)(down)
    labels = {"tenant": "t-moving", "provider": "simulator"}
    assert REGISTRY.get_sample_value("paystream_circuit_open", labels) == 1
    with pytest.raises(GatewayError):  # (its Stripe key not given yet)
        pool.get(Tenant(tenant_id="t-moving", gateway="stripe"))
    assert REGISTRY.get_sample_value("paystream_circuit_open", labels) is None


def test_the_cached_build_error_does_not_gather_every_command_s_frames() -> None:
    """Re-raised for every command of the tenant, one shared error's traceback grew by
    each command's frames, keeping their data alive (8.6 kB a command, e-mails in it)."""
    pool = _pool([])
    tenant = Tenant(tenant_id="t-tb", gateway="stripe")  # no api_key: cannot be built

    def deep(n: int) -> None:  # a command's own frames around the call
        if n:
            deep(n - 1)
        else:
            pool.get(Tenant.model_validate(tenant.model_dump()))

    depths = []
    for _ in range(200):
        with pytest.raises(GatewayError) as refused:
            deep(5)
        tb, depth = refused.value.__traceback__, 0
        while tb is not None:
            depth, tb = depth + 1, tb.tb_next
        depths.append(depth)
    assert max(depths) == depths[0] < 20, depths[-5:]


async def test_a_changed_tenant_record_retires_and_closes_its_old_client(
    simulator_pool: GatewayPool,
) -> None:
    """A rotated key or a changed option builds a new client: the old one's connection
    pool must be closed, not leaked on every rotation (mutation testing)."""
    pool = simulator_pool
    before = Tenant(tenant_id="t-rotated", gateway="simulator")
    old = pool.get(before)
    closed: list[object] = []
    original = old.aclose

    async def aclose() -> None:
        closed.append(old)
        await original()

    old.aclose = aclose  # type: ignore[method-assign]
    after = before.model_copy(update={"gateway_options": {"latency_ms": 1}})
    new = pool.get(after)
    assert new is not old and pool.get(after) is new
    await pool.close_retired()
    assert closed == [old]

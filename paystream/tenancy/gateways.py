"""Per-tenant gateway instances, built from the tenant record and cached until it changes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import SecretStr

from paystream.gateways.base import GatewayContext, PaymentGateway
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.registry import GatewayDeps, build_gateway
from paystream.tenancy.models import Tenant

__all__ = ["GatewayPool", "SecretOpener"]

T = TypeVar("T")
SecretOpener = Callable[[Tenant, str], SecretStr]
GatewayCall = Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]


async def _direct(fn: Callable[[], Awaitable[T]]) -> T:
    return await fn()


class GatewayPool:
    """One gateway per tenant (like one StripeClient per tenant); never shared credentials."""

    def __init__(
        self,
        deps: GatewayDeps,
        open_secret: SecretOpener | None = None,
        call_policy: Callable[[Tenant], GatewayCall] | None = None,
    ) -> None:
        self.deps = deps
        self._open_secret = open_secret
        self._call_policy = call_policy
        self._cache: dict[str, tuple[str, PaymentGateway]] = {}
        # The pipeline hands the same Tenant object until the record changes: an identity
        # check spares hashing the tenant's configuration on every command.
        self._last_seen: dict[str, tuple[Tenant, PaymentGateway]] = {}
        self._calls: dict[str, tuple[Tenant, GatewayCall]] = {}
        self._retired: list[PaymentGateway] = []

    def get(self, tenant: Tenant) -> PaymentGateway:
        seen = self._last_seen.get(tenant.tenant_id)
        if seen is not None and seen[0] is tenant:
            return seen[1]
        gateway = self._get(tenant)
        self._last_seen[tenant.tenant_id] = (tenant, gateway)
        return gateway

    def _get(self, tenant: Tenant) -> PaymentGateway:
        fingerprint = _fingerprint(tenant)
        cached = self._cache.get(tenant.tenant_id)
        if cached is not None and cached[0] == fingerprint:
            return cached[1]
        credentials: dict[str, SecretStr] = {}
        for name in tenant.secrets:
            if self._open_secret is None:
                raise GatewayError(
                    ErrorCode.AUTHENTICATION_FAILED,
                    "tenant secrets cannot be opened: PAYSTREAM_MASTER_KEY is not configured",
                    provider=tenant.gateway,
                    retryable=False,
                )
            credentials[name] = self._open_secret(tenant, name)
        ctx = GatewayContext(
            tenant_id=tenant.tenant_id,
            provider=tenant.gateway,
            credentials=credentials,
            options=tenant.gateway_options,
            connected_account=tenant.connected_account,
        )
        gateway = build_gateway(ctx, self.deps)
        if cached is not None:
            # The tenant's record changed (e.g. a rotated key): retire the old client.
            self._retired.append(cached[1])
        self._cache[tenant.tenant_id] = (fingerprint, gateway)
        return gateway

    def call_for(self, tenant: Tenant) -> GatewayCall:
        """The retry/circuit-breaker wrapper for this tenant's provider calls."""
        if self._call_policy is None:
            return _direct
        cached = self._calls.get(tenant.tenant_id)
        if cached is None or cached[0] is not tenant:
            cached = self._calls[tenant.tenant_id] = (tenant, self._call_policy(tenant))
        return cached[1]

    async def close_retired(self) -> None:
        """Close clients replaced since the last call (between batches, never mid-call)."""
        retired, self._retired = self._retired, []
        for gateway in retired:
            await gateway.aclose()

    async def aclose(self) -> None:
        await self.close_retired()
        for _, gateway in self._cache.values():
            await gateway.aclose()
        self._cache.clear()
        self._last_seen.clear()


def _fingerprint(tenant: Tenant) -> str:
    material = json.dumps(
        [tenant.gateway, tenant.gateway_options, tenant.secrets, tenant.connected_account],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(material.encode()).hexdigest()

"""Per-tenant gateway instances, built from the tenant record and cached until it changes."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Container
from typing import Any, TypeVar

from pydantic import SecretStr

from paystream.errors import ConfigurationError
from paystream.gateways.base import GatewayContext, PaymentGateway
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.registry import GatewayDeps, build_gateway
from paystream.tenancy.crypto import CryptoError
from paystream.tenancy.models import Tenant

__all__ = ["GatewayPool", "SecretOpener"]

log = logging.getLogger(__name__)

# How often the pool looks for tenants removed from the registry (their clients closed).
ABSENT_SWEEP_SECONDS = 30.0
# Credentials and connected accounts travel in provider HTTP headers, which refuse these.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

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
        # A tenant whose gateway cannot be built (a secret sealed under a key this worker
        # lacks, bad options): the error, until its record changes. Rebuilt and logged
        # for every command, a misconfigured tenant flooded the log and cost a decryption
        # attempt per command.
        self._failed: dict[str, tuple[str, Exception]] = {}
        self._swept_at = time.monotonic()

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
        failed = self._failed.get(tenant.tenant_id)
        if failed is not None and failed[0] == fingerprint:
            # Without its traceback: one shared error raised for every command would
            # otherwise gather each command's frames (and their data) without end.
            raise failed[1].with_traceback(None)
        if cached is not None and cached[1].provider != tenant.gateway:
            self._forget_circuits(tenant.tenant_id)  # its old provider's
        try:
            gateway = self._build(tenant)
        except (GatewayError, CryptoError, ConfigurationError) as exc:
            self._failed[tenant.tenant_id] = (fingerprint, exc)
            # Once per record: messages name key ids and options, never secrets.
            log.warning("tenant %s: gateway not usable: %s", tenant.tenant_id, exc)
            raise
        self._failed.pop(tenant.tenant_id, None)
        if cached is not None:
            # The tenant's record changed (e.g. a rotated key): retire the old client.
            self._retired.append(cached[1])
        self._cache[tenant.tenant_id] = (fingerprint, gateway)
        return gateway

    def _build(self, tenant: Tenant) -> PaymentGateway:
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
            if _CONTROL.search(credentials[name].get_secret_value()):
                # (e.g. a key read from a file with its newline) The HTTP client refuses
                # such a header: every call failed as the provider unreachable, retried
                # behind an opening circuit. The message never shows the value.
                raise GatewayError(
                    ErrorCode.AUTHENTICATION_FAILED,
                    f"tenant secret {name!r} holds a control character (a trailing newline?): "
                    "set it again with `paystream tenants add --secret`",
                    provider=tenant.gateway,
                    retryable=False,
                )
        if tenant.connected_account is not None and _CONTROL.search(tenant.connected_account):
            raise ConfigurationError("the tenant's connected account holds a control character")
        ctx = GatewayContext(
            tenant_id=tenant.tenant_id,
            provider=tenant.gateway,
            credentials=credentials,
            options=tenant.gateway_options,
            connected_account=tenant.connected_account,
        )
        return build_gateway(ctx, self.deps)

    def call_for(self, tenant: Tenant) -> GatewayCall:
        """The retry/circuit-breaker wrapper for this tenant's provider calls."""
        if self._call_policy is None:
            return _direct
        cached = self._calls.get(tenant.tenant_id)
        if cached is None or cached[0] is not tenant:
            cached = self._calls[tenant.tenant_id] = (tenant, self._call_policy(tenant))
        return cached[1]

    async def close_retired(self, registered: Container[str] | None = None) -> None:
        """Close clients replaced since the last call (between batches, never mid-call),
        and, every ``ABSENT_SWEEP_SECONDS``, those of tenants no longer ``registered``."""
        if registered is not None and time.monotonic() - self._swept_at >= ABSENT_SWEEP_SECONDS:
            self._swept_at = time.monotonic()
            self.retire_absent(registered)
        retired, self._retired = self._retired, []
        for gateway in retired:
            await gateway.aclose()

    def retire_absent(self, registered: Container[str]) -> None:
        """Let go of what the pool holds for tenants removed from the registry: their
        clients (each holds a connection pool) are closed at the next ``close_retired``,
        and their circuits forgotten."""
        known = self._cache.keys() | self._failed.keys() | self._calls.keys()
        for tenant_id in [t for t in known if t not in registered]:
            cached = self._cache.pop(tenant_id, None)
            if cached is not None:
                self._retired.append(cached[1])
            self._last_seen.pop(tenant_id, None)
            self._calls.pop(tenant_id, None)
            self._failed.pop(tenant_id, None)
            self._forget_circuits(tenant_id)

    def _forget_circuits(self, tenant_id: str) -> None:
        forget = getattr(self._call_policy, "forget", None)
        if forget is not None:
            forget(tenant_id)

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

"""Master-key rotation: re-wrap everything the retired master keys still protect.

Procedure (README "Rotating the master key"): run every worker with the new key as
``PAYSTREAM_MASTER_KEY`` and the old one in ``PAYSTREAM_RETIRED_MASTER_KEYS``; run
``paystream keys rotate``; then drop the retired key. Only data keys are re-wrapped: a
tenant secret's ciphertext and the ledger's encrypted rows are never rewritten.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from paystream.settings import Settings
from paystream.tenancy.crypto import CryptoError, MasterKeyring
from paystream.tenancy.models import Tenant
from paystream.tenancy.registry import put_tenants_unless_changed, read_registry
from paystream.tenancy.secrets import reseal_secret

__all__ = ["RotationReport", "reseal_registry_secrets", "rewrap_ledger_keys"]

log = logging.getLogger(__name__)


@dataclass
class RotationReport:
    tenants: list[str] = field(default_factory=list)  # every registered tenant
    secrets_resealed: int = 0
    tenants_changed: int = 0
    unreadable: list[str] = field(default_factory=list)  # records this version cannot read
    changed_meanwhile: list[str] = field(default_factory=list)  # left for the next run
    # "tenant/secret: why" for secrets no key in the keyring opens (left as they are)
    unopenable: list[str] = field(default_factory=list)
    ledger_keys_rewrapped: int | None = None  # None: the ledger was not touched


async def reseal_registry_secrets(
    settings: Settings,
    keyring: MasterKeyring,
    report: RotationReport,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Re-seal every tenant secret not under the keyring's current master key."""
    registry = await read_registry(settings)
    report.unreadable = sorted(registry.unreadable)
    tenants = [t for tid, t in registry.tenants.items() if tid not in registry.unreadable]
    report.tenants = sorted(registry.tenants)
    writes: list[tuple[Tenant | None, Tenant]] = []
    counts: dict[str, int] = {}
    for n, tenant in enumerate(tenants, 1):
        secrets = dict(tenant.secrets)
        for name, sealed in tenant.secrets.items():
            try:
                secrets[name] = reseal_secret(keyring, tenant.tenant_id, name, sealed)
            except CryptoError as exc:
                # One secret no key opens (workers answer its tenant gateway_not_configured)
                # must not stop every other tenant's rotation; it is named in the report.
                report.unopenable.append(f"{tenant.tenant_id}/{name}: {exc}")
        changed = sum(secrets[name] != sealed for name, sealed in tenant.secrets.items())
        if changed:
            writes.append((tenant, tenant.model_copy(update={"secrets": secrets})))
            counts[tenant.tenant_id] = changed
        if progress:
            progress(n, len(tenants))
    # One more read of the registry for all of them: a tenant changed meanwhile (another
    # operator) is left as it is, for the next run.
    report.changed_meanwhile = await put_tenants_unless_changed(settings, writes)
    for tenant_id, changed in counts.items():
        if tenant_id not in report.changed_meanwhile:
            report.secrets_resealed += changed
            report.tenants_changed += 1


async def rewrap_ledger_keys(
    database_url: str, keyring: MasterKeyring, tenant_ids: Iterable[str]
) -> int:
    """Re-wrap the ledger's data keys of these tenants, as the RLS-bound application role."""
    from paystream.ledger import assert_rls_enforced, create_engine, rotate_master_key

    engine = create_engine(database_url, hide_parameters=True)
    try:
        # Unbound by RLS, a tenant's session would see (and fail to unwrap) others' keys.
        await assert_rls_enforced(engine)
        return await rotate_master_key(engine, keyring, tenant_ids)
    finally:
        await engine.dispose()

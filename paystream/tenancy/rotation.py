"""Master-key rotation: re-wrap everything the retired master keys still protect.

Procedure (README "Rotating the master key"): run every worker with the new key as
``PAYSTREAM_MASTER_KEY`` and the old one in ``PAYSTREAM_RETIRED_MASTER_KEYS``; run
``paystream keys rotate``; then drop the retired key from the workers (audit
verification still needs it: audit rows stay keyed under the key they were written
with). Only data keys are re-wrapped: a tenant secret's ciphertext and the ledger's
encrypted rows are never rewritten; where each audit chain stands under the retired key
is recorded, so that rows under it past that are reported.
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

__all__ = [
    "RotationReport",
    "ledger_keys_left",
    "record_audit_retirements",
    "reseal_registry_secrets",
    "rewrap_ledger_keys",
    "secrets_left",
]

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
    # "tenant/key_ref: why" for ledger data keys no key in the keyring opens (left)
    ledger_unopenable: list[str] = field(default_factory=list)


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
    database_url: str,
    keyring: MasterKeyring,
    tenant_ids: Iterable[str],
    unopenable: list[str] | None = None,
) -> int:
    """Re-wrap the ledger's data keys of these tenants, as the RLS-bound application role
    (``unopenable``: those no key opens, named and left as they are)."""
    from paystream.ledger import assert_rls_enforced, create_engine, rotate_master_key

    engine = create_engine(database_url, hide_parameters=True)
    try:
        # Unbound by RLS, a tenant's session would see (and fail to unwrap) others' keys.
        await assert_rls_enforced(engine)
        return await rotate_master_key(engine, keyring, tenant_ids, unopenable)
    finally:
        await engine.dispose()


async def secrets_left(settings: Settings, current_key_id: str) -> list[str]:
    """Tenants whose latest registry record still holds a secret sealed under another
    master key (or that this version cannot read): the retired key must stay."""
    registry = await read_registry(settings)
    left = set(registry.unreadable)
    for tenant_id, tenant in registry.tenants.items():
        if any(_sealed_under(sealed) != current_key_id for sealed in tenant.secrets.values()):
            left.add(tenant_id)
    return sorted(left)


def _sealed_under(sealed: str) -> str:
    parts = sealed.split(".")
    return parts[1] if len(parts) == 4 else ""


async def ledger_keys_left(owner_url: str, current_key_id: str) -> dict[str, int]:
    """Per tenant, ledger data keys still wrapped under another master key (as the
    owner: RLS shows the application role one tenant's keys at a time)."""
    from sqlalchemy import text

    from paystream.ledger import create_engine

    engine = create_engine(owner_url, hide_parameters=True)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT tenant_id, count(*) FROM data_keys WHERE master_key_id <> :current"
                    " GROUP BY tenant_id ORDER BY tenant_id"
                ),
                {"current": current_key_id},
            )
            return {str(tenant): int(count) for tenant, count in rows}
    finally:
        await engine.dispose()


async def record_audit_retirements(
    owner_url: str, keyring: MasterKeyring, tenant_ids: Iterable[str]
) -> int:
    """As the owner: record, for every tenant with an audit chain and every one given,
    where its chain stands under each retired key (see ``ledger.audit``)."""
    from sqlalchemy import select
    from sqlalchemy.ext.asyncio import AsyncSession

    from paystream.ledger import create_engine
    from paystream.ledger.audit import record_retirements
    from paystream.ledger.models import AuditHead

    engine = create_engine(owner_url, hide_parameters=True)
    try:
        async with AsyncSession(engine) as session, session.begin():
            chains = (await session.scalars(select(AuditHead.tenant_id))).all()
            tenants = sorted({*chains, *tenant_ids})
            return await record_retirements(session, tenants, keyring)
    finally:
        await engine.dispose()

"""The registry writer's "put the other writer's record back on top" takes only records
under the tenant's own key, on the partition its own write went to (review h64e: records
under another spelling of the key were copied under the tenant's, removing it or lifting
its suspension). A record under another spelling is no change of the tenant's record."""

from __future__ import annotations

import json
from typing import Any

import pytest

from paystream.tenancy import registry as registry_module
from paystream.tenancy.models import Tenant, TenantStatus
from paystream.tenancy.registry import (
    RegistryChanged,
    put_tenant_unless_changed,
    read_registry,
    registered_tenant,
    tenant_record,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _partition_of(dep: Any, key: bytes) -> int:
    records = await dep.read_topic(dep.settings.tenants_topic)  # (put_tenant waited for it)
    return next(r.partition for r in records if r.key == key)


async def test_a_foreign_key_tombstone_landing_meanwhile_does_not_remove_the_tenant(
    deployment_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tool lifts a suspension it wrote under ' "acme"' (a tombstone under that key:
    for the mirror, only that foreign suspension goes) while an operator renames acme.
    The writer took the tombstone for another writer's record of acme's and wrote it
    again, under acme's own key, "on top": acme was removed from the registry."""
    dep = await deployment_factory()
    await dep.add_tenants(Tenant(tenant_id="acme"))
    partition = await _partition_of(dep, b'"acme"')
    base = await registered_tenant(dep.settings, "acme")
    assert base is not None
    checked = registry_module._read_registry_with_ends

    async def check_then_foreign_tombstone(settings: Any) -> Any:
        found = await checked(settings)
        # (the same partition as acme's own record: a tool may pick it)
        await dep.produce(dep.settings.tenants_topic, (b' "acme"', None, partition))
        return found

    monkeypatch.setattr(registry_module, "_read_registry_with_ends", check_then_foreign_tombstone)
    renamed = base.model_copy(update={"name": "Acme Inc"})
    await put_tenant_unless_changed(dep.settings, base, renamed)
    monkeypatch.undo()
    registry = await read_registry(dep.settings)
    # What the mirror makes of the three records (acme's, the foreign tombstone, ours):
    # acme, renamed (it was gone: every command unknown_tenant).
    assert registry.tenants["acme"].name == "Acme Inc"


async def test_a_foreign_key_active_record_landing_meanwhile_does_not_undo_a_suspension(
    deployment_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same with a record under ' "beta"' that says active (which the mirror never
    takes for beta's): copied under beta's own key on top of the operator's suspension,
    beta was active again."""
    dep = await deployment_factory()
    await dep.add_tenants(Tenant(tenant_id="beta"))
    partition = await _partition_of(dep, b'"beta"')
    base = await registered_tenant(dep.settings, "beta")
    assert base is not None
    checked = registry_module._read_registry_with_ends
    active = json.dumps(tenant_record(Tenant(tenant_id="beta"))).encode()

    async def check_then_foreign_record(settings: Any) -> Any:
        found = await checked(settings)
        await dep.produce(dep.settings.tenants_topic, (b' "beta"', active, partition))
        return found

    monkeypatch.setattr(registry_module, "_read_registry_with_ends", check_then_foreign_record)
    suspended = base.model_copy(update={"status": TenantStatus.SUSPENDED})
    await put_tenant_unless_changed(dep.settings, base, suspended)
    monkeypatch.undo()
    after = await registered_tenant(dep.settings, "beta")
    assert after is not None and after.status is TenantStatus.SUSPENDED, after


async def test_a_foreign_key_tombstone_on_its_own_partition_does_not_remove_the_tenant(
    deployment_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the first test, the tombstone partitioned by its own key's bytes, as any
    producer would: whether it was put back on top was decided by comparing its offset,
    in another partition, with ours."""
    dep = await deployment_factory()
    await dep.add_tenants(Tenant(tenant_id="acme"))
    base = await registered_tenant(dep.settings, "acme")
    assert base is not None
    checked = registry_module._read_registry_with_ends

    async def check_then_foreign_tombstone(settings: Any) -> Any:
        found = await checked(settings)
        await dep.produce(dep.settings.tenants_topic, (b' "acme"', None, None))
        return found

    monkeypatch.setattr(registry_module, "_read_registry_with_ends", check_then_foreign_tombstone)
    await put_tenant_unless_changed(dep.settings, base, base.model_copy(update={"name": "A"}))
    monkeypatch.undo()
    assert (await read_registry(dep.settings)).tenants["acme"].name == "A"


@pytest.mark.parametrize("same_partition", [True, False])
async def test_a_foreign_key_suspension_landing_meanwhile_stands(
    deployment_factory: Any, monkeypatch: pytest.MonkeyPatch, same_partition: bool
) -> None:
    """A tool's kill switch under ' "acme"' (the mirror honours a suspension there while
    it is newer than acme's own record) lands while an operator renames acme: the
    operator's record, landing after it, lifted it, and the command said nothing (review
    h64h). The rename is kept, suspended, and the operator told."""
    dep = await deployment_factory()
    await dep.add_tenants(Tenant(tenant_id="acme"))
    partition = await _partition_of(dep, b'"acme"') if same_partition else None
    base = await registered_tenant(dep.settings, "acme")
    assert base is not None
    suspended = json.dumps({**tenant_record(Tenant(tenant_id="acme")), "status": "suspended"})
    checked = registry_module._read_registry_with_ends

    async def check_then_foreign_suspension(settings: Any) -> Any:
        found = await checked(settings)
        await dep.produce(dep.settings.tenants_topic, (b' "acme"', suspended.encode(), partition))
        return found

    monkeypatch.setattr(registry_module, "_read_registry_with_ends", check_then_foreign_suspension)
    with pytest.raises(RegistryChanged):
        await put_tenant_unless_changed(
            dep.settings, base, base.model_copy(update={"name": "Acme Inc"})
        )
    monkeypatch.undo()
    after = (await read_registry(dep.settings)).tenants["acme"]
    assert after.status is TenantStatus.SUSPENDED, after
    assert after.name == "Acme Inc"

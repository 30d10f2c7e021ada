"""Mirror the tenant registry topic into the tenants global table on every worker."""

from __future__ import annotations

from typing import Any

from paystream.app import app, settings
from paystream.tables.definitions import tenants
from paystream.tenancy.models import Tenant
from paystream.tenancy.registry import tenant_record

__all__ = ["sync_tenants", "tenants_topic"]

tenants_topic = app.topic(
    settings.tenants_topic,
    key_type=str,
    key_serializer="json",
    value_serializer="json",
    partitions=settings.partitions,
)


@app.agent(tenants_topic, name="sync_tenants")
async def sync_tenants(stream: Any) -> None:
    """Validate tenant records and publish them to every worker's tenants table."""
    async for event in stream.events():
        tenant_id = event.key
        if event.value is None:
            tenants.pop(tenant_id, None)
            continue
        try:
            tenant = Tenant.model_validate(event.value)
        except ValueError:
            app.log.warning("ignoring invalid tenant record for %r", tenant_id)
            continue
        if tenant.tenant_id == tenant_id:
            # As on the registry topic: an older worker reads this table too.
            tenants[tenant_id] = tenant_record(tenant)

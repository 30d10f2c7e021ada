"""Read and write the tenant registry (the compacted `paystream.tenants` topic).

Keys and values are JSON (the tenant id as a JSON string, the record as a JSON object);
every worker follows the whole topic (tenancy/mirror.py).
"""

from __future__ import annotations

import json

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from paystream.errors import PaystreamError
from paystream.settings import Settings
from paystream.streams.admin import bootstrap_servers, topic_partitions
from paystream.tenancy.mirror import RegistryMirror
from paystream.tenancy.models import Tenant

__all__ = [
    "RegistryChanged",
    "UnreadableTenant",
    "list_tenants",
    "put_tenant",
    "put_tenant_unless_changed",
    "put_tenants_unless_changed",
    "read_registry",
    "registered_tenant",
    "tenant_record",
]


def tenant_record(tenant: Tenant) -> dict[str, object]:
    """The registry value; fields at their defaults that older workers do not know are
    left out, so a worker not yet upgraded still reads tenants that do not use them."""
    record = tenant.model_dump(mode="json")
    if not tenant.limits.enforced:
        del record["limits"]
    return record


async def put_tenant(settings: Settings, tenant: Tenant) -> None:
    # All in-sync replicas: a suspension acknowledged to the operator must not be lost.
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers(settings.require_broker()), acks="all"
    )
    await producer.start()
    try:
        await producer.send_and_wait(
            settings.tenants_topic,
            json.dumps(tenant_record(tenant), sort_keys=True).encode(),
            key=json.dumps(tenant.tenant_id).encode(),
        )
    finally:
        await producer.stop()


async def put_tenant_unless_changed(
    settings: Settings, base: Tenant | None, tenant: Tenant
) -> None:
    """Write ``tenant``, made from ``base``, only if the registry still holds ``base``.

    An operator command reads a tenant, may wait (a secret prompt), then writes the whole
    record: without this, another operator's suspension acknowledged meanwhile would be
    silently undone. (The check and the write are not one atomic step: the window left
    is the time of one registry read.)
    """
    changed = await put_tenants_unless_changed(settings, [(base, tenant)])
    if changed:
        raise RegistryChanged(
            f"{tenant.tenant_id} changed while this command ran (another operator?); "
            "nothing was written: run it again"
        )


async def put_tenants_unless_changed(
    settings: Settings, changes: list[tuple[Tenant | None, Tenant]]
) -> list[str]:
    """:func:`put_tenant_unless_changed` for many tenants with one registry read; returns
    the ids of those left unwritten because their record changed (or became unreadable)."""
    registry = await read_registry(settings)
    skipped = []
    for base, tenant in changes:
        tid = tenant.tenant_id
        if tid in registry.unreadable or registry.tenants.get(tid) != base:
            skipped.append(tid)
            continue
        await put_tenant(settings, tenant)
    return skipped


class RegistryChanged(PaystreamError):
    """The tenant's record changed between reading it and writing the change."""


async def list_tenants(settings: Settings) -> dict[str, Tenant]:
    """Every tenant, from the registry read from the beginning to its current end."""
    return (await read_registry(settings)).tenants


async def registered_tenant(settings: Settings, tenant_id: str) -> Tenant | None:
    """The tenant's current record, to change and write back; None if not registered.

    Raises :class:`UnreadableTenant` when its latest record cannot be read by this
    version: writing back the older record would undo that change.
    """
    registry = await read_registry(settings)
    if tenant_id in registry.unreadable:
        raise UnreadableTenant(
            f"the latest registry record of {tenant_id!r} cannot be read by this version of "
            "paystream (written by a newer one?): upgrade before changing it"
        )
    return registry.tenants.get(tenant_id)


class UnreadableTenant(PaystreamError):
    """A tenant's latest registry record cannot be read, so it must not be rewritten."""


async def read_registry(settings: Settings) -> RegistryMirror:
    """The registry read from the beginning to its current end; last write per key wins.

    Records this version cannot read are skipped with a warning, as workers skip them,
    and their tenants noted in ``unreadable``.
    """
    registry = RegistryMirror(settings)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers(settings.require_broker()),
        enable_auto_commit=False,
        fetch_max_wait_ms=50,
    )
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, settings.tenants_topic)
        if not tps:
            return registry
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        pending = {tp for tp in tps if ends[tp] > 0}
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=1000)
            for records in batch.values():
                for r in records:
                    registry.apply(r.key, r.value)
            pending = {tp for tp in pending if await consumer.position(tp) < ends[tp]}
        return registry
    finally:
        await consumer.stop()

"""Read and write the tenant registry (the compacted `paystream.tenants` topic).

Keys and values are JSON, matching the worker's tenants GlobalTable serializers.
"""

from __future__ import annotations

import json

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from paystream.settings import Settings
from paystream.streams.admin import bootstrap_servers
from paystream.tenancy.models import Tenant

__all__ = ["list_tenants", "put_tenant", "tenant_record"]


def tenant_record(tenant: Tenant) -> dict[str, object]:
    """The registry value; fields at their defaults that older workers do not know are
    left out, so a worker not yet upgraded still reads tenants that do not use them."""
    record = tenant.model_dump(mode="json")
    if not tenant.limits.enforced:
        del record["limits"]
    return record


async def put_tenant(settings: Settings, tenant: Tenant) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers(settings.require_broker()))
    await producer.start()
    try:
        await producer.send_and_wait(
            settings.tenants_topic,
            json.dumps(tenant_record(tenant), sort_keys=True).encode(),
            key=json.dumps(tenant.tenant_id).encode(),
        )
    finally:
        await producer.stop()


async def list_tenants(settings: Settings) -> dict[str, Tenant]:
    """Read the registry from the beginning to its current end; last write per key wins."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers(settings.require_broker()),
        enable_auto_commit=False,
        fetch_max_wait_ms=50,
    )
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(settings.tenants_topic) or set()
        tps = [TopicPartition(settings.tenants_topic, p) for p in sorted(parts)]
        if not tps:
            return {}
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        tenants: dict[str, Tenant] = {}
        pending = {tp for tp in tps if ends[tp] > 0}
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=1000)
            for records in batch.values():
                for r in records:
                    tenant_id = json.loads(r.key) if r.key else None
                    if not tenant_id:
                        continue
                    if r.value is None:
                        tenants.pop(tenant_id, None)
                    else:
                        tenants[tenant_id] = Tenant.model_validate_json(r.value)
            pending = {tp for tp in pending if await consumer.position(tp) < ends[tp]}
        return tenants
    finally:
        await consumer.stop()

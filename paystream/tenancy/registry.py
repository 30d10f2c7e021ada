"""Read and write the tenant registry (the compacted `paystream.tenants` topic).

Keys and values are JSON (the tenant id as a JSON string, the record as a JSON object);
every worker follows the whole topic (tenancy/mirror.py).
"""

from __future__ import annotations

import json

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from paystream.errors import ConfigurationError, PaystreamError
from paystream.settings import Settings
from paystream.streams.admin import bootstrap_servers, topic_partitions
from paystream.streams.kafka_auth import client_auth
from paystream.tenancy.mirror import RegistryMirror, says_suspended
from paystream.tenancy.models import Tenant, TenantStatus

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
    else:
        if not tenant.limits.only_listed_currencies:
            del record["limits"]["only_listed_currencies"]  # (newer than the limits)
        if not tenant.limits.daily_transfer_volume:
            del record["limits"]["daily_transfer_volume"]  # (newer still)
        if not tenant.limits.daily_payout_volume:
            del record["limits"]["daily_payout_volume"]  # (newer still)
    if not tenant.ingress_keys:
        del record["ingress_keys"]
    for kept in record.get("ingress_keys", {}).values():
        for newer in ("expires_at", "commands", "rolled_to"):  # (newer than the keys)
            if kept[newer] is None:
                del kept[newer]
    return record


async def put_tenant(settings: Settings, tenant: Tenant) -> None:
    # All in-sync replicas: a suspension acknowledged to the operator must not be lost.
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers(settings.require_broker()),
        **client_auth(settings),
        acks="all",
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
    silently undone. Kafka has no compare-and-set, so a record written between the check
    and the write is found afterwards and written again on top (see
    :func:`put_tenants_unless_changed`).
    """
    changed = await put_tenants_unless_changed(settings, [(base, tenant)])
    if changed:
        raise RegistryChanged(
            f"{tenant.tenant_id} changed while this command ran (another operator?); "
            "their change was kept, not this one: run it again"
        )


async def put_tenants_unless_changed(
    settings: Settings, changes: list[tuple[Tenant | None, Tenant]]
) -> list[str]:
    """:func:`put_tenant_unless_changed` for many tenants; returns the ids of those whose
    record changed (or became unreadable) and so keep the other writer's record.

    One registry read checks every ``base``; the writes then go out together. Kafka has
    no compare-and-set, so the records that arrived since that read are looked at after
    the writes: where another writer's record landed before ours, ours has replaced it,
    and it is written again on top (the other operator's suspension stands). The window
    left is the time between that look and the re-write.
    """
    registry, ends = await _read_registry_with_ends(settings)
    if not ends:
        # Written anyway, the broker would create it with its defaults: not compacted (a
        # tenant's old records go with retention), its partition count anyone's; and a
        # mistyped PAYSTREAM_TENANTS_TOPIC would take tenants no worker reads (review).
        raise _no_registry(settings)
    skipped = []
    writes = []
    for base, tenant in changes:
        tid = tenant.tenant_id
        if tid in registry.unreadable or registry.tenants.get(tid) != base:
            skipped.append(tid)
        else:
            writes.append(tenant)
    if not writes:
        return skipped
    records: list[tuple[str, bytes | None]] = [
        (t.tenant_id, json.dumps(tenant_record(t), sort_keys=True).encode()) for t in writes
    ]
    ours = await _put_records(settings, records)
    return skipped + await _restore_overwritten(settings, ends, ours, dict(records))


_Written = dict[str, tuple[int, int]]  # tenant id → (partition, offset) of our record


async def _put_records(settings: Settings, records: list[tuple[str, bytes | None]]) -> _Written:
    """Write (tenant id, value) records with one producer; where each landed."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers(settings.require_broker()),
        **client_auth(settings),
        acks="all",
    )
    await producer.start()
    try:
        sent = [
            (tid, await producer.send(settings.tenants_topic, value, key=json.dumps(tid).encode()))
            for tid, value in records
        ]
        written: _Written = {}
        for tid, future in sent:
            meta = await future
            written[tid] = (meta.partition, meta.offset)
        return written
    finally:
        await producer.stop()


async def _restore_overwritten(
    settings: Settings,
    since: dict[TopicPartition, int],
    ours: _Written,
    wrote: dict[str, bytes | None],
) -> list[str]:
    """Tenants of ``ours`` that another writer wrote to after ``since``: the ones whose
    latest record is ours get the other writer's latest record back on top.

    Another writer's record is one under the tenant's own key as written here, on the
    partition ours went to: only there does an offset say which came first. A record
    under another spelling of the key (' "acme"', a JSON escape) is no record of the
    tenant's for the mirror (it honours a suspension in it, nothing else); copied under
    the tenant's key it removed the tenant or lifted its suspension (review h64e)."""
    own_keys = {json.dumps(tid).encode(): tid for tid in ours}
    others: dict[str, list[tuple[int, bytes | None]]] = {}
    suspended_meanwhile: set[str] = set()
    for tp, offset, key, value in await _records_since(settings, since):
        tid = own_keys.get(key or b"")
        if tid is not None and tp.partition == ours[tid][0] and offset != ours[tid][1]:
            others.setdefault(tid, []).append((offset, value))
        elif tid is None and value is not None and says_suspended(value):
            # A suspension under another spelling of the key (a tool's kill switch), which
            # the mirror honours while it is newer than the tenant's own record: ours,
            # landing after it, lifted it silently (review h64h). Kept: the record that
            # stands is put again suspended (below).
            named = _tenant_of_key(key)
            if named in ours and not says_suspended(wrote.get(named) or b""):
                suspended_meanwhile.add(named)
    restore: list[tuple[str, bytes | None]] = []
    for tid in sorted(set(others) | suspended_meanwhile):
        records = others.setdefault(tid, [])
        mine = ours[tid][1]
        if any(offset > mine for offset, _ in records):
            continue  # another writer's record is the newest: it stands as it is
        before = [value for offset, value in records if offset < mine]
        standing = before[-1] if before else wrote.get(tid)  # theirs back on top, or ours
        if tid in suspended_meanwhile and standing is not None and not says_suspended(standing):
            # (A removal stands as it is; a record of another shape, left alone, is read
            # as it was: unreadable, which fails closed.)
            standing = _with_status_suspended(standing, tid) or standing
        elif not before:
            continue  # ours stands, and nothing asks for it again
        restore.append((tid, standing))
    if restore:
        await _put_records(settings, restore)
    return sorted(tid for tid in others if others[tid] or tid in suspended_meanwhile)


async def _records_since(
    settings: Settings, since: dict[TopicPartition, int]
) -> list[tuple[TopicPartition, int, bytes | None, bytes | None]]:
    """Every registry record from ``since`` (per partition; 0 where absent) to the end."""
    consumer = _reader(settings)
    try:
        await consumer.start()  # (inside: a consumer that failed to start is stopped too)
        tps = await topic_partitions(consumer, settings.tenants_topic)
        if not tps:
            return []
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, since.get(tp, 0))
        ends = await consumer.end_offsets(tps)
        pending = {tp for tp in tps if ends[tp] > since.get(tp, 0)}
        found = []
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=1000)
            for tp, records in batch.items():
                found += [(tp, r.offset, r.key, r.value) for r in records if r.offset < ends[tp]]
            pending = {tp for tp in pending if await consumer.position(tp) < ends[tp]}
        return found
    finally:
        await consumer.stop()


class RegistryChanged(PaystreamError):
    """The tenant's record changed between reading it and writing the change."""


async def list_tenants(settings: Settings, *, missing_ok: bool = False) -> dict[str, Tenant]:
    """Every tenant, from the registry read from the beginning to its current end
    (``missing_ok``: none if the topic does not exist yet, rather than an error)."""
    return (await read_registry(settings, missing_ok=missing_ok)).tenants


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


async def suspend_unreadable(settings: Settings, tenant_id: str) -> str:
    """Suspend a tenant whose latest record this version cannot read; says how.

    Every other change is refused for such a tenant (it would undo what this version
    cannot read), but a suspension must not wait for an upgrade: an unreadable record
    blocked the kill switch while workers served the older, active one (review finding).
    Suspending fails closed, so it writes what every version reads as suspended: the
    latest record with its status set (its other fields kept, for the newer versions
    that read them; older ones honour the status alone), or, where that record is no
    record of this tenant's (not JSON, another tenant's id), the last record this
    version read, suspended.
    """
    registry, ends = await _read_registry_with_ends(settings)
    if not ends:
        raise _no_registry(settings)
    if tenant_id not in registry.unreadable:
        raise RegistryChanged(f"{tenant_id}'s record changed meanwhile: run it again")
    value = _with_status_suspended(registry.unreadable_raw.get(tenant_id), tenant_id)
    how = "its latest record, status set (its other fields kept)"
    if value is None:
        kept = registry.tenants.get(tenant_id)
        if kept is None:
            raise UnreadableTenant(
                f"the latest registry record of {tenant_id!r} cannot be read or patched, and "
                "no earlier record of it can be read: suspend it with a newer paystream"
            )
        suspended = kept.model_copy(update={"status": TenantStatus.SUSPENDED})
        value = json.dumps(tenant_record(suspended), sort_keys=True).encode()
        how = "its last readable record, suspended (the unreadable record's changes dropped)"
    ours = await _put_records(settings, [(tenant_id, value)])
    if await _restore_overwritten(settings, ends, ours, {tenant_id: value}):
        raise RegistryChanged(
            f"{tenant_id} changed while this command ran (another operator?); "
            "their change was kept, not this one: run it again"
        )
    return how


def _tenant_of_key(key: bytes | None) -> str | None:
    """The tenant id a registry key names (any spelling of it), or None."""
    try:
        named = json.loads(key) if key else None
    except (ValueError, RecursionError):
        return None
    return named if isinstance(named, str) else None


def _with_status_suspended(raw: bytes | None, tenant_id: str) -> bytes | None:
    """``raw`` with ``"status": "suspended"``, if it is a JSON record of ``tenant_id``."""
    try:
        record = json.loads(raw) if raw else None
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or record.get("tenant_id") != tenant_id:
        return None
    return json.dumps({**record, "status": TenantStatus.SUSPENDED.value}, sort_keys=True).encode()


async def read_registry(settings: Settings, *, missing_ok: bool = False) -> RegistryMirror:
    """The registry read from the beginning to its current end; last write per key wins.

    Records this version cannot read are skipped with a warning, as workers skip them,
    and their tenants noted in ``unreadable``.
    """
    registry, ends = await _read_registry_with_ends(settings)
    if not ends and not missing_ok:
        # Read as empty, a mistyped topic or another environment's broker listed no
        # tenant and refused a suspension as "unknown tenant" (review finding).
        raise _no_registry(settings)
    return registry


def _no_registry(settings: Settings) -> ConfigurationError:
    return ConfigurationError(
        f"the tenant registry topic {settings.tenants_topic!r} does not exist on the "
        "broker KAFKA_BROKER_URL names: create it with `paystream topics` (or check "
        "PAYSTREAM_TENANTS_TOPIC and KAFKA_BROKER_URL)"
    )


def _reader(settings: Settings) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers(settings.require_broker()),
        **client_auth(settings),
        enable_auto_commit=False,
        fetch_max_wait_ms=50,
    )


async def _read_registry_with_ends(
    settings: Settings,
) -> tuple[RegistryMirror, dict[TopicPartition, int]]:
    """:func:`read_registry`, and the end offset each partition was read to."""
    registry = RegistryMirror(settings)
    consumer = _reader(settings)
    try:
        await consumer.start()  # (inside: a consumer that failed to start is stopped too)
        tps = await topic_partitions(consumer, settings.tenants_topic)
        if not tps:
            return registry, {}
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        pending = {tp for tp in tps if ends[tp] > 0}
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=1000)
            for records in batch.values():
                for r in records:
                    registry.apply(r.key, r.value, r.timestamp)
            pending = {tp for tp in pending if await consumer.position(tp) < ends[tp]}
        return registry, dict(ends)
    finally:
        await consumer.stop()

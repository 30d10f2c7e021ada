"""Entity retention on a real worker and broker: settled entities unchanged for longer
than PAYSTREAM_ENTITY_RETENTION_SECONDS leave the tables, by a tombstone on their
changelog, and stay gone after the worker restarts; live ones stay however old.

The old entities are written to the changelogs before the worker starts (as a worker of
540 days ago would have left them); the worker recovers them, and its first batch's
sweep finds them."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner, murmur2

from paystream.client import PaystreamClient
from paystream.devstack._process import wait_until
from paystream.streams.admin import changelog_topics, ensure_topics
from paystream.tenancy.models import Tenant
from tests.e2e.together import side_by_side, start_together, stop_together
from tests.e2e.topic_tail import TopicTail
from tests.fixtures.pipeline import Deployment

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

TENANT = "keeper"
DAY = 86400.0


def _entity(
    kind: str, entity_id: str, at: float, tenant: str = TENANT, **fields: Any
) -> dict[str, Any]:
    outcome = {"type": f"{kind}.seeded", "data": {"entity_id": entity_id}}
    return {
        "entity_type": kind,
        "tenant_id": tenant,
        "id": entity_id,
        "version": 1,
        "provider": "simulator",
        "created_by": f"cmd-{entity_id}",
        "applied": {f"cmd-{entity_id}": {**outcome, "at": at}},
        **fields,
    }


def _payment(entity_id: str, at: float, tenant: str = TENANT) -> dict[str, Any]:
    return _entity(
        "payment",
        entity_id,
        at,
        tenant,
        status="succeeded",
        amount=1200,
        currency="USD",
        capture_method="automatic",
        amount_captured=1200,
        provider_payment_id=f"sim_{entity_id}",
    )


def _customer(entity_id: str, at: float, *, erased: bool) -> dict[str, Any]:
    """An erased customer (deleted too) or a live one: a customer merely deleted stays,
    as it may still be erased."""
    return _entity(
        "customer", entity_id, at, provider_customer_id=f"sim_{entity_id}",
        deleted=erased, erased=erased,
    )  # fmt: skip


def _method(
    entity_id: str, at: float, *, attached: bool, customer: str = "cus_live"
) -> dict[str, Any]:
    return _entity(
        "payment_method",
        entity_id,
        at,
        customer_id=customer,
        provider_payment_method_id=f"sim_{entity_id}",
        attached=attached,
    )


def _changelog_tail(dep: Deployment, table: str) -> TopicTail[tuple[str, Any]]:
    """A table's changelog as it is written: (key, value; None: a tombstone)."""
    return TopicTail(
        dep,
        f"{dep.settings.app_id}-{table}-changelog",
        lambda r: (json.loads(r.key), None if r.value is None else json.loads(r.value)),
    )


def _by_key(records: list[tuple[str, Any]]) -> dict[str, list[Any]]:
    """Every value written, per key, in order."""
    values: dict[str, list[Any]] = {}
    for key, value in records:
        values.setdefault(key, []).append(value)
    return values


async def _changelog(dep: Deployment, table: str) -> dict[str, list[Any]]:
    """Every value written to a table's changelog until now, per key, in order."""
    async with _changelog_tail(dep, table) as tail:
        return _by_key(await tail.caught_up())


async def _reason(client: PaystreamClient, command: str, data: dict[str, Any]) -> str:
    out = await client.command(command, TENANT, data)
    body = out.get_data()
    assert isinstance(body, dict)
    return str(body.get("reason") or out.get_type())


STORES = ("memory://", "rocksdb://")


async def test_settled_entities_past_retention_leave_the_tables_for_good(
    deployment_factory: Any,
) -> None:
    """Each table store side by side, each on a deployment (and workers) of its own: most
    of a case is waiting (worker starts, group joins, recovery), and every check names
    its store."""
    await side_by_side({store: _retention_case(deployment_factory, store) for store in STORES})


async def _retention_case(deployment_factory: Any, store: str) -> None:
    dep: Deployment = await deployment_factory(paystream_table_store=store)
    await ensure_topics(dep.settings, extra=changelog_topics(dep.settings))
    await dep.add_tenants(Tenant(tenant_id=TENANT))
    now = time.time()
    old, recent = now - 600 * DAY, now - 2 * DAY
    partitions = list(range(dep.settings.partitions))
    partition = DefaultPartitioner()(TENANT.encode(), partitions, partitions)
    seeded = {
        "payments": {
            "pay_old": _payment("pay_old", old),
            "pay_recent": _payment("pay_recent", recent),
        },
        "customers": {
            "cus_gone": _customer("cus_gone", old, erased=True),
            "cus_live": _customer("cus_live", old, erased=False),
        },
        "payment_methods": {
            "pm_detached": _method("pm_detached", old, attached=False),
            "pm_attached": _method("pm_attached", old, attached=True),
            # Still attached to the erased customer: goes with them.
            "pm_orphan": _method("pm_orphan", old, attached=True, customer="cus_gone"),
        },
    }
    for table, entities in seeded.items():
        await dep.produce(
            f"{dep.settings.app_id}-{table}-changelog",
            *(
                (json.dumps(f"{TENANT}:{eid}").encode(), json.dumps(value).encode(), partition)
                for eid, value in entities.items()
            ),
        )
    removed = {
        ("payments", "pay_old"),
        ("customers", "cus_gone"),
        ("payment_methods", "pm_detached"),
        ("payment_methods", "pm_orphan"),
    }

    worker = dep.worker()
    try:
        # (In threads: the other store's case runs meanwhile.)
        await asyncio.to_thread(worker.start)
        await asyncio.to_thread(worker.wait_ready, [TENANT], partitions=dep.settings.partitions)
        async with dep.client() as client:
            # Any batch sweeps (the first at once).
            create = {"customer_id": "cus_new", "email": "new@example.com"}
            assert await _reason(client, "customer.create", create) == (
                "com.paystream.customer.created"
            )
            # The old payment is gone (not_found), the recent one is not (its state refuses).
            assert (
                await _reason(client, "payment.capture", {"payment_id": "pay_old"}) == "not_found"
            )
            assert (
                await _reason(client, "payment.capture", {"payment_id": "pay_recent"})
                == "invalid_state"
            )
    finally:
        await asyncio.to_thread(worker.stop)
    for table, entities in seeded.items():
        log = await _changelog(dep, table)
        for eid in entities:
            values = log[f"{TENANT}:{eid}"]
            if (table, eid) in removed:
                assert values[-1] is None, f"{table} {eid}: no tombstone: {values}"
            else:
                assert None not in values, f"{table} {eid} was deleted"

    # Recovered from the changelog, the worker holds none of them again.
    worker = dep.worker("w2")
    try:
        await asyncio.to_thread(worker.start)
        await asyncio.to_thread(worker.wait_ready, [TENANT], partitions=dep.settings.partitions)
        async with dep.client() as client:
            assert (
                await _reason(client, "payment.capture", {"payment_id": "pay_old"}) == "not_found"
            )
            assert await _reason(client, "customer.update", {"customer_id": "cus_gone"}) == (
                "not_found"
            )
    finally:
        await asyncio.to_thread(worker.stop)
    text = (dep.base_dir / "w1.log").read_text()
    assert "4 settled entities unchanged for 540 days left the tables" in text, text[-3000:]


async def test_in_a_fleet_each_worker_removes_the_old_entities_of_its_own_partitions(
    deployment_factory: Any,
) -> None:
    """Two workers: each one's batches remove the old entities of the partitions it
    serves, and those only (the other's are still there until it runs a batch), each
    with one tombstone. (Whether a sweep keeps off a standby copy is held by
    tests/test_entity_retention.py: a standby copy is written a thousand changelog
    records at a time, so a worker here has none yet of what was seeded.)"""
    dep: Deployment = await deployment_factory()
    n = dep.settings.partitions
    await ensure_topics(dep.settings, extra=changelog_topics(dep.settings))
    tenants: dict[int, str] = {}  # partition → a tenant whose commands go there
    i = 0
    while len(tenants) < n:
        tenants.setdefault((murmur2(f"fleet{i}".encode()) & 0x7FFFFFFF) % n, f"fleet{i}")
        i += 1
    await dep.add_tenants(*(Tenant(tenant_id=t) for t in tenants.values()))
    old = time.time() - 600 * DAY
    await dep.produce(
        f"{dep.settings.app_id}-payments-changelog",
        *(
            (
                json.dumps(f"{t}:pay_old").encode(),
                json.dumps(_payment("pay_old", old, t)).encode(),
                p,
            )
            for p, t in tenants.items()
        ),
    )
    first, second = dep.worker("w1"), dep.worker("w2")
    try:
        await start_together(first, second)
        for w in (first, second):
            await asyncio.to_thread(w.wait_ready, list(tenants.values()))

        def owned(w: Any) -> set[int]:
            return set(((w.stats() or {}).get("worker") or {}).get("partitions") or ())

        await asyncio.to_thread(
            wait_until,
            lambda: owned(first) and owned(second) and len(owned(first) | owned(second)) == n,
            timeout=90,
            what="two owners",
            interval=0.1,
        )
        mine = owned(first)

        def tombstoned(records: list[tuple[str, Any]]) -> set[int]:
            log = _by_key(records)
            return {p for p, t in tenants.items() if log[f"{t}:pay_old"][-1] is None}

        async with _changelog_tail(dep, "payments") as payments, dep.client() as client:
            await client.command("customer.create", tenants[min(mine)], {})
            # The first worker's batch: its own.
            await payments.until(lambda got: tombstoned(got) == mine, timeout=10)
            assert tombstoned(payments.records) == mine
            theirs = set(range(n)) - mine
            await client.command("customer.create", tenants[min(theirs)], {})
            # The second's: the rest.
            await payments.until(lambda got: tombstoned(got) == set(range(n)), timeout=10)
            assert tombstoned(payments.records) == set(range(n))
        assert owned(first) == mine, "a rebalance moved partitions: the test saw nothing"
    finally:
        await stop_together(first, second)
    log = await _changelog(dep, "payments")  # (all they wrote: both stopped)
    for t in tenants.values():
        assert log[f"{t}:pay_old"].count(None) == 1, (t, log[f"{t}:pay_old"])

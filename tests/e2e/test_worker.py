"""A real worker process on the real broker: commands in, CloudEvents out, DLQ, tenants."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer

from paystream.client import PaystreamClient, build_command
from paystream.settings import CloudEventsMode
from paystream.streams.admin import bootstrap_servers
from paystream.tenancy.models import Tenant, TenantStatus
from tests.fixtures.pipeline import Deployment

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def deployed(deployment_factory: Any) -> AsyncIterator[Deployment]:
    dep: Deployment = await deployment_factory()
    await dep.add_tenants(Tenant(tenant_id="acme"), Tenant(tenant_id="globex"))
    with dep.worker() as worker:
        worker.wait_ready(["acme", "globex"], partitions=dep.settings.partitions)
        dep.worker_handle = worker  # type: ignore[attr-defined]
        yield dep


@pytest_asyncio.fixture(loop_scope="session")
async def client(deployed: Deployment) -> AsyncIterator[PaystreamClient]:
    async with deployed.client() as c:
        yield c


async def test_command_gets_its_cloudevent_outcome(client: PaystreamClient) -> None:
    out = await client.command(
        "payment.create",
        "acme",
        {"amount": 2500, "currency": "USD", "payment_method_token": "pm_card_visa"},
    )
    assert out.get_type() == "com.paystream.payment.succeeded"
    assert out.get_extension("tenantid") == "acme"
    assert out.get_extension("partitionkey") == "acme"


async def test_structured_mode_command(deployed: Deployment) -> None:
    async with PaystreamClient(deployed.settings, CloudEventsMode.STRUCTURED) as c:
        out = await c.command("customer.create", "globex", {"email": "s@globex.io"})
    assert out.get_type() == "com.paystream.customer.created"


async def test_full_flow_keeps_state_across_commands(client: PaystreamClient) -> None:
    cus = await client.command("customer.create", "globex", {})
    cid = cus.get_data()["entity_id"]  # type: ignore[index]
    pm = await client.command(
        "payment_method.attach", "globex", {"customer_id": cid, "token": "pm_card_mastercard"}
    )
    pmid = pm.get_data()["entity_id"]  # type: ignore[index]
    pay = await client.command(
        "payment.create",
        "globex",
        {
            "amount": 1000,
            "currency": "EUR",
            "customer_id": cid,
            "payment_method_id": pmid,
            "capture": "manual",
        },
    )
    assert pay.get_type().endswith("payment.authorized")
    pid = pay.get_data()["entity_id"]  # type: ignore[index]
    cap = await client.command("payment.capture", "globex", {"payment_id": pid, "amount": 800})
    assert cap.get_data()["object"]["amount_captured"] == 800  # type: ignore[index]
    ref = await client.command("refund.create", "globex", {"payment_id": pid})
    assert ref.get_type().endswith("refund.succeeded")
    assert ref.get_data()["object"]["amount"] == 800  # type: ignore[index]


async def test_exports_past_the_owner_index_build_hold_every_record(
    client: PaystreamClient,
) -> None:
    """customer.export reads the tables whole for a generation's first exports, then
    builds an index of owners (tables/owners.py) that the worker keeps as it writes:
    in a real worker (its consumer generation, its Faust tables) every export, before
    and after the build, holds the customer's records as they grow, and no other's."""
    from paystream.tables.owners import SCANS_BEFORE_BUILD

    cus = await client.command("customer.create", "acme", {})
    cid = cus.get_data()["entity_id"]  # type: ignore[index]
    other = (await client.command("customer.create", "acme", {})).get_data()["entity_id"]  # type: ignore[index]
    pms = []
    for owner in (cid, other):
        pm = await client.command(
            "payment_method.attach", "acme", {"customer_id": owner, "token": "pm_card_visa"}
        )
        pms.append(pm.get_data()["entity_id"])  # type: ignore[index]
    payments: list[str] = []
    for n in range(SCANS_BEFORE_BUILD + 3):
        for owner, pmid in ((cid, pms[0]), (other, pms[1])):
            body = {"amount": 100 + n, "currency": "USD", "customer_id": owner,
                    "payment_method_id": pmid}  # fmt: skip
            pay = await client.command("payment.create", "acme", body)
            if owner == cid:
                payments.append(pay.get_data()["entity_id"])  # type: ignore[index]
        out = await client.command("customer.export", "acme", {"customer_id": cid})
        export = out.get_data()["export"]  # type: ignore[index]
        assert [m["id"] for m in export["payment_methods"]] == [pms[0]], n
        assert [p["id"] for p in export["payments"]] == sorted(payments), n


async def test_garbage_is_dead_lettered_and_the_worker_keeps_going(
    deployed: Deployment, client: PaystreamClient
) -> None:
    settings = deployed.settings
    await deployed.produce(
        settings.commands_topic, (b"acme", b"\x00\x01 definitely not an event", None)
    )
    # the partition keeps moving: the next command on the same tenant is answered
    out = await client.command("customer.create", "acme", {})
    assert out.get_type().endswith("customer.created")
    consumer = AIOKafkaConsumer(
        settings.dlq_topic,
        bootstrap_servers=bootstrap_servers(settings.require_broker()),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        batch = await consumer.getmany(timeout_ms=5000)
        records = [r for rs in batch.values() for r in rs]
    finally:
        await consumer.stop()
    assert any(r.value == b"\x00\x01 definitely not an event" for r in records)
    assert any(dict(r.headers).get("paystream-dlq-reason") == b"not_a_cloudevent" for r in records)


async def test_suspending_a_tenant_takes_effect(
    deployed: Deployment, client: PaystreamClient
) -> None:
    await deployed.add_tenants(Tenant(tenant_id="initech", status=TenantStatus.SUSPENDED))
    deployed.worker_handle.wait_ready(["initech"])  # type: ignore[attr-defined]
    out = await client.command("customer.create", "initech", {})
    assert out.get_data()["reason"] == "tenant_suspended"  # type: ignore[index]


async def test_replayed_command_id_gets_the_identical_event(client: PaystreamClient) -> None:
    cmd = build_command(
        "payment.create",
        "acme",
        {"amount": 300, "currency": "USD", "payment_method_token": "pm_card_visa"},
    )
    first = await client.send(cmd)
    second = await client.send(cmd)
    assert first.get_id() == second.get_id()
    assert first.get_data() == second.get_data()
    assert first.get_time() == second.get_time()


async def test_a_retry_under_the_same_key_gets_the_first_outcome(
    deployed: Deployment, client: PaystreamClient
) -> None:
    """A new command id with an answered key (what `paystream send --idempotency-key`
    does twice): answered with the first command's event, its record naming the retry."""
    data = {"amount": 301, "currency": "USD", "payment_method_token": "pm_card_visa"}
    key = f"order-{uuid.uuid4().hex}"
    first = await client.send(build_command("payment.create", "acme", data, idempotency_key=key))
    async with deployed.client() as fresh:  # another process: it never saw the first
        retry = build_command("payment.create", "acme", data, idempotency_key=key)
        again = await fresh.send(retry, timeout=30)
    assert again.get_id() == first.get_id() and again.get_data() == first.get_data()
    assert again.get_extension("causationid") == first.get_extension("causationid")
    # The same from the client that sent the first.
    same = build_command("payment.create", "acme", data, idempotency_key=key)
    assert (await client.send(same, timeout=30)).get_id() == first.get_id()
    # A different payload under the key is that command's own rejection.
    other = build_command("payment.create", "acme", {**data, "amount": 302}, idempotency_key=key)
    conflict = await client.send(other)
    assert conflict.get_data()["reason"] == "idempotency_conflict"  # type: ignore[index]
    assert conflict.get_extension("causationid") == other.get_id()


async def test_changelog_holds_only_each_batch_last_write(
    client: PaystreamClient, deployed: Deployment
) -> None:
    """A command's in-flight idempotency record is superseded within its own batch, so
    only the finished record reaches the changelog (see tables/changelog.py)."""
    body = {"amount": 700, "currency": "EUR", "payment_method_token": "pm_card_visa"}
    outs = [await client.command("payment.create", "acme", body) for _ in range(3)]
    assert all(o.get_type() == "com.paystream.payment.succeeded" for o in outs)
    states: dict[str, list[str]] = {}  # idempotency key → states in changelog order
    ids = {str(o.get_extension("causationid")) for o in outs}
    # (The outcomes are out: their batch's changelog records were delivered before them.)
    for r in await deployed.read_topic(f"{deployed.settings.app_id}-idempotency-changelog"):
        if r.key and r.value:
            key = json.loads(r.key) if r.key.startswith(b'"') else r.key.decode()
            value = json.loads(r.value)
            if "state" not in value:
                continue  # which request a command id names: not a record
            states.setdefault(key.split(":", 1)[1], []).append(value["state"])
    assert ids <= states.keys(), f"changelog records missing: {ids - states.keys()}"
    assert all(states[i] == ["done"] for i in ids), {i: states[i] for i in ids}


async def test_a_worker_refuses_topics_too_small_for_its_records(
    deployed: Deployment, deployment_factory: Any
) -> None:
    """A dead-letter topic that refuses records of 1 MiB would fail the batch holding a
    large dead letter on every redelivery, worker after worker: the worker says so before
    its first command and exits (EX_CONFIG) instead."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from paystream.agents.commands import EXIT_MISCONFIGURED

    small_dlq = f"{uuid.uuid4().hex[:8]}.small-dlq"
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers(deployed.settings.require_broker())
    )
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(small_dlq, 1, 1, topic_configs={"max.message.bytes": "65536"})]
        )
        assert [code for _name, code, *_ in response.topic_errors] == [0]
    finally:
        await admin.close()
    dep: Deployment = await deployment_factory(paystream_dlq_topic=small_dlq)
    await dep.add_tenants(Tenant(tenant_id="acme"))
    with dep.worker() as worker:
        worker.wait_ready(["acme"], partitions=dep.settings.partitions)
        await dep.produce(dep.settings.commands_topic, (b"acme", b"not an event", None))
        assert worker.proc is not None
        assert worker.proc.wait(timeout=60) == EXIT_MISCONFIGURED
    log = worker.log_path.read_text()
    assert f"{small_dlq} (max.message.bytes=65536)" in log
    assert "set their max.message.bytes to at least 1048576" in log

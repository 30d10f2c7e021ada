"""A broker refusing the worker's writes: seen, reported, excused, and survived.

A cluster refuses produces to a partition with too few in-sync replicas
(NOT_ENOUGH_REPLICAS) until a replica catches up. The worker must keep every command
of the refused batches (nothing acknowledged, nothing committed), tell operators why it
is stuck (/readyz `publish_failing`, /healthz `excused`, a metric), not count the wait
as a wedge (a restart would not mend the cluster: each one is a rebalance of the whole
group), and answer every command exactly once when the broker takes writes again, with
the provider asked once. The embedded broker never refuses, so a Kafka-protocol proxy
of the test's own (tests/e2e/refusing.py) plays the refusing cluster: while on, it
answers every produce naming the outcomes topic itself, and forwards nothing of it.

The same proxy holds a batch undelivered for as long as a test needs: long enough to
kill its worker after the provider charged and before anything of the batch was
durable, the crash the pipeline's K1 lookup is for.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer

from paystream.client import build_command
from paystream.devstack.worker import WorkerProcess
from paystream.gateways.base import GatewayContext
from paystream.gateways.registry import GatewayDeps
from paystream.gateways.simulator import SimulatorGateway
from paystream.tenancy.models import Tenant, TenantStatus
from tests.e2e.own_servers import json_page
from tests.e2e.proxied_stack import ProxiedStack, proxied_stack
from tests.e2e.refusing import RefusingProxy

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

TENANT = "refused-a"
COMMANDS = 5
# The worker's producer gives a refused batch up after this (its retries included), so
# the command agent sees the refusal within seconds instead of the default minute.
REQUEST_TIMEOUT_SECONDS = 5


def _metric(worker: WorkerProcess, name: str) -> float:
    with worker.open("/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


async def _until(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        seen = await asyncio.to_thread(check)
        if seen:
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        await asyncio.sleep(0.5)


RefusingStack = ProxiedStack[RefusingProxy]


def refusing_stack(
    deployment_factory: Any, tenant: str
) -> AbstractAsyncContextManager[RefusingStack]:
    """The test's own broker behind a refusing proxy (see tests/e2e/proxied_stack.py)."""
    return proxied_stack(
        deployment_factory,
        RefusingProxy,
        tenant,
        paystream_producer_request_timeout_seconds=str(REQUEST_TIMEOUT_SECONDS),
    )


async def _provider_effects(stack: RefusingStack, tenant: str) -> list[str]:
    client_redis = aioredis.from_url(stack.redis_url)
    try:
        sim = SimulatorGateway.from_context(
            GatewayContext(tenant_id=tenant, provider="simulator"),
            GatewayDeps(settings=stack.dep.settings, redis=client_redis),
        )
        return [f"{e.kind}:{e.idempotency_key}" for e in await sim.effects()]
    finally:
        await client_redis.aclose()


K1_TENANT = "k1-crash"


@dataclass
class Refusing:
    """The module's refusing stack and its group's worker, which the tests take in turn
    (one kills it: the next to ask gets a new one)."""

    stack: RefusingStack
    worker: WorkerProcess
    started: int = 1

    def running(self, tenant: str) -> WorkerProcess:
        """The group's worker, a new one if the last was killed, ready for ``tenant``."""
        if self.worker.exited():
            self.worker.stop()
            self.started += 1
            self.worker = self.stack.dep.worker(f"w{self.started}").start()
        self.worker.wait_ready([tenant], partitions=self.stack.dep.settings.partitions)
        return self.worker


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def shared_stack(deployment_factory: Any) -> AsyncIterator[Refusing]:
    async with refusing_stack(deployment_factory, TENANT) as stack:
        await stack.dep.add_tenants(Tenant(tenant_id=K1_TENANT))
        shared = Refusing(stack, stack.dep.worker("w1").start())
        try:
            yield shared
        finally:
            shared.worker.stop()


@pytest.fixture
def refusing(shared_stack: Refusing) -> Refusing:
    """The shared stack, its proxy refusing nothing as a test starts."""
    shared_stack.stack.proxy.refuse(None)
    return shared_stack


async def test_a_broker_refusing_writes_holds_commands_until_it_takes_them(
    refusing: Refusing,
) -> None:
    stack = refusing.stack
    dep, proxy = stack.dep, stack.proxy
    worker = await asyncio.to_thread(refusing.running, TENANT)
    assert worker.proc is not None
    pid = worker.proc.pid
    charge = {"amount": 700, "currency": "USD", "payment_method_token": "pm_card_visa"}
    async with dep.client() as client:
        first = await client.command("payment.create", TENANT, charge, timeout=60)
        assert first.get_type() == "com.paystream.payment.succeeded"

        proxy.refuse(dep.settings.events_topic)
        answers = [
            asyncio.ensure_future(client.command("payment.create", TENANT, charge, timeout=240))
            for _ in range(COMMANDS)
        ]
        ready = await _until(
            "/readyz names the refusal",
            lambda: (r := json_page(worker, "/readyz"))[1].get("publish_failing") and r,
            timeout=60,
        )
        status, body = ready
        assert status == 200, body  # refused writes are no reason to route away
        assert "NotEnoughReplicasError" in body["publish_failing"], body
        status, health = await asyncio.to_thread(json_page, worker, "/healthz")
        assert status == 200 and health["ok"] is True, health
        assert any("NotEnoughReplicasError" in e for e in health["excused"]), health
        failures = _metric(
            worker, 'paystream_publish_failures_total{error="NotEnoughReplicasError"}'
        )
        assert failures >= 1
        assert _metric(worker, "paystream_publish_failing_seconds") > 0
        assert not any(a.done() for a in answers)  # nothing answered meanwhile
        assert proxy.refusals > 0

        proxy.refuse(None)
        outcomes = await asyncio.gather(*answers)
    assert [o.get_type() for o in outcomes] == ["com.paystream.payment.succeeded"] * 5
    # The same process all along: no restart, no rebalance of the group.
    assert not worker.exited() and worker.proc.pid == pid
    await _until(
        "/readyz clears the refusal",
        lambda: json_page(worker, "/readyz")[1].get("publish_failing") is None,
        timeout=30,
    )

    # Exactly once: one outcome per command on the topic (the refused batches never
    # reached it), and one charge per command at the provider. (This tenant's: the
    # module's other test has its own.)
    consumer = AIOKafkaConsumer(
        dep.settings.events_topic,
        bootstrap_servers=f"127.0.0.1:{stack.broker_port}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        records: list[Any] = []
        deadline = time.monotonic() + 20
        while len(records) < COMMANDS + 1 and time.monotonic() < deadline:
            got = await consumer.getmany(timeout_ms=1000)
            records += [
                r
                for batch in got.values()
                for r in batch
                if dict(r.headers).get("ce_tenantid") == TENANT.encode()
            ]
    finally:
        await consumer.stop()
    ids = Counter(dict(r.headers)["ce_id"] for r in records)
    assert sum(ids.values()) == COMMANDS + 1 and max(ids.values()) == 1, ids
    charges = Counter(e for e in await _provider_effects(stack, TENANT) if "charge" in e)
    assert len(charges) == COMMANDS + 1 and max(charges.values()) == 1, charges


async def test_a_charge_lost_with_its_worker_finishes_after_the_tenant_is_suspended(
    refusing: Refusing,
) -> None:
    """K1 end to end: the provider charged, the worker was killed before its batch was
    delivered (the broker refusing the writes holds it there), and the tenant was
    suspended before a new worker read the command again. Nothing of ours recorded it;
    the provider did, so the command finishes (one charge), and a new command of the
    suspended tenant is still refused."""
    stack, tenant = refusing.stack, K1_TENANT
    dep, proxy = stack.dep, stack.proxy
    charge = {"amount": 900, "currency": "USD", "payment_method_token": "pm_card_visa"}
    async with dep.client() as client:
        first_worker = await asyncio.to_thread(refusing.running, tenant)
        proxy.refuse(dep.settings.events_topic)
        command = build_command("payment.create", tenant, charge)
        answer = client.expect(tenant, command.get_id())
        await client.publish(command)
        await _until(
            "the provider charged",
            lambda: asyncio.run(_provider_effects(stack, tenant)),
            timeout=60,
        )
        first_worker.kill()  # mid-delivery: nothing of the batch is durable
        await dep.add_tenants(Tenant(tenant_id=tenant, status=TenantStatus.SUSPENDED))
        proxy.refuse(None)
        second_worker = await asyncio.to_thread(refusing.running, tenant)
        assert second_worker is not first_worker
        outcome = await asyncio.wait_for(answer, 120)
        assert outcome.get_type() == "com.paystream.payment.succeeded", outcome.get_data()
        refused = await client.command("payment.create", tenant, charge, timeout=60)
        assert refused.get_data()["reason"] == "tenant_suspended"  # type: ignore[index]
    effects = await _provider_effects(stack, tenant)
    assert [e.split(":")[0] for e in effects] == ["charge"], effects

"""Outcomes are counted in the insights even when their tenant was not yet in the insights
worker's registry copy when it read them: it waits for the registry, rather than skipping
them as unregistered and committing past them, lost for good.

A fleet as the README allows: a `commands` worker, and the insights on a worker of their
own, whose registry starts 3 s late (review h62a: a worker started with outcomes waiting,
as a rolling restart leaves the last outcomes of the worker it stopped; one run in
fifteen lost two payments' counts so) and, once loaded, applies new records 2 s late
(review h62d: a tenant added and paid at once). One deployment for both: each one's
workers took longer to start than its checks ran."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from paystream.client import PaystreamClient
from paystream.devstack.worker import WorkerProcess
from paystream.tenancy.models import Tenant
from tests.e2e.test_insights import _latest, _totals, events
from tests.e2e.together import stop_together
from tests.fixtures.pipeline import Deployment

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

N = 20
SHIM = Path(__file__).with_name("late_registry")
PAID = {"amount": 1000, "currency": "USD", "payment_method_token": "pm_card_visa"}


@dataclass
class Fleet:
    dep: Deployment
    commands: WorkerProcess  # PAYSTREAM_AGENTS=commands
    insights: WorkerProcess  # PAYSTREAM_AGENTS=insights, its registry late


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def fleet(deployment_factory: Any) -> AsyncIterator[Fleet]:
    """The commands worker has made N payments' outcomes for tenant late-0 when the
    insights worker starts, with those waiting and its registry 3 s late."""
    dep: Deployment = await deployment_factory(paystream_insights_window_seconds="2")
    await dep.add_tenants(Tenant(tenant_id="late-0"))
    path = os.pathsep.join(filter(None, [str(SHIM), dep.env.get("PYTHONPATH")]))
    late = {**dep.env, "PAYSTREAM_AGENTS": "insights", "PYTHONPATH": path,
            "SHIM_REGISTRY_DELAY_SECONDS": "3", "SHIM_REGISTRY_LAG_SECONDS": "2"}  # fmt: skip
    commands = WorkerProcess({**dep.env, "PAYSTREAM_AGENTS": "commands"}, dep.base_dir / "w1.log")
    insights = WorkerProcess(late, dep.base_dir / "w2.log")
    try:
        await asyncio.to_thread(commands.start)
        async with PaystreamClient(dep.settings) as client:
            for j in range(N):
                await client.command("payment.create", "late-0", {**PAID, "amount": 1000 + j})
        await asyncio.to_thread(insights.start)
        yield Fleet(dep, commands, insights)
    finally:
        await stop_together(commands, insights)


async def test_outcomes_waiting_at_start_are_counted_though_the_registry_is_late(
    fleet: Fleet,
) -> None:
    dep = fleet.dep
    async with events(dep, dep.settings.analytics_topic) as windows:

        def late_0(published: list[Any]) -> dict[str, Any]:
            return _totals([w for w in published if w.get_data()["tenant_id"] == "late-0"])

        await windows.until(lambda got: late_0(got)["outcomes"] == {"payment.succeeded": N}, 45)
        totals = late_0(windows.records)
    assert totals["outcomes"] == {"payment.succeeded": N}, totals
    assert totals["money"]["captured"] == sum(1000 + j for j in range(N)), totals
    assert "test shim: the tenant registry starts 3 s late" in (dep.base_dir / "w2.log").read_text()


async def test_a_tenant_added_and_paid_at_once_is_counted_by_an_insights_worker_of_its_own(
    fleet: Fleet,
) -> None:
    """A tenant added and sent a payment as soon as the commands worker knows it: the
    insights worker read its outcome before its registry copy (loaded) knew the tenant,
    skipped it as unregistered and committed past it (review h62d). It reads the
    registry to its end first."""
    dep, w1, w2 = fleet.dep, fleet.commands, fleet.insights
    await asyncio.to_thread(w1.wait_ready, ["late-0"])
    await asyncio.to_thread(w2.wait_ready, ["late-0"])  # (its registry loaded: the lag's turn)
    tenants = ["new-0", "new-1"]
    async with PaystreamClient(dep.settings) as client:
        for tenant in tenants:
            await dep.add_tenants(Tenant(tenant_id=tenant))
            deadline = time.monotonic() + 20
            while tenant not in set((w1.stats() or {}).get("tenants") or ()):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            outcome = await client.command("payment.create", tenant, PAID)
            assert outcome.get_type().endswith("payment.succeeded"), outcome
    expected = {"new-0": 1, "new-1": 1}
    async with events(dep, dep.settings.analytics_topic) as windows:
        await windows.until(lambda got: _succeeded_by_tenant(got, tenants) == expected, 40)
        counted = _succeeded_by_tenant(windows.records, tenants)
    assert counted == expected
    assert "registry records applied 2 s late" in (dep.base_dir / "w2.log").read_text()


def _succeeded_by_tenant(windows: list[Any], tenants: list[str]) -> dict[str, int]:
    counted: dict[str, int] = {}
    for (tenant, _), data in _latest(windows).items():
        if tenant in tenants:
            counted[tenant] = counted.get(tenant, 0) + data["outcomes"].get("payment.succeeded", 0)
    return counted

"""A worker started with outcomes waiting counts them in the insights even when its tenant
registry loads after its outcome agent has read them (review h62a: they were skipped as
unregistered and committed past, lost for good; a rolling restart lost two payments'
counts so, one run in fifteen)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from paystream.client import PaystreamClient
from paystream.devstack._process import free_port
from paystream.devstack.worker import WorkerProcess
from paystream.tenancy.models import Tenant
from tests.e2e.test_insights import _events, _totals
from tests.fixtures.pipeline import Deployment

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

N = 20
SHIM = Path(__file__).with_name("late_registry")


async def test_outcomes_waiting_at_start_are_counted_though_the_registry_is_late(
    deployment_factory: Any,
) -> None:
    dep: Deployment = await deployment_factory(
        paystream_agents="commands,insights", paystream_insights_window_seconds="2"
    )
    await dep.add_tenants(Tenant(tenant_id="late-0"))
    # A worker without the insights makes the outcomes (as a rolling restart leaves the
    # last outcomes of the worker it stopped, uncounted).
    commands_only = {**dep.env, "PAYSTREAM_AGENTS": "commands"}
    with WorkerProcess(commands_only, dep.base_dir / "w1.log", free_port()):
        async with PaystreamClient(dep.settings) as client:
            for j in range(N):
                data = {
                    "amount": 1000 + j,
                    "currency": "USD",
                    "payment_method_token": "pm_card_visa",
                }
                await client.command("payment.create", "late-0", data)
    # The insights' worker starts with them waiting, its registry 3 s late.
    path = os.pathsep.join(filter(None, [str(SHIM), dep.env.get("PYTHONPATH")]))
    late = {**dep.env, "PYTHONPATH": path, "PAYSTREAM_TEST_REGISTRY_DELAY_SECONDS": "3"}
    with WorkerProcess(late, dep.base_dir / "w2.log", free_port()):
        deadline = time.monotonic() + 45
        totals = _totals(await _events(dep, dep.settings.analytics_topic))
        while totals["outcomes"] != {"payment.succeeded": N} and time.monotonic() < deadline:
            await asyncio.sleep(1)
            totals = _totals(await _events(dep, dep.settings.analytics_topic))
    assert totals["outcomes"] == {"payment.succeeded": N}, totals
    assert totals["money"]["captured"] == sum(1000 + j for j in range(N)), totals
    assert "test shim: the tenant registry starts 3 s late" in (dep.base_dir / "w2.log").read_text()

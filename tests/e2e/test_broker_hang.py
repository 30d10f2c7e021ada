"""A broker that stops answering is seen on the worker's /metrics.

The lag stands as of the broker's last answer, so a hung broker does not show there;
``paystream_consumer_fetch_age_seconds`` does. The test owns its broker (a private
Tansu it can freeze with SIGSTOP), like the outage test owns its PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from paystream.devstack.kafka import TansuBroker
from paystream.tenancy.models import Tenant
from tests.fixtures.pipeline import Deployment

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]


def _fetch_ages(base_url: str) -> list[float]:
    """The command agent's fetch age on each partition this worker owns."""
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return [
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "paystream_consumer_fetch_age_seconds"
        for sample in family.samples
        if sample.labels["agent"] == "commands"
    ]


async def _until(check: Any, timeout: float, what: str) -> list[float]:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return list(found)
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def test_a_broker_that_stops_answering_shows_in_the_fetch_age(
    deployment_factory: Any,
) -> None:
    root = Path(tempfile.mkdtemp(prefix="paystream-hang-"))
    broker = TansuBroker(root / "tansu.log")
    broker.start()
    try:
        dep: Deployment = await deployment_factory(
            kafka_broker_url=broker.url, paystream_broker_flavor="tansu"
        )
        await dep.add_tenants(Tenant(tenant_id="hang-a"))
        partitions = dep.settings.partitions
        with dep.worker() as worker:
            worker.wait_ready(["hang-a"], partitions=partitions)

            def answering() -> list[float] | None:
                ages = _fetch_ages(worker.base_url)
                return ages if len(ages) == partitions and max(ages) < 2 else None

            await _until(answering, 30, "every partition fetched from within 2 s")
            assert broker.pid is not None
            os.kill(broker.pid, signal.SIGSTOP)  # alive, listening, never answering
            try:

                def hung() -> list[float] | None:
                    ages = _fetch_ages(worker.base_url)
                    return ages if len(ages) == partitions and min(ages) >= 3 else None

                await _until(hung, 20, "every partition's fetch age to pass 3 s")
            finally:
                os.kill(broker.pid, signal.SIGCONT)
            await _until(answering, 60, "fetches answered again once the broker resumed")
    finally:
        broker.stop()
        shutil.rmtree(root, ignore_errors=True)

"""PostgreSQL goes away mid-stream under a real worker: payments go on, the ledger waits.

The command agent keeps answering while the database is down; the ledger sink stalls
(its offsets are not committed), retries with backoff, and when the server returns it
catches up: every outcome in the ledger once, nothing lost, nothing doubled.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from paystream.client import build_command
from paystream.ledger import tenant_session, verify_audit
from paystream.ledger.models import Event, Payment
from paystream.tenancy.crypto import keyring_from_settings
from paystream.tenancy.models import Tenant
from tests.e2e.own_servers import own_ledger

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

TENANTS = ["out-a", "out-b", "out-c"]
PER_TENANT = 80


def _metric(base_url: str, name: str) -> float:
    """Sum of a metric's samples (all label sets) on the worker's /metrics."""
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=5) as resp:
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in resp.read().decode().splitlines()
            if line.startswith((name + " ", name + "{"))
        )


def _lag(base_url: str) -> dict[str, float]:
    """``paystream_consumer_lag_records`` summed per agent."""
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {"commands": 0.0, "ledger_sink": 0.0}
    for family in text_string_to_metric_families(text):
        if family.name == "paystream_consumer_lag_records":
            for sample in family.samples:
                out[sample.labels["agent"]] += sample.value
    return out


def _readyz(base_url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"{base_url}/readyz", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def _until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def _ledger_counts(engine: Any) -> tuple[int, int]:
    payments = events = 0
    for tenant in TENANTS:
        async with tenant_session(engine, tenant) as s:
            payments += (await s.execute(select(func.count()).select_from(Payment))).scalar_one()
            events += (await s.execute(select(func.count()).select_from(Event))).scalar_one()
    return payments, events


async def test_database_outage_stalls_the_sink_and_loses_nothing(deployment_factory: Any) -> None:
    async with own_ledger(
        deployment_factory, "paystream-outage-", paystream_stall_seconds="5"
    ) as own:
        dep, pg, engine = own.dep, own.pg, own.engine
        await dep.add_tenants(*(Tenant(tenant_id=t) for t in TENANTS))
        commands = [
            build_command(
                "payment.create", t,
                {"amount": 100 + i, "currency": "USD", "payment_method_token": "pm_card_visa"},
            )
            for i in range(PER_TENANT)
            for t in TENANTS
        ]  # fmt: skip
        with dep.worker() as worker:
            worker.wait_ready(TENANTS, partitions=dep.settings.partitions)
            async with dep.client() as client:
                first, rest = commands[:60], commands[60:]
                await asyncio.gather(*(client.send(c) for c in first))
                await _until(lambda: _has(engine, 60), 30, "the first outcomes in the ledger")
                pg.stop()  # the database goes away mid-stream
                outcomes = await asyncio.gather(*(client.send(c, timeout=60) for c in rest))
                # payments are still answered while the ledger is down
                assert all(o.get_type() == "com.paystream.payment.succeeded" for o in outcomes)

                async def stalled() -> bool:
                    return _metric(worker.base_url, "paystream_ledger_sink_stalled") == 1.0

                await _until(stalled, 30, "the sink to report itself stalled")
                failures = _metric(worker.base_url, "paystream_ledger_write_failures_total")
                # An operator sees the sink behind while the command agent keeps up.
                assert _lag(worker.base_url)["ledger_sink"] > 0

                async def commands_kept_up() -> bool:
                    return _lag(worker.base_url)["commands"] == 0

                await _until(commands_kept_up, 10, "the command agent's lag to be zero")
                assert _lag(worker.base_url)["ledger_sink"] > 0

                async def listed_stalled() -> bool:
                    return [s["agent"] for s in _readyz(worker.base_url)[1]["stalled"]] == [
                        "ledger_sink"
                    ]

                # /readyz names the stalled sink; the worker stays ready: commands run.
                await _until(listed_stalled, 30, "/readyz to list the sink as stalled")
                status, body = _readyz(worker.base_url)
                assert status == 200 and body["ready"] is True, body
                assert body["stalled"][0]["behind"] > 0 and body["stalled"][0]["seconds"] >= 5
                pg.resume()

                async def caught_up() -> bool:
                    try:
                        return await _ledger_counts(engine) == (len(commands), len(commands))
                    except Exception:  # the test engine's pool reconnects after the restart
                        return False

                await _until(caught_up, 60, "the ledger to catch up")

                async def committed() -> bool:
                    return _lag(worker.base_url)["ledger_sink"] == 0

                await _until(committed, 30, "the sink's lag to return to zero")
                assert _readyz(worker.base_url) == (
                    200,
                    {"ready": True, "waiting_for": [], "stalled": [], "publish_failing": None},
                )
                assert (
                    _metric(
                        worker.base_url,
                        'paystream_agent_committed_timestamp_seconds{agent="ledger_sink"}',
                    )
                    > time.time() - 60
                )
        assert failures >= 1
        assert await _ledger_counts(engine) == (len(commands), len(commands))  # none doubled
        for tenant in TENANTS:
            assert (await verify_audit(engine, tenant, keyring_from_settings(dep.settings))).ok


async def _has(engine: Any, n: int) -> bool:
    payments, _ = await _ledger_counts(engine)
    return payments >= n

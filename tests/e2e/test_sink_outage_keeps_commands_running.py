"""A ledger sink stalled on its database stops neither the commands nor liveness.

Faust hands every agent its records through one conductor. It stops fetching a partition
once its agent's queue is 80% full, but puts every record of the poll in hand; a poll
that filled a stalled sink's queue would make the conductor wait on it, and with it
every other agent. The worker pauses the agent's whole topic (streams/backpressure.py) and
bounds a poll to under a fifth of a queue (as Kafka's own client bounds max.poll.records
to 500), so that cannot happen. Here the queues are tiny
(PAYSTREAM_STREAM_BUFFER_MAXSIZE=256) and hundreds of outcomes wait on the stalled sink:
the commands go on, /readyz lists the sink as stalled, and /healthz stays 200. (On the
embedded broker the polls stayed small enough that Faust's own per-partition pause did
not fill the queue either: this guards the outcome; tests/streams/test_backpressure.py
shows the mechanism.)
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from sqlalchemy import func, select

from paystream.client import build_command
from paystream.ledger import tenant_session
from paystream.ledger.models import Event
from paystream.tenancy.models import Tenant
from tests.e2e.own_servers import json_page, own_ledger

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

TENANTS = ["starve-a", "starve-b", "starve-c"]
BEFORE, DURING = 10, 200  # commands per tenant before and during the outage
QUEUE = 256


async def _events(engine: Any) -> int:
    total = 0
    for tenant in TENANTS:
        async with tenant_session(engine, tenant) as s:
            total += (await s.execute(select(func.count()).select_from(Event))).scalar_one()
    return total


async def _until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


def _payments(tenant: str, n: int, base: int) -> list[Any]:
    return [
        build_command(
            "payment.create",
            tenant,
            {"amount": base + i, "currency": "USD", "payment_method_token": "pm_card_visa"},
        )
        for i in range(n)
    ]


async def test_a_stalled_sink_does_not_starve_the_command_agent(deployment_factory: Any) -> None:
    async with own_ledger(
        deployment_factory,
        "paystream-starve-",
        paystream_stream_buffer_maxsize=str(QUEUE),
        paystream_stall_seconds="5",
        paystream_liveness_stall_seconds="5",
    ) as own:
        dep, pg, engine = own.dep, own.pg, own.engine
        await dep.add_tenants(*(Tenant(tenant_id=t) for t in TENANTS))
        with dep.worker() as worker:
            worker.wait_ready(TENANTS, partitions=dep.settings.partitions)
            async with dep.client() as client:
                before = [c for t in TENANTS for c in _payments(t, BEFORE, 100)]
                await asyncio.gather(*(client.send(c) for c in before))

                async def stored_before() -> bool:
                    return await _events(engine) >= len(before)

                await _until(stored_before, 30, "the first outcomes in the ledger")
                pg.stop()
                # Several queues' worth of outcomes while the sink cannot store any.
                during = [c for t in TENANTS for c in _payments(t, DURING, 1000)]
                outcomes = await asyncio.gather(*(client.send(c, timeout=60) for c in during))
                assert all(o.get_type() == "com.paystream.payment.succeeded" for o in outcomes)

                # The sink is stalled (readiness lists it once the 5 s have passed since a
                # probe first saw it behind); the command agent is not, and a stalled sink
                # never fails liveness.
                async def sink_listed() -> bool:
                    _, ready = await asyncio.to_thread(json_page, worker, "/readyz")
                    return [s["agent"] for s in ready["stalled"]] == ["ledger_sink"]

                await _until(sink_listed, 30, "/readyz to list the sink as stalled")
                status, health = await asyncio.to_thread(json_page, worker, "/healthz")
                assert (status, health["failing"]) == (200, []), health
                late = await asyncio.gather(
                    *(client.send(c, timeout=60) for c in _payments(TENANTS[0], 5, 5000))
                )
                assert len(late) == 5
                pg.resume()

                async def caught_up() -> bool:
                    try:
                        return await _events(engine) == len(before) + len(during) + 5
                    except Exception:  # the test engine reconnects after the restart
                        return False

                await _until(caught_up, 90, "the ledger to catch up")
            assert not worker.exited()

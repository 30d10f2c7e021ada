"""Insights counts stay exact across an ordinary rolling restart of a two-worker fleet:
SIGTERM one worker while outcomes flow, start another in its place (review h61g, after the
outcome agent's membership lease and give-up rules). Per tenant a customer with a decline
short of the fraud threshold (an alert: counted twice) and one at it (none: one lost).
One run in fifteen lost two payments' counts: the replacement read the stopped worker's
last outcomes before its tenant registry had loaded (review h62a;
test_insights_registry_late.py makes that certain)."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import pytest

from paystream.client import PaystreamClient, build_command
from paystream.tenancy.models import Tenant
from tests.e2e.test_crash import OutcomeLog, _produce, _wait_for
from tests.e2e.test_insights import _totals, events
from tests.e2e.together import start_together, stop_together
from tests.fixtures.pipeline import Deployment, wait_for_owners

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

THRESHOLD = 4  # subject_declines


async def test_rolling_restart_keeps_insights_exact(deployment_factory: Any) -> None:
    dep: Deployment = await deployment_factory(
        paystream_agents="commands,insights",
        paystream_insights_window_seconds="2",
        paystream_fraud_subject_declines=str(THRESHOLD),
        paystream_fraud_window_seconds="86400",
    )
    tenants = [f"roll-{i}" for i in range(4)]
    await dep.add_tenants(*(Tenant(tenant_id=t) for t in tenants))
    w1, w2, w3 = dep.worker("w1"), dep.worker("w2"), dep.worker("w3")
    try:
        await start_together(w1, w2)
        await wait_for_owners((w1, w2), dep.settings.partitions, tenants)
        # Per tenant: customer A declined THRESHOLD-1 times (no alert unless a decline is
        # counted twice), customer B THRESHOLD times (one alert, unless one is lost).
        custs: dict[str, tuple[str, str]] = {}
        async with PaystreamClient(dep.settings) as client:
            for t in tenants:
                a = (await client.command("customer.create", t, {})).get_data()["entity_id"]
                b = (await client.command("customer.create", t, {})).get_data()["entity_id"]
                custs[t] = (a, b)
        commands = []
        paid_sum = declined_sum = 0
        for j in range(150):
            for t in tenants:
                a, b = custs[t]
                declined_for = (
                    a
                    if j % 37 == 5 and j // 37 < THRESHOLD - 1
                    else b
                    if j % 30 == 7 and j // 30 < THRESHOLD
                    else None
                )
                if declined_for is not None:
                    data = {
                        "amount": 500 + j,
                        "currency": "USD",
                        "payment_method_token": "pm_card_chargeDeclined",
                        "customer_id": declined_for,
                    }
                    declined_sum += 500 + j
                else:
                    data = {
                        "amount": 1000 + j,
                        "currency": "USD",
                        "payment_method_token": "pm_card_visa",
                    }
                    paid_sum += 1000 + j
                commands.append(build_command("payment.create", t, data))
        n_declined = len(tenants) * (THRESHOLD - 1 + THRESHOLD)
        expected_outcomes = {
            "customer.created": 2 * len(tenants),
            "payment.failed": n_declined,
            "payment.succeeded": len(commands) - n_declined,
        }
        ids = {c.get_id() for c in commands}
        log = OutcomeLog(dep)
        reader = asyncio.create_task(log.run())
        producing = asyncio.create_task(_produce(dep, commands, rate=60))
        await _wait_for(lambda: len(log.by_command.keys() & ids) >= 150, 60, "outcomes flowing")
        stopped_at = len(log.by_command.keys() & ids)
        stopping = asyncio.create_task(asyncio.to_thread(w1.kill, signal.SIGTERM))
        await asyncio.sleep(1)
        w3.start()  # ...and its replacement started while outcomes flow
        await stopping
        await producing
        await _wait_for(lambda: ids <= log.by_command.keys(), 120, "every outcome")
        assert stopped_at < len(ids)

        async with events(dep, dep.settings.analytics_topic) as windows:
            await windows.until(lambda got: _totals(got)["outcomes"] == expected_outcomes, 60)
            await asyncio.sleep(6)  # any later (re)publication of a window
            totals = _totals(await windows.caught_up())
        expected_money = {
            "authorized": 0,
            "captured": paid_sum,
            "refunded": 0,
            "declined": declined_sum,
        }
        async with events(dep, dep.settings.fraud_topic) as fraud:
            alerts = await fraud.caught_up()
        by_subject: dict[str, set[int]] = {}
        for al in alerts:
            d = al.get_data()
            by_subject.setdefault(d["subject"], set()).add(d["observed"])
        report = (totals, expected_outcomes, expected_money, by_subject, custs, stopped_at)
        assert totals["outcomes"] == expected_outcomes, report
        assert totals["money"] == expected_money, report
        for a, b in custs.values():
            assert a not in by_subject, ("a decline counted twice", report)
            assert by_subject.get(b) == {THRESHOLD}, ("a decline lost", report)
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    finally:
        await stop_together(w1, w2, w3)

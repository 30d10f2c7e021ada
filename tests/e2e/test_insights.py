"""Insights end to end: a real worker counts its own outcomes into analytics windows and
raises fraud alerts, exactly once per outcome across a re-sent command and a SIGKILL."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest

from paystream.client import PaystreamClient, build_command
from paystream.insights.events import ALERT_TYPE, WINDOW_TYPE
from paystream.streams.codec import decode_record
from paystream.tenancy.models import Tenant
from tests.e2e.topic_tail import TopicTail
from tests.fixtures.pipeline import Deployment

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

DECLINED = {"amount": 500, "currency": "USD", "payment_method_token": "pm_card_chargeDeclined"}
PAID = {"amount": 1000, "currency": "USD", "payment_method_token": "pm_card_visa"}
# Disputed by its cardholder at once (the simulator's card): the dispute in `related`.
DISPUTED = {"amount": 700, "currency": "USD", "payment_method_token": "pm_card_createDispute"}


FRAUD_WINDOW_SECONDS = 86_400


def _fraud_window(at: float) -> int:
    return int(at) // FRAUD_WINDOW_SECONDS


def _decoded(record: Any) -> Any:
    return decode_record(record.key, record.value, dict(record.headers))


def events(dep: Deployment, topic: str) -> TopicTail[Any]:
    """A tail of ``topic``'s events (analytics windows, fraud alerts), as they come."""
    return TopicTail(dep, topic, _decoded)


def _latest(windows: list[Any]) -> dict[tuple[str, Any], dict[str, Any]]:
    """Per tenant and window the publication with the most outcomes (consumers keep that)."""
    latest: dict[tuple[str, Any], dict[str, Any]] = {}
    for event in windows:
        data = event.get_data()
        key = (data["tenant_id"], data["window_start"])
        if key not in latest or data["events"] > latest[key]["events"]:
            latest[key] = data
    return latest


def _totals(windows: list[Any]) -> dict[str, Any]:
    """The windows' counts (their latest publications), summed over tenants and windows."""
    outcomes: dict[str, int] = {}
    money: dict[str, int] = {}
    disputes: dict[str, int] = {}
    for data in _latest(windows).values():
        for kind, n in data["outcomes"].items():
            outcomes[kind] = outcomes.get(kind, 0) + n
        for field, amount in data["money"].get("USD", {}).items():
            money[field] = money.get(field, 0) + amount
        for field, n in data.get("disputes", {}).get("USD", {}).items():
            disputes[field] = disputes.get(field, 0) + n
        succeeded = data.get("payments_succeeded", {}).get("USD", 0)
        disputes["payments_succeeded"] = disputes.get("payments_succeeded", 0) + succeeded
    return {"outcomes": outcomes, "money": money, "disputes": disputes}


async def test_outcomes_are_counted_once_and_card_testing_raises_one_alert(
    deployment_factory: Any,
) -> None:
    dep: Deployment = await deployment_factory(
        paystream_agents="commands,insights",
        paystream_insights_window_seconds="2",
        paystream_fraud_subject_declines="3",
        # The fraud windows are tumbling ones aligned to the clock: the declines below,
        # across a worker restart, straddled a 10-minute boundary one run in ~20 (two
        # in each window, no alert). A day's window: see the check at the end.
        paystream_fraud_window_seconds=str(FRAUD_WINDOW_SECONDS),
    )
    await dep.add_tenants(Tenant(tenant_id="acme"))
    first_decline = time.time()
    expected_outcomes = {
        "customer.created": 1,
        "payment.failed": 4,
        "payment.succeeded": 4,
        "refund.succeeded": 1,
        "dispute.closed": 1,
    }
    async with (
        events(dep, dep.settings.analytics_topic) as windows,
        events(dep, dep.settings.fraud_topic) as alerts,
    ):
        with dep.worker() as worker:
            worker.wait_ready(["acme"], partitions=dep.settings.partitions)
            async with PaystreamClient(dep.settings) as client:
                customer = await client.command("customer.create", "acme", {})
                cus = customer.get_data()["entity_id"]  # type: ignore[index]
                for _ in range(2):
                    out = await client.command(
                        "payment.create", "acme", {**DECLINED, "customer_id": cus}
                    )
                    assert out.get_type() == "com.paystream.payment.failed"
                paid = build_command("payment.create", "acme", PAID)
                first = await client.send(paid)
                again = await client.send(paid)  # sent twice: one outcome, re-emitted
                assert again.get_id() == first.get_id()
                pid = first.get_data()["entity_id"]  # type: ignore[index]
                await client.command("refund.create", "acme", {"payment_id": pid, "amount": 300})
                # A payment disputed at once, the dispute accepted (lost): the accept sent
                # twice too (one outcome, re-emitted), and everything redelivered below.
                disputed = await client.command("payment.create", "acme", DISPUTED)
                dispute = disputed.get_data()["related"][0]["entity_id"]  # type: ignore[index]
                accept = build_command("dispute.accept", "acme", {"dispute_id": dispute})
                closed = await client.send(accept)
                assert closed.get_type() == "com.paystream.dispute.closed", closed
                assert (await client.send(accept)).get_id() == closed.get_id()
            # Published once their window closed (2 s, plus 2 s of grace).
            assert await windows.until(bool), "no analytics window before the kill"
            worker.kill(signal.SIGKILL)  # and everything not yet committed comes again
        with dep.worker("w2") as worker:
            worker.wait_ready(["acme"], partitions=dep.settings.partitions)
            async with PaystreamClient(dep.settings) as client:
                # The third decline of the customer in the fraud window: one alert.
                for _ in range(2):
                    await client.command("payment.create", "acme", {**DECLINED, "customer_id": cus})
                for _ in range(2):
                    await client.command("payment.create", "acme", PAID)

            def all_counted(published: list[Any]) -> dict[str, Any] | None:
                totals = _totals(published)
                return totals if totals["outcomes"] == expected_outcomes else None

            totals = await windows.until(all_counted)
            assert totals, _totals(windows.records)
            # (Published with the batch that counted the third decline.)
            assert await alerts.until(bool, timeout=10), "no fraud alert"
    assert totals["money"] == {
        "authorized": 0,
        "captured": 3 * 1000 + 700,
        "refunded": 300,
        "declined": 4 * 500,
    }
    # One dispute opened and lost, once each, against the four payments that succeeded.
    assert totals["disputes"] == {
        "opened": 1,
        "opened_amount": 700,
        "lost": 1,
        "lost_amount": 700,
        "payments_succeeded": 4,
    }
    assert {w.get_type() for w in windows.records} == {WINDOW_TYPE}
    assert all(w.get_extension("tenantid") == "acme" for w in windows.records)
    if _fraud_window(first_decline) != _fraud_window(time.time()):
        pytest.skip("the declines straddled a fraud window's boundary (UTC midnight)")
    published = alerts.records
    assert {a.get_id() for a in published} and all(a.get_type() == ALERT_TYPE for a in published)
    [alert] = {a.get_id(): a for a in published}.values()  # republished: the same event
    data = alert.get_data()
    assert (data["rule"], data["subject_type"], data["subject"], data["observed"]) == (
        "subject_declines",
        "customer",
        cus,
        3,
    )

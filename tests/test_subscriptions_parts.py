"""Subscriptions beyond the handlers: the state machine, retention, the ledger's
translation of their outcomes, the simulator's clock and `paystream simulator advance`."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner

from paystream import simulator_cli
from paystream.gateways.simulator import SimulatorGateway
from paystream.gateways.simulator.operations import period_start
from paystream.ledger.events import EntityType
from paystream.ledger.sink import outcome_to_ledger_events
from paystream.settings import Settings
from paystream.streams.outcomes import build_outcome, command_ref
from paystream.tables.retention import settled
from paystream.tables.state_machines import (
    InvalidState,
    check_subscription_move,
    check_subscription_transition,
    invoice_moves,
)
from tests.agents.harness import new_tenant_id


def test_state_machine() -> None:
    for status in ("trialing", "active", "past_due"):
        check_subscription_transition(status, "cancel")
        check_subscription_transition(status, "cancel_at_period_end")
        check_subscription_transition(status, "refresh")
    check_subscription_transition("incomplete", "cancel")
    with pytest.raises(InvalidState):
        check_subscription_transition("incomplete", "cancel_at_period_end")
    for verb in ("cancel", "refresh", "cancel_at_period_end"):
        with pytest.raises(InvalidState):
            check_subscription_transition("canceled", verb)
    check_subscription_move("trialing", "past_due")
    check_subscription_move("past_due", "active")
    for before, after in (("canceled", "active"), ("active", "trialing"), ("active", "incomplete")):
        with pytest.raises(InvalidState):
            check_subscription_move(before, after)
    assert invoice_moves("open", "paid") and invoice_moves("open", "void")
    assert not invoice_moves("paid", "open") and not invoice_moves("void", "paid")


def test_retention_settles_canceled_subscriptions_and_no_invoice_on_its_own() -> None:
    assert settled({"entity_type": "subscription", "status": "canceled"})
    for live in ("trialing", "active", "past_due", "incomplete"):
        assert not settled({"entity_type": "subscription", "status": live})
    # An invoice goes with its subscription (tests/agents/test_subscription_invoices_swept.py).
    for status in ("paid", "void", "open"):
        assert not settled({"entity_type": "invoice", "status": status})


def test_monthly_periods_keep_the_anchor_day() -> None:
    jan31 = int(datetime(2025, 1, 31, 12, tzinfo=UTC).timestamp())
    sub = {"anchor": jan31, "interval": "month", "interval_count": 1}
    starts = [datetime.fromtimestamp(period_start(sub, k), UTC) for k in range(4)]
    assert [(d.month, d.day) for d in starts] == [(1, 31), (2, 28), (3, 31), (4, 30)]
    yearly = {"anchor": jan31, "interval": "year", "interval_count": 1}
    assert datetime.fromtimestamp(period_start(yearly, 2), UTC).year == 2027
    weekly = {"anchor": 0, "interval": "week", "interval_count": 2}
    assert period_start(weekly, 3) == 3 * 14 * 86400


def test_the_ledger_stores_subscription_outcomes() -> None:
    """A subscription outcome with its invoice in `related` is two ledger events (stored
    in `events`; no entity table yet), never an invalid event for the sink to park."""
    cmd = command_ref(
        tenant_id="acme",
        command_id="c1",
        command_type="subscription.create",
        idempotency_key="c1",
        time=datetime(2025, 1, 1, tzinfo=UTC),
        traceparent=None,
        tracestate=None,
        source=None,
        id_salt=None,
    )
    sub = {
        "tenant_id": "acme", "id": "s1", "version": 1, "provider": "simulator",
        "created_by": "c1", "customer_id": "c1", "payment_method_id": "m1",
        "status": "active", "amount": 1500, "currency": "EUR", "interval": "month",
        "interval_count": 1, "provider_subscription_id": "sub_x",
        "current_period_start": "2025-01-01T00:00:00Z",
        "current_period_end": "2025-02-01T00:00:00Z", "trial_end": None,
        "cancel_at_period_end": False, "canceled_at": None, "latest_invoice_id": "in_x",
        "metadata": {},
    }  # fmt: skip
    invoice = {
        "tenant_id": "acme", "id": "in_x", "version": 1, "provider": "simulator",
        "created_by": "c1", "subscription_id": "s1", "customer_id": "c1", "status": "paid",
        "amount": 1500, "currency": "EUR", "period_start": "2025-01-01T00:00:00Z",
        "period_end": "2025-02-01T00:00:00Z", "provider_invoice_id": "in_p",
        "provider_payment_id": "pi_x",
    }  # fmt: skip
    data = {
        "tenant_id": "acme", "command_id": "c1", "entity_type": "subscription",
        "entity_id": "s1", "version": 1, "object": sub,
        "related": [
            {"entity_type": "invoice", "entity_id": "in_x", "version": 1, "object": invoice}
        ],
    }  # fmt: skip
    events = outcome_to_ledger_events(build_outcome(cmd, "subscription.created", data))
    assert [(e.entity_type, e.entity_id) for e in events] == [
        (EntityType.SUBSCRIPTION, "s1"),
        (EntityType.INVOICE, "in_x"),
    ]
    assert events[0].columns["amount"] == 1500 and events[1].columns["status"] == "paid"


def test_the_simulator_clock_moves_forward_per_tenant(redis_url: str) -> None:
    async def run() -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        client = aioredis.from_url(redis_url)
        try:
            t, other = new_tenant_id(), new_tenant_id()
            settings = Settings(redis_url=redis_url)
            first = await simulator_cli._advance(settings, t, 3600)
            second = await simulator_cli._advance(settings, t, 7200)
            elsewhere = await SimulatorGateway(client, other).advance_clock(0)
            return first, second, elsewhere
        finally:
            await client.aclose()

    first, second, elsewhere = asyncio.run(run())
    assert (first["offset"], second["offset"], elsewhere["offset"]) == (3600, 10800, 0)


def test_advance_needs_an_amount_of_time() -> None:
    result = CliRunner().invoke(simulator_cli.simulator_group, ["advance", "--tenant", "acme"])
    assert result.exit_code == 2 and "--seconds or --days" in result.output

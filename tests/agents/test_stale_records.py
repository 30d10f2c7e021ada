"""A command whose record, or whose `time`, is older than the entity retention (less a
day) is refused `past_retention` without running: read again that late (a consumer group
reset to old records), or sent again from an outbox, a create would find its entity gone
by retention and charge again (tables/retention.py). Unless it was answered before (the
same answer) or the provider may have acted on it (it goes on as any would)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from cloudevents.core.v1.event import CloudEvent

from paystream.client import build_command
from paystream.gateways.simulator import SimulatorGateway
from paystream.tenancy.models import Tenant
from tests.agents.conftest import running_harness
from tests.agents.harness import Harness, data, kind, outcome_of
from tests.agents.test_let_through import _charges, _parked_after_a_charge, _record

pytestmark = pytest.mark.asyncio

DAY_MS = 86_400_000


async def _charge(h: Harness, age_ms: int) -> str:
    tenant = h.add_tenant()
    event = build_command(
        "payment.create",
        tenant,
        {
            "payment_id": "pay_1",
            "amount": 500,
            "currency": "EUR",
            "payment_method_token": "pm_card_visa",
        },
    )
    _, out = await h.send_event(event, timestamp_ms=int(time.time() * 1000) - age_ms)
    assert out is not None
    return kind(out) if kind(out) != "command.rejected" else str(data(out)["reason"])


@pytest.fixture
async def harness(redis_url: str) -> AsyncIterator[Harness]:
    """With the default retention (the harness of the other tests has it off)."""
    async with running_harness(redis_url, entity_retention_seconds=540 * DAY_MS // 1000) as h:
        yield h


async def test_a_record_older_than_retention_less_a_day_is_refused_past_retention(
    harness: Harness,
) -> None:
    answer = await _charge(harness, 540 * DAY_MS - DAY_MS + 60_000)
    assert answer == "past_retention"
    assert not harness.tables.payments  # nothing ran
    assert not await _effects(harness)  # nor was the provider asked


async def test_a_record_just_younger_runs(harness: Harness) -> None:
    answer = await _charge(harness, 540 * DAY_MS - DAY_MS - 60_000)
    assert answer == "payment.succeeded"
    assert len(await _effects(harness)) == 1


async def test_without_retention_no_record_is_stale(redis_url: str) -> None:
    async with running_harness(redis_url, entity_retention_seconds=0) as h:
        answer = await _charge(h, 5000 * DAY_MS)
        assert answer == "payment.succeeded"


async def _effects(h: Harness) -> list[object]:
    effects: list[object] = []
    for raw in h.tenants.values():
        gateway = h.pool.get(Tenant.model_validate(raw))
        assert isinstance(gateway, SimulatorGateway)
        effects += await gateway.effects()
    return effects


async def test_a_command_whose_time_is_that_old_is_refused_past_retention_too(
    harness: Harness,
) -> None:
    """Sent again from a producer's outbox: a fresh record, the command's own old time."""
    tenant = harness.add_tenant()
    event = build_command(
        "payment.create",
        tenant,
        {"amount": 500, "currency": "EUR", "payment_method_token": "pm_card_visa"},
    )
    event = CloudEvent(
        {**event.get_attributes(), "time": datetime.now(UTC) - timedelta(days=540)},
        event.get_data(),
    )
    _, out = await harness.send_event(event)
    assert out is not None and data(out)["reason"] == "past_retention", data(out)
    assert not await _effects(harness)


async def test_a_parked_charge_re_driven_past_the_cut_off_finishes_not_refused(
    harness: Harness,
) -> None:
    """The provider charged, the answer was lost, the command parked; re-driven once
    past the cut-off, it must not get a final refusal: the money moved."""
    t, record = await _parked_after_a_charge(harness)
    harness.processor._past_retention_ms = 0  # (time passes: every record is past it now)
    out = outcome_of(harness.settings, await harness.processor.process(_record(t)))
    assert out is not None and kind(out) == "payment.succeeded", out and data(out)
    assert await _charges(harness, t, record) == 1


async def test_a_record_answered_before_gets_the_same_answer_past_the_cut_off(
    harness: Harness,
) -> None:
    t = harness.add_tenant()
    rec = _record(t, body={"amount": -1, "currency": "USD", "payment_method_token": "x"})
    first = outcome_of(harness.settings, await harness.processor.process(rec))
    assert first is not None and data(first)["reason"] == "validation_error"
    harness.processor._past_retention_ms = 0
    again = outcome_of(harness.settings, await harness.processor.process(rec))  # redelivered
    assert again is not None and data(again)["reason"] == "validation_error"
    assert again.get_id() == first.get_id()


async def test_a_record_the_limits_refused_gets_the_same_refusal_past_the_cut_off(
    harness: Harness,
) -> None:
    """The limits keep their own refusals (not the kept answers): redelivered after the
    cut-off, the record was answered `past_retention`, another event than its first."""
    t = harness.add_tenant(limits={"max_payment_amount": {"USD": 2000}})
    rec = _record(t)  # 5000 USD: over the limit
    first = outcome_of(harness.settings, await harness.processor.process(rec))
    assert first is not None and data(first)["reason"] == "quota_exceeded", data(first)
    harness.processor._past_retention_ms = 0
    again = outcome_of(harness.settings, await harness.processor.process(rec))  # redelivered
    assert again is not None and data(again)["reason"] == "quota_exceeded", data(again)
    assert again.get_id() == first.get_id()

"""A command whose record, or whose `time`, is older than the entity retention (less a
day) is refused `stale` without running: read again that late (a consumer group reset to
old records), or sent again from an outbox, a create would find its entity gone by
retention and charge again (tables/retention.py)."""

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
from tests.agents.harness import Harness, data, kind

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


async def test_a_record_older_than_retention_less_a_day_is_refused_stale(
    harness: Harness,
) -> None:
    answer = await _charge(harness, 540 * DAY_MS - DAY_MS + 60_000)
    assert answer == "stale"
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


async def test_a_command_whose_time_is_that_old_is_refused_stale_too(harness: Harness) -> None:
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
    assert out is not None and data(out)["reason"] == "stale", data(out)
    assert not await _effects(harness)

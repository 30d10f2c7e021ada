"""A command resent past the idempotency window, after a client's retry under the same
key (a new command id) took the key: answered as it was first, from the entity that
remembers it (README: "a command it answers again past the idempotency window is
answered as before, the very event first emitted"), not with the retry's answer (found
by a time-travel exploration: the resend got the retry's `invalid_state`, or the event
of another payment)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest
from cloudevents.core.v1.event import CloudEvent

from paystream.client import build_command
from paystream.gateways.simulator import SimulatorGateway
from paystream.tenancy.models import Tenant
from tests.agents.harness import Harness

pytestmark = pytest.mark.asyncio

DAY = 86_400.0


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(time, "time", clock)
    return clock


async def _charges(h: Harness, tenant: str) -> int:
    gateway = h.pool.get(Tenant.model_validate(h.tenants[tenant]))
    assert isinstance(gateway, SimulatorGateway)
    return sum(1 for e in await gateway.effects() if e.kind == "charge")


def _command(clock: Clock, tenant: str, body: dict[str, Any], command_id: str) -> CloudEvent:
    event = build_command(
        "payment.create", tenant, body, command_id=command_id, idempotency_key="order-1"
    )
    event.get_attributes()["time"] = datetime.fromtimestamp(clock.now, UTC)
    return event


async def _sent(h: Harness, clock: Clock, event: CloudEvent, offset: int) -> list[bytes]:
    emits, out = await h.send_event(event, timestamp_ms=int(clock.now * 1000), offset=offset)
    assert out is not None
    return [e.record.value for e in emits if e.topic == h.settings.events_topic]


@pytest.mark.parametrize(
    "body",
    [
        {"payment_id": "pay1", "amount": 1000, "currency": "USD",
         "payment_method_token": "pm_card_chargeDeclined"},
        {"amount": 500, "currency": "USD", "payment_method_token": "pm_card_visa"},
    ],
    ids=["chosen-id-declined", "no-chosen-id"],
)  # fmt: skip
async def test_a_command_resent_past_the_window_after_a_retry_under_its_key_is_answered_as_first(
    harness: Harness, clock: Clock, body: dict[str, Any]
) -> None:
    t = harness.add_tenant()
    first = _command(clock, t, body, "c1")
    sent = await _sent(harness, clock, first, 1)
    clock.now += 2 * DAY  # past the window: c1's key record expired
    retry = _command(clock, t, body, "c2")
    retried = await _sent(harness, clock, retry, 2)
    charges = await _charges(harness, t)
    clock.now += 60
    assert await _sent(harness, clock, first, 3) == sent  # c1's own event
    assert await _sent(harness, clock, retry, 4) == retried  # and c2's its own
    assert await _charges(harness, t) == charges  # answered, not run

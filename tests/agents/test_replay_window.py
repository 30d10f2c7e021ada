"""A re-driven command the worker reaches after the provider may have forgotten its key.

`dlq replay` holds back records parked too long when it re-sends them; the worker checks
again when it runs one (commands-topic lag after an outage, a long replay): a command
whose first attempt is that old is parked again (reason ``stale``), never run."""

from __future__ import annotations

import time
from typing import Any

import pytest

from paystream import dlq
from paystream.agents.pipeline import Inbound
from paystream.client import build_command
from paystream.dlq import ParkedRecord
from paystream.gateways.simulator import SimulatorGateway
from paystream.settings import CloudEventsMode
from paystream.streams.codec import encode_event
from paystream.tenancy.models import Tenant
from tests.agents.harness import Harness, kind, new_tenant_id, outcome_of

pytestmark = pytest.mark.asyncio

_BODY = {"amount": 5000, "currency": "USD", "payment_method_token": "pm_card_visa",
         "payment_id": "p1"}  # fmt: skip


def _record(tenant: str, offset: int, headers: dict[str, bytes] | None = None) -> Inbound:
    event = build_command("payment.create", tenant, _BODY, command_id="c1")
    rec = encode_event(event, tenant.encode(), CloudEventsMode.BINARY)
    return Inbound(rec.key, rec.value, {**dict(rec.headers), **(headers or {})},
                   int(time.time() * 1000), "paystream.commands", 0, offset)  # fmt: skip


async def _charges(h: Harness, record: dict[str, Any]) -> int:
    gateway = h.pool.get(Tenant.model_validate(record))
    assert isinstance(gateway, SimulatorGateway)
    return sum(1 for e in await gateway.effects() if e.kind == "charge")


async def test_a_replayed_command_reached_after_the_window_is_parked_again(
    harness: Harness,
) -> None:
    t = new_tenant_id()
    # The provider charges p1, its answers are lost: the command is parked.
    harness.add_tenant(t, gateway_options={"lose_response_first": {f"pse:{t}:payment:p1": 3}})
    first = _record(t, 1)
    emits = await harness.processor.process(first)
    assert [e.topic for e in emits] == [harness.settings.retry_topic]
    parked = dict(emits[0].record.headers)
    assert await _charges(harness, harness.tenants[t]) == 1
    # The tenant gets a per-payment cap meanwhile.
    harness.tenants[t] = {**harness.tenants[t], "limits": {"max_payment_amount": {"USD": 1000}}}
    # `dlq replay` re-sent it inside the window (first attempt header carried), but the
    # worker reaches it only after the window: our record of it has expired.
    key = f"{t}:c1"
    harness.idempotency[key] = {**harness.idempotency[key], "expires_at": time.time() - 1}
    day_ago = int(time.time() * 1000) - 25 * 3_600_000
    replayed = _record(t, 2, {"paystream-first-attempt-ms": str(day_ago).encode()})
    assert int(parked["paystream-first-attempt-ms"]) > 0
    emits = await harness.processor.process(replayed)
    assert outcome_of(harness.settings, emits) is None
    assert [e.topic for e in emits] == [harness.settings.retry_topic]
    again = dict(emits[0].record.headers)
    assert again["paystream-park-reason"] == b"stale"
    assert again["paystream-first-attempt-ms"] == str(day_ago).encode()  # keeps its age
    assert await _charges(harness, harness.tenants[t]) == 1


async def test_a_live_parked_command_past_the_window_is_parked_again(harness: Harness) -> None:
    """Its record still live (parked at the end of a long outage), but first run longer
    ago than the provider keeps keys: not sent to the provider again."""
    t = new_tenant_id()
    harness.add_tenant(t, gateway_options={"lose_response_first": {f"pse:{t}:payment:p1": 3}})
    assert [e.topic for e in await harness.processor.process(_record(t, 1))] == [
        harness.settings.retry_topic
    ]
    day_ago = int(time.time() * 1000) - 25 * 3_600_000
    emits = await harness.processor.process(
        _record(t, 2, {"paystream-first-attempt-ms": str(day_ago).encode()})
    )
    assert outcome_of(harness.settings, emits) is None
    assert dict(emits[0].record.headers)["paystream-park-reason"] == b"stale"
    assert harness.idempotency[f"{t}:c1"]["state"] == "parked"
    assert await _charges(harness, harness.tenants[t]) == 1
    # Inside the window, the same replay runs: one answer, for the one charge.
    fresh = int(time.time() * 1000) - 3_600_000
    out = outcome_of(
        harness.settings,
        await harness.processor.process(
            _record(t, 3, {"paystream-first-attempt-ms": str(fresh).encode()})
        ),
    )
    assert out is not None and kind(out) == "payment.succeeded"
    assert await _charges(harness, harness.tenants[t]) == 1


async def test_a_first_attempt_a_producer_makes_up_only_parks_its_own_command(
    harness: Harness,
) -> None:
    """The header is paystream's own, but nothing stops a producer from setting it: an
    old one only parks that producer's command (as stale, unrun), and a replay holds
    back only its tenant's records behind it (tests/test_dlq.py)."""
    t = new_tenant_id()
    harness.add_tenant(t)
    emits = await harness.processor.process(_record(t, 5, {"paystream-first-attempt-ms": b"1"}))
    assert outcome_of(harness.settings, emits) is None
    assert dict(emits[0].record.headers)["paystream-park-reason"] == b"stale"
    assert await _charges(harness, harness.tenants[t]) == 0


class _CapturingProducer:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send_and_wait(self, topic: str, value: Any, **kw: Any) -> None:
        self.sent.append({"topic": topic, "value": value, **kw})


async def test_include_stale_after_reconciling_runs_the_command(harness: Harness) -> None:
    """A payment parked by a provider outage 25 h ago (the provider never charged it).
    The operator checks with the provider, as README says, and runs
    `dlq replay --include-stale`: the worker runs it (its first attempt is kept)."""
    t = new_tenant_id()
    harness.add_tenant(t, gateway_options={"fail_first": {f"pse:{t}:payment:p1": 50}})
    event = build_command("payment.create", t, _BODY, command_id="c1")
    raw = encode_event(event, t.encode(), CloudEventsMode.BINARY)
    day_ago = int(time.time() * 1000) - 25 * 3_600_000
    first = Inbound(raw.key, raw.value, dict(raw.headers), day_ago, "paystream.commands", 0, 1)
    emits = await harness.processor.process(first)
    assert [e.topic for e in emits] == [harness.settings.retry_topic]
    parked = emits[0].record
    assert await _charges(harness, harness.tenants[t]) == 0
    # The outage is over; the operator reconciled (nothing charged) and re-drives it.
    harness.tenants[t] = {**harness.tenants[t], "gateway_options": {}}
    rec = ParkedRecord(harness.settings.retry_topic, 0, 0, parked.key, parked.value,
                       tuple(parked.headers), int(time.time() * 1000))  # fmt: skip
    producer = _CapturingProducer()
    await dlq._resend(producer, harness.settings, rec, {0}, reconciled=True)  # --include-stale
    (resent,) = producer.sent
    replayed = Inbound(resent["key"], resent["value"], dict(resent["headers"]),
                       int(time.time() * 1000), "paystream.commands", 0, 2)  # fmt: skip
    out = outcome_of(harness.settings, await harness.processor.process(replayed))
    assert out is not None, "re-driven with --include-stale, parked again as stale, unrun"
    assert dict(resent["headers"])["paystream-first-attempt-ms"] == str(day_ago).encode()
    assert kind(out) == "payment.succeeded"

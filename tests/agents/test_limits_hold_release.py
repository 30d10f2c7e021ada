"""Daily-volume holds released where a payment is answered for good (review h67b)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from paystream.agents import pipeline
from paystream.agents.pipeline import Emit, Inbound
from paystream.client import build_command
from paystream.settings import CloudEventsMode
from paystream.streams.codec import encode_event
from tests.agents.harness import Harness, data, kind, outcome_of

pytestmark = pytest.mark.asyncio

T0 = 1_790_000_000_000
_offsets = itertools.count(7000)


def _record(
    command_type: str,
    tenant: str,
    body: dict[str, Any],
    command_id: str,
    at_ms: int,
    offset: int | None = None,
) -> Inbound:
    event = build_command(command_type, tenant, body, command_id=command_id)
    rec = encode_event(event, tenant.encode(), CloudEventsMode.BINARY)
    return Inbound(
        key=rec.key,
        value=rec.value,
        headers=dict(rec.headers),
        timestamp_ms=at_ms,
        topic="paystream.commands",
        partition=0,
        offset=next(_offsets) if offset is None else offset,
    )


def _pay(amount: int, token: str = "pm_card_visa", **kw: Any) -> dict[str, Any]:
    return {"amount": amount, "currency": "USD", "payment_method_token": token, **kw}


async def _as_the_agent(h: Harness, rec: Inbound) -> list[Emit]:
    try:  # what agents/commands.py (_run_tenant) does with an exception of ours
        return await h.processor.process(rec)
    except Exception:
        return h.processor.dead_letter_bug(rec)


async def test_a_bug_between_admission_and_the_in_flight_record_releases_the_hold(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The payment is admitted (its 600 held), then our code fails before its in-flight
    record is written: dead-lettered and answered ``internal_error`` for good (the
    provider was never asked). Its 600 used to stay held against the day and the next,
    refusing the tenant's next payment ``quota_exceeded``; now it is released."""
    t = harness.add_tenant(limits={"daily_payment_volume": {"USD": 1000}})
    real = pipeline.HandlerContext
    calls = {"n": 0}

    def buggy(*args: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("a bug of ours after admission, before the in-flight record")
        return real(*args, **kw)

    monkeypatch.setattr(pipeline, "HandlerContext", buggy)
    emits = await _as_the_agent(harness, _record("payment.create", t, _pay(600), "a", T0))
    answer = outcome_of(harness.settings, emits)
    assert answer is not None and data(answer)["reason"] == "internal_error"
    assert f"{t}:a" not in harness.idempotency
    # A legitimate payment that fits the day's quota (nothing moved yet):
    emits = await _as_the_agent(harness, _record("payment.create", t, _pay(1000), "b", T0 + 1))
    out = outcome_of(harness.settings, emits)
    assert out is not None
    assert kind(out) == "payment.succeeded", data(out)


async def test_a_hold_is_released_when_the_daily_volume_was_unset_meanwhile(
    harness: Harness,
) -> None:
    """Parked during an outage, a payment holds 900. The tenant's daily volume is taken
    off (its rate limit kept) and the payment is re-driven and answered. Its hold was
    not released (settle() returned at once for an admission with no currency), so with
    the volume limit put back the same day the answered payment still held 900 of it."""
    t = harness.add_tenant(
        gateway_options={"fail_first": {"*": 3}},
        limits={"commands_per_second": 100, "daily_payment_volume": {"USD": 1000}},
    )
    parked = await harness.processor.process(_record("payment.create", t, _pay(900), "a", T0))
    assert [e.topic for e in parked] == [harness.settings.retry_topic]
    # The operator takes the daily volume off (the rate limit stays).
    harness.add_tenant(t, limits={"commands_per_second": 100})
    redriven = await harness.processor.process(_record("payment.create", t, _pay(900), "a", T0 + 5))
    out = outcome_of(harness.settings, redriven)
    assert out is not None and kind(out) == "payment.succeeded"
    # ... and puts it back an hour later: counted from when it is set, the day has 1000.
    harness.add_tenant(
        t, limits={"commands_per_second": 100, "daily_payment_volume": {"USD": 1000}}
    )
    later = await harness.processor.process(
        _record("payment.create", t, _pay(1000), "b", T0 + 3_600_000)
    )
    out = outcome_of(harness.settings, later)
    assert out is not None
    assert kind(out) == "payment.succeeded", data(out)

"""A re-drive over the key and CloudEvents headers limit in binary mode, as in structured
mode (review h58q): one a seal or the records vouch for runs (it was admitted by a version
before the limit); refused, a charged request got a final answer, and held back as a
re-drive it came back on every replay, the limit being a constant."""

from __future__ import annotations

import time

import pytest

from paystream.agents.pipeline import Inbound
from paystream.client import build_command
from paystream.first_attempt import FIRST_ATTEMPT_HEADER, SEAL_HEADER, FirstAttemptSeals
from paystream.settings import CloudEventsMode
from paystream.streams.codec import encode_event
from tests.agents.harness import Harness, kind, new_tenant_id, outcome_of
from tests.agents.test_redrive_size import _BODY, a2_answered_under_k, keyed  # noqa: F401

pytestmark = pytest.mark.asyncio


def _binary_with_big_attribute(tenant: str, command_id: str) -> Inbound:
    event = build_command(
        "payment.create", tenant, _BODY, command_id=command_id, idempotency_key="K"
    )
    event = type(event)({**event.get_attributes(), "bigext": "x" * 20_000}, event.get_data())
    rec = encode_event(event, tenant.encode(), CloudEventsMode.BINARY)
    return Inbound(
        rec.key, rec.value, dict(rec.headers), int(time.time() * 1000), "paystream.commands", 0, 2
    )


async def _a2_done(h: Harness, t: str) -> None:
    await a2_answered_under_k(h, t, CloudEventsMode.BINARY)


def _redrive(h: Harness, a1: Inbound, *, sealed: bool) -> Inbound:
    first = int(time.time() * 1000) - 60_000
    headers = {**a1.headers, FIRST_ATTEMPT_HEADER: str(first).encode()}
    if sealed:
        headers[SEAL_HEADER] = FirstAttemptSeals.from_settings(h.settings).seal(
            a1.key, a1.value, headers, first
        )
    return Inbound(a1.key, a1.value, headers, a1.timestamp_ms, a1.topic, 0, 3)


async def test_a_known_binary_redrive_over_the_attribute_limit_runs_without_a_master_key(
    harness: Harness,
) -> None:
    """Structured, the same request runs (test_a_redrive_over_the_attribute_limit_is_never_
    refused); binary, it got a final payload_too_large though the key's request charged."""
    t = new_tenant_id()
    harness.add_tenant(t)
    await _a2_done(harness, t)
    emits = await harness.processor.process(
        _redrive(harness, _binary_with_big_attribute(t, "a1"), sealed=False)
    )
    out = outcome_of(harness.settings, emits)
    assert out is None or not kind(out).endswith("rejected"), out.get_data()


async def test_a_sealed_binary_redrive_over_the_attribute_limit_runs(
    keyed: Harness,  # noqa: F811
) -> None:
    """Sealed: structured runs it; binary dead-lettered it redrive_too_large, replayable,
    and the attribute limit being a constant, it came back on every replay."""
    t = new_tenant_id()
    keyed.add_tenant(t)
    await _a2_done(keyed, t)
    emits = await keyed.processor.process(
        _redrive(keyed, _binary_with_big_attribute(t, "a1"), sealed=True)
    )
    letters = [
        dict(e.record.headers).get("paystream-dlq-reason")
        for e in emits
        if e.topic == keyed.settings.dlq_topic
    ]
    assert letters == [], letters
    assert kind(outcome_of(keyed.settings, emits)) == "payment.succeeded"

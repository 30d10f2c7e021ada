"""The hold an older version placed for a chosen payment id was under the key
"{tenant}:payment:{id}", which is also what a client's payment under idempotency key
"payment:{id}" is held under today. Carrying over (or releasing) "the former hold" of a
chosen-id payment took that other payment's hold: after a crash the tenant went past its
daily volume, and without one the day's volume stayed short for good (review findings)."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from paystream.agents.pipeline import Inbound
from paystream.client import build_command
from paystream.settings import CloudEventsMode
from paystream.streams.codec import encode_event
from tests.agents.conftest import running_harness
from tests.agents.harness import Harness, data, kind, outcome_of
from tests.agents.test_limits import T0, _charges, _pay, _record, _run

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def harness(
    redis_url: str,
) -> AsyncIterator[Harness]:  # both parked payments' failures must not open the circuit
    async with running_harness(redis_url, breaker_failure_threshold=100) as h:
        yield h


def _keyed(
    t: str, body: dict[str, Any], command_id: str, key: str, at: int, offset: int
) -> Inbound:
    event = build_command("payment.create", t, body, command_id=command_id, idempotency_key=key)
    rec = encode_event(event, t.encode(), CloudEventsMode.BINARY)
    return Inbound(rec.key, rec.value, dict(rec.headers), at, "paystream.commands", 0, offset)


async def _two_parked(h: Harness) -> str:
    t = h.add_tenant(
        gateway_options={"fail_first": {"*": 3}},  # each key's first delivery parks
        limits={"daily_payment_volume": {"USD": 1000}},
    )
    # X: a client's payment under idempotency key "payment:p1" (no chosen id), parked.
    x = await h.processor.process(_keyed(t, _pay(500), "x", "payment:p1", T0, 1))
    assert [e.topic for e in x] == [h.settings.retry_topic]
    # Y: another payment choosing payment id p1, parked. 500 + 400 <= 1000: admitted.
    y = await h.processor.process(
        _record("payment.create", t, {**_pay(400), "payment_id": "p1"}, "y", T0, 2)
    )
    assert [e.topic for e in y] == [h.settings.retry_topic]
    return t


async def test_a_redelivered_chosen_id_payment_leaves_another_payments_hold(
    harness: Harness,
) -> None:
    h = harness
    t = await _two_parked(h)
    snapshot = copy.deepcopy(h.processor.limits.table[f"{t}:limits"])
    redrive_y = _record("payment.create", t, {**_pay(400), "payment_id": "p1"}, "y", T0 + 1, 3)
    _, out = await _run(h, redrive_y)
    assert kind(out) == "payment.succeeded"
    h.processor.limits.table[f"{t}:limits"] = snapshot  # a crash lost the limits write
    await _run(h, redrive_y)  # redelivered: answered from its idempotency record
    # used 400, X still holds 500: a payment of 600 must be refused.
    z = _record("payment.create", t, _pay(600), "z", T0 + 2, 4)
    first_z = await h.processor.process(z)
    if [e.topic for e in first_z] == [h.settings.retry_topic]:  # admitted (and parked)
        _, out = await _run(h, _record("payment.create", t, _pay(600), "z", T0 + 3, 5))
        assert kind(out) == "payment.succeeded"
    # X re-driven (`dlq replay`): admitted before, so it passes unchecked.
    _, x = await _run(h, _keyed(t, _pay(500), "x", "payment:p1", T0 + 4, 6))
    assert kind(x) == "payment.succeeded"
    charges = await _charges(h, t)
    assert charges == 2, f"{charges} charges (400 + 600 + 500 USD) against a daily limit of 1000"


async def test_a_chosen_id_redrive_does_not_take_over_another_payments_hold(
    harness: Harness,
) -> None:
    h = harness
    t = await _two_parked(h)
    _, y = await _run(
        h, _record("payment.create", t, {**_pay(400), "payment_id": "p1"}, "y", T0 + 1, 3)
    )
    assert kind(y) == "payment.succeeded"
    _, x = await _run(h, _keyed(t, _pay(500), "x", "payment:p1", T0 + 2, 4))
    assert kind(x) == "payment.succeeded"
    # Both answered: 900 moved, nothing is awaiting the provider. 100 fits the day.
    emits = await h.processor.process(_record("payment.create", t, _pay(100), "w", T0 + 3, 5))
    refused = outcome_of(h.settings, emits)
    assert refused is None, data(refused)  # admitted (parked: its key's first attempt fails)
    assert [e.topic for e in emits] == [h.settings.retry_topic]

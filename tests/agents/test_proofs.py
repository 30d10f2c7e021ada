"""Requirements of the pipeline that had no test that could fail (an audit of the
suite): the configured idempotency window, a provider's own refusal, outcomes in
structured mode, and a replay that does not call the provider."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from paystream.agents import pipeline
from paystream.client import build_command
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.simulator import SimulatorGateway
from paystream.settings import CloudEventsMode
from tests.agents.conftest import running_harness
from tests.agents.harness import Harness, data, kind, set_pipeline_clock

pytestmark = pytest.mark.asyncio

_PAY = {"amount": 4200, "currency": "USD", "payment_method_token": "pm_card_visa"}


@pytest.fixture
async def hour_window(redis_url: str) -> AsyncIterator[Harness]:
    async with running_harness(redis_url, idempotency_ttl_seconds=3600) as h:
        yield h


class _Clock:
    """The pipeline's wall clock, moved by the test (nothing else's)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.offset = 0.0
        real = time.time

        class _Time:
            def __getattr__(self, name: str) -> Any:
                return getattr(time, name)

            def time(_self) -> float:
                return real() + self.offset

        set_pipeline_clock(monkeypatch, _Time())


@pytest.mark.parametrize(
    ("later", "read_later", "replayed"), [(3500, 0, True), (3700, 0, False), (3500, 600, True)]
)
async def test_the_configured_window_decides_when_a_key_is_new_again(
    hour_window: Harness,
    monkeypatch: pytest.MonkeyPatch,
    later: int,
    read_later: int,
    replayed: bool,
) -> None:
    """Within PAYSTREAM_IDEMPOTENCY_TTL_SECONDS (an hour here) a key's outcome comes back;
    past it, the key names a new request (the customer exists: invalid_state). The
    window is judged by when the broker took the command: one taken within it and read
    ``read_later`` seconds on, past it (a backlog, a redelivery), is answered from the
    key."""
    h = hour_window
    clock = _Clock(monkeypatch)
    t = h.add_tenant()
    body = {"customer_id": "cus_w", "email": "w@example.com"}
    first = await h.send("customer.create", t, body, idempotency_key="k1", command_id="c1")
    assert kind(first) == "customer.created"
    clock.offset = later
    # (Taken by the broker then too: one taken within the window and read later is
    # answered from the key, as a provider judges a key by when its request arrived.)
    taken = int(pipeline.time.time() * 1000)
    clock.offset += read_later
    again = await h.send(
        "customer.create", t, body, idempotency_key="k1", command_id="c2", timestamp_ms=taken
    )
    if replayed:
        assert again.get_id() == first.get_id()
    else:
        assert data(again)["reason"] == "invalid_state", data(again)


async def test_the_window_defaults_to_a_day(harness: Harness) -> None:
    t = harness.add_tenant()
    before = time.time()
    await harness.send("customer.create", t, {"email": "d@example.com"}, idempotency_key="k1")
    expires = float(harness.idempotency[f"{t}:k1"]["expires_at"])
    assert before + 86_400 <= expires <= time.time() + 86_400


async def test_a_refusal_of_the_provider_itself_is_provider_rejected(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error the provider will give again (here: a request it does not support for
    this account), with no reason of its own: rejected provider_rejected, with the
    provider's error, and kept."""
    calls = 0

    async def refused(self: SimulatorGateway, req: Any, *, idempotency_key: str) -> Any:
        nonlocal calls
        calls += 1
        raise GatewayError(
            ErrorCode.UNSUPPORTED,
            "this account cannot charge in this currency",
            provider="simulator",
            retryable=False,
        )

    monkeypatch.setattr(SimulatorGateway, "create_payment", refused)
    t = harness.add_tenant()
    cmd = build_command("payment.create", t, _PAY)
    emits, out = await harness.send_event(cmd, offset=1)
    assert out is not None and data(out)["reason"] == "provider_rejected", out and data(out)
    assert data(out)["error"]["code"] == "unsupported"
    again, _ = await harness.send_event(cmd, offset=1)  # redelivered: the same answer
    assert [e.record for e in again] == [e.record for e in emits] and calls == 1


@pytest.fixture
async def structured(redis_url: str) -> AsyncIterator[Harness]:
    async with running_harness(redis_url, cloudevents_mode=CloudEventsMode.STRUCTURED) as h:
        yield h


async def test_outcomes_are_structured_when_the_mode_says_so(structured: Harness) -> None:
    h = structured
    t = h.add_tenant()
    cmd = build_command("payment.create", t, _PAY)
    emits, out = await h.send_event(cmd)
    [record] = [e.record for e in emits if e.topic == h.settings.events_topic]
    headers = dict(record.headers)
    assert headers["content-type"] == b"application/cloudevents+json"
    assert not [k for k in headers if k.startswith("ce_")]
    body = json.loads(record.value)
    assert body["specversion"] == "1.0" and body["type"] == "com.paystream.payment.succeeded"
    assert body["causationid"] == cmd.get_id() and body["tenantid"] == t
    assert out is not None and out.get_id() == body["id"] and data(out) == body["data"]


async def test_a_redelivered_command_does_not_call_the_provider_again(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider would answer a second call under the key without a second effect, so
    counting effects cannot tell: the calls are counted."""
    calls = 0
    real = SimulatorGateway.create_payment

    async def counted(self: SimulatorGateway, req: Any, *, idempotency_key: str) -> Any:
        nonlocal calls
        calls += 1
        return await real(self, req, idempotency_key=idempotency_key)

    monkeypatch.setattr(SimulatorGateway, "create_payment", counted)
    t = harness.add_tenant()
    cmd = build_command("payment.create", t, _PAY)
    await harness.send_event(cmd, offset=5)
    await harness.send_event(cmd, offset=5)  # redelivered
    await harness.send_event(cmd, offset=6)  # sent again
    assert calls == 1

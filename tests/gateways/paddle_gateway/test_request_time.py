"""A create's lookup starts from the record's time (REQUEST_SENT_SINCE): on a commands
topic with producer timestamps (the embedded Tansu broker stores LogAppendTime but does
not apply it) a producer whose clock runs ahead stamps a time past the first run.
Clamped at the processing worker's clock, it moved with each redelivery, and a
redelivery 10 minutes after a crash looked from after the first try's transaction and
made a second (review h75r1 F2). Now the record's time stands, and a create dated more
than MAX_FUTURE_SKEW_MS ahead is not made until its time is near."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from paystream.agents import provider_window
from paystream.agents.inbound import Inbound
from paystream.agents.provider_window import ProviderWindow
from paystream.first_attempt import FirstAttemptSeals
from paystream.gateways.base import REQUEST_SENT_SINCE, CreatePayment
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.paddle.references import request_tag
from paystream.streams.outcomes import CommandRef
from paystream.tenancy.limits import MAX_FUTURE_SKEW_MS
from tests.gateways.paddle_gateway.wire import effects, gateway, key, losing, usd


def _window() -> ProviderWindow:
    window = ProviderWindow.__new__(ProviderWindow)
    window.seals = FirstAttemptSeals(None)
    window.idempotency = {}  # (nothing kept: a crash lost it)
    return window


@pytest.mark.parametrize("ahead", [0, 45], ids=["broker-time", "producer-45s-ahead"])
async def test_a_redelivered_record_dated_ahead_still_finds_the_first_try(
    paddle_url: str, monkeypatch: pytest.MonkeyPatch, ahead: int
) -> None:
    window = _window()
    t0 = time.time()
    # ahead: how far the producer's clock runs ahead (its record time, on a CreateTime
    # topic; 0: the broker's time), within MAX_FUTURE_SKEW_MS: made at once.
    rec = Inbound(key=b"acme", value=b"{}", headers={}, timestamp_ms=int((t0 + ahead) * 1000))
    cmd = CommandRef("acme", "c-1", "payment.create", "c-1", datetime.now(UTC))
    data = SimpleNamespace(payment_id="pay_1")
    req = CreatePayment(amount=usd(5100), provider_payment_method_id="checkout")
    k = key()

    # First run: Paddle makes the transaction, the worker is killed before its commit.
    gw = gateway(paddle_url)
    losing(gw, "POST", "transactions")
    REQUEST_SENT_SINCE.set(window._sent_since_ms(rec, cmd, data, None) / 1000)
    with pytest.raises(Exception):  # noqa: B017 - (the answer lost)
        await gw.create_payment(req, idempotency_key=k)

    # Redelivered 10 minutes later to another worker (nothing of the first run kept).
    monkeypatch.setattr(provider_window.time, "time", lambda: t0 + 600)
    since = window._sent_since_ms(rec, cmd, data, None) / 1000
    monkeypatch.undo()
    REQUEST_SENT_SINCE.set(since)
    again = gateway(paddle_url)
    await again.create_payment(req, idempotency_key=k)
    made = [
        e["id"]
        for e in await effects(paddle_url)
        if e["kind"] == "transaction"
        and (e.get("custom_data") or {}).get("paystream_request") == request_tag(k)
    ]
    await gw.aclose()
    await again.aclose()
    assert len(made) == 1, (
        f"lookup from {since - t0:+.0f} s after the first try: {len(made)} transactions {made}"
    )


async def test_a_create_dated_past_the_skew_is_not_made_until_its_time(paddle_url: str) -> None:
    """A producer an hour ahead: nothing made (a redelivery an hour later could not tell
    its first try from its record time), retried later, when its time is near."""
    window = _window()
    ahead = 3600
    rec = Inbound(
        key=b"acme", value=b"{}", headers={}, timestamp_ms=int((time.time() + ahead) * 1000)
    )
    cmd = CommandRef("acme", "c-2", "payment.create", "c-2", datetime.now(UTC))
    req = CreatePayment(amount=usd(5200), provider_payment_method_id="checkout")
    k = key()
    gw = gateway(paddle_url)
    REQUEST_SENT_SINCE.set(window._sent_since_ms(rec, cmd, SimpleNamespace(), None) / 1000)
    with pytest.raises(GatewayError) as refused:
        await gw.create_payment(req, idempotency_key=k)
    await gw.aclose()
    assert refused.value.retryable and refused.value.code is ErrorCode.IDEMPOTENCY_ERROR
    assert refused.value.retry_after == pytest.approx(ahead - MAX_FUTURE_SKEW_MS / 1000, abs=5)
    made = [
        e["id"]
        for e in await effects(paddle_url)
        if (e.get("custom_data") or {}).get("paystream_request") == request_tag(k)
    ]
    assert not made, f"a create dated {ahead}s ahead was made: {made}"

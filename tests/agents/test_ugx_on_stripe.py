"""UGX on a Stripe tenant (reviews h67c, h67e): Stripe takes UGX in hundredths, so the
Stripe gateway refuses it, as `unsupported` (this version's setup, not the command)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import stripe

from paystream.agents.pipeline import Inbound
from paystream.client import build_command
from paystream.gateways.stripe import gateway as stripe_gateway
from paystream.settings import CloudEventsMode
from paystream.streams.codec import encode_event
from tests.agents.harness import data, kind, outcome_of
from tests.agents.test_provider_changed import _harness
from tests.gateways.stripe.test_stripe_transport import PI, FakeStripe

pytestmark = pytest.mark.asyncio

UGX = {"amount": 50_000, "currency": "UGX", "payment_method_token": "pm_card_visa"}


async def test_a_ugx_charge_parked_by_the_older_version_is_not_refused_for_good(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Older versions sent UGX to Stripe (as a hundredth). A UGX payment one let through,
    every answer lost (Stripe may have charged it), is parked. Re-driven on this version
    it is parked again for an operator, not refused for good (a first fix answered
    `validation_error`, kept under the key, though Stripe may hold a charge under it)."""
    calls: list[dict[str, Any]] = []

    def side(req: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        calls.append(req)
        # Every attempt of the first run may have charged; its answer never came.
        raise stripe.APIConnectionError("network", should_retry=True) from TimeoutError()

    h = _harness(None, FakeStripe(side))
    try:
        t = h.add_tenant(gateway="stripe")
        # The version before the refusal: UGX sent as it was.
        monkeypatch.setattr(stripe_gateway, "stripe_units_problem", lambda amount: None)
        cmd = build_command("payment.create", t, UGX, idempotency_key="order-ugx")
        rec = encode_event(cmd, t.encode(), CloudEventsMode.BINARY)
        now = int(time.time() * 1000)
        topic = h.settings.commands_topic
        emits = await h.raw(Inbound(rec.key, rec.value, dict(rec.headers), now, topic, 0, 10))
        (parked,) = [e.record for e in emits if e.topic == h.settings.retry_topic]
        assert calls, "the older version sent it to Stripe"
        monkeypatch.undo()  # upgraded: this version's gateway
        redrive = Inbound(parked.key, parked.value, dict(parked.headers), now, topic, 0, 11)
        emits = await h.raw(redrive)
        out = outcome_of(h.settings, emits)
        assert out is None, (kind(out), data(out).get("reason"), data(out).get("message"))
        assert [e.topic for e in emits] == [h.settings.retry_topic]
    finally:
        await h.pool.aclose()


async def test_a_new_ugx_payment_on_stripe_is_refused_and_not_kept_under_its_key() -> None:
    """A fresh UGX payment on Stripe: refused before any call. The refusal is the
    tenant's provider's (this version does not convert), not the command's: the same
    key must run once the tenant is on a provider that takes UGX (as `unsupported`
    rejections are not remembered). A first fix answered `validation_error`, kept under
    the key for the idempotency window."""
    calls: list[dict[str, Any]] = []

    def side(req: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        calls.append(req)
        return 200, PI

    h = _harness(None, FakeStripe(side))
    try:
        t = h.add_tenant(gateway="stripe")
        cmd = build_command("payment.create", t, UGX, idempotency_key="order-ugx")
        rec = encode_event(cmd, t.encode(), CloudEventsMode.BINARY)
        now = int(time.time() * 1000)
        topic = h.settings.commands_topic
        emits = await h.raw(Inbound(rec.key, rec.value, dict(rec.headers), now, topic, 0, 20))
        out = outcome_of(h.settings, emits)
        assert out is not None and kind(out) == "command.rejected" and calls == []
        assert f"{t}:order-ugx" not in h.idempotency, data(out)["reason"]
    finally:
        await h.pool.aclose()

"""Captures and refunds in a three-decimal currency (BHD, JOD, KWD, OMR, TND) are taken in
multiples of 10 minor units, as charges are (review h70f): the simulator refused a KWD
6.005 capture or 3.005 refund inside its call, while the Stripe gateway, whose capture
and refund requests name no currency, sent them on (localstripe took them; Stripe
refuses them). Both refuse them now, alike, before the provider is called, and the
corrected amount goes through under the same key."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from pydantic import SecretStr

from tests.agents.conftest import running_harness
from tests.agents.harness import Harness, data, kind
from tests.fixtures.localstripe import LOCALSTRIPE_API_KEY

pytestmark = pytest.mark.asyncio

KWD = {"amount": 10_000, "currency": "KWD", "payment_method_token": "pm_card_visa"}


@pytest_asyncio.fixture
async def sh(redis_url: str, localstripe_url: str) -> AsyncIterator[Harness]:
    async with running_harness(redis_url, stripe_api_base=localstripe_url) as h:
        h.pool._open_secret = lambda tenant, name: SecretStr(LOCALSTRIPE_API_KEY)
        yield h


def _tenant(sh: Harness, gateway: str) -> str:
    extra = {"secrets": {"api_key": "v1:x"}} if gateway == "stripe" else {}
    return sh.add_tenant(gateway=gateway, **extra)


@pytest.mark.parametrize("gateway", ["simulator", "stripe"])
async def test_a_kwd_refund_not_in_tens_is_refused_on_every_gateway(
    sh: Harness, gateway: str
) -> None:
    t = _tenant(sh, gateway)
    assert kind(await sh.send("payment.create", t, {**KWD, "payment_id": "p1"})) == (
        "payment.succeeded"
    )
    out = await sh.send(
        "refund.create", t, {"payment_id": "p1", "amount": 3_005}, idempotency_key="r1"
    )
    assert kind(out) == "command.rejected", (gateway, kind(out), data(out).get("object"))
    assert data(out)["reason"] == "validation_error"
    assert "multiples of 10 minor units" in data(out)["message"]
    out = await sh.send(
        "refund.create", t, {"payment_id": "p1", "amount": 3_000}, idempotency_key="r1"
    )
    assert kind(out) == "refund.succeeded", data(out)
    assert data(out)["object"]["amount"] == 3_000


@pytest.mark.parametrize("gateway", ["simulator", "stripe"])
async def test_a_kwd_partial_capture_not_in_tens_is_refused_on_every_gateway(
    sh: Harness, gateway: str
) -> None:
    t = _tenant(sh, gateway)
    body = {**KWD, "payment_id": "p1", "capture": "manual"}
    assert kind(await sh.send("payment.create", t, body)) == "payment.authorized"
    out = await sh.send(
        "payment.capture", t, {"payment_id": "p1", "amount": 6_005}, idempotency_key="c1"
    )
    assert kind(out) == "command.rejected", (gateway, kind(out), data(out).get("object"))
    assert data(out)["reason"] == "validation_error"
    out = await sh.send(
        "payment.capture", t, {"payment_id": "p1", "amount": 6_000}, idempotency_key="c1"
    )
    assert kind(out) == "payment.succeeded", data(out)

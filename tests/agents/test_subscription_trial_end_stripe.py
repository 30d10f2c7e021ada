"""`subscription.update` `trial_end` through the pipeline against localstripe (Stripe's
``trial_end`` on a subscription update, ``proration_behavior=none``;
tests/fixtures/localstripe_server.py fakes Stripe's trials, a FAKE: localstripe has
none): the trial ended now, its first period invoiced and paid at once (declined:
past_due, Stripe's ``allow_incomplete``), once per key; its end moved."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from pydantic import SecretStr

from paystream.client import build_command
from tests.agents.conftest import running_harness
from tests.agents.harness import Harness, data, kind
from tests.agents.test_subscription_proration_stripe import (
    AUTH,
    _invoices,
    _send,
    _stripe_invoices,
)
from tests.fixtures.localstripe import LOCALSTRIPE_API_KEY

pytestmark = pytest.mark.asyncio
DAY = 24 * 3600


@pytest_asyncio.fixture
async def sh(redis_url: str, localstripe_url: str) -> AsyncIterator[Harness]:
    async with running_harness(redis_url, stripe_api_base=localstripe_url) as h:
        h.pool._open_secret = lambda tenant, name: SecretStr(LOCALSTRIPE_API_KEY)
        yield h


async def _trialing(h: Harness, **tenant: Any) -> str:
    t = h.add_tenant(gateway="stripe", secrets={"api_key": "v1:x"}, **tenant)
    await _send(h, t, "customer.create", {"customer_id": "c1"})
    for pm, token in (("m1", "pm_card_visa"), ("m2", "pm_card_chargeCustomerFail")):
        await _send(h, t, "payment_method.attach",
                    {"customer_id": "c1", "token": token, "payment_method_id": pm})  # fmt: skip
    body = {"subscription_id": "s1", "customer_id": "c1", "payment_method_id": "m1",
            "amount": 1500, "currency": "USD", "interval": "month", "trial_days": 14}  # fmt: skip
    out = await _send(h, t, "subscription.create", body)
    assert data(out)["object"]["status"] == "trialing", data(out)
    assert _invoices(out) == []
    return t


def _ts(value: Any) -> float:
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


async def test_ending_the_trial_now_charges_the_first_period_once(
    sh: Harness, localstripe_url: str
) -> None:
    t = await _trialing(sh)
    before = time.time()
    event = build_command(
        "subscription.update", t, {"subscription_id": "s1", "trial_end": "now"}, command_id="e1"
    )
    await sh.assert_redelivered_alike(event)
    out = await sh.send("subscription.update", t, {"subscription_id": "s1", "trial_end": "now"},
                        command_id="e1")  # fmt: skip
    assert kind(out) == "subscription.updated", data(out)
    obj = data(out)["object"]
    assert (obj["status"], data(out)["previous_status"]) == ("active", "trialing"), data(out)
    assert before - 2 <= _ts(obj["trial_end"]) <= time.time() + 2
    assert _ts(obj["current_period_start"]) == _ts(obj["trial_end"])
    (invoice,) = _invoices(out)
    assert (invoice["status"], invoice["amount"]) == ("paid", 1500), invoice
    at_stripe = await _stripe_invoices(localstripe_url, obj)
    assert [(i["status"], i["total"]) for i in at_stripe] == [("paid", 1500)], at_stripe
    again = await sh.send("subscription.update", t, {"subscription_id": "s1", "trial_end": "now"})
    assert data(again)["reason"] == "invalid_state", data(again)


async def test_a_declined_first_invoice_is_past_due(sh: Harness, localstripe_url: str) -> None:
    t = await _trialing(sh)
    out = await sh.send(
        "subscription.update", t, {"subscription_id": "s1", "trial_end": "now",
                                   "payment_method_id": "m2"},
    )  # fmt: skip
    assert kind(out) == "subscription.updated", data(out)
    assert data(out)["object"]["status"] == "past_due", data(out)
    (invoice,) = _invoices(out)
    assert invoice["status"] == "open", invoice
    assert data(out)["error"]["code"] == "card_declined", data(out)


async def test_moving_the_end(sh: Harness, localstripe_url: str) -> None:
    t = await _trialing(sh)
    for days in (30, 3):  # later, then earlier
        at = int(time.time()) + days * DAY
        out = await sh.send("subscription.update", t, {"subscription_id": "s1", "trial_end": at})
        assert kind(out) == "subscription.updated", data(out)
        obj = data(out)["object"]
        assert obj["status"] == "trialing" and _ts(obj["trial_end"]) == at, obj
        assert _ts(obj["current_period_end"]) == at and _invoices(out) == []
    assert await _stripe_invoices(localstripe_url, obj) == []


async def _ended_at_stripe(url: str, sub: dict[str, Any]) -> None:
    """The trial ended at Stripe outside paystream (its dashboard; or on its own, the
    webhook not yet in): the record still says trialing."""
    sid = sub["provider_subscription_id"]
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{url}/v1/subscriptions/{sid}", data={"trial_end": "now"}, headers=AUTH
        ) as resp,  # fmt: skip
    ):
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["status"] == "active"


async def test_a_trial_already_over_at_stripe_is_not_ended_again(
    sh: Harness, localstripe_url: str
) -> None:
    """Stripe takes a trial_end on an active subscription (an anchor reset: "now"
    invoices a full period again; a time gives a paid one a trial): a record still
    trialing (stale, or a parked end re-driven after the trial ended) must not send it.
    Read back instead: an end now answered as read (charged once), a time refused."""
    t = await _trialing(sh)
    sub = sh.tables.subscriptions[f"{t}:s1"]
    await _ended_at_stripe(localstripe_url, sub)
    assert sh.tables.subscriptions[f"{t}:s1"]["status"] == "trialing"  # (stale)
    later = await sh.send(
        "subscription.update", t, {"subscription_id": "s1", "trial_end": int(time.time()) + DAY}
    )
    assert data(later)["reason"] == "invalid_state", data(later)
    out = await sh.send("subscription.update", t, {"subscription_id": "s1", "trial_end": "now"})
    assert kind(out) == "subscription.updated", data(out)
    assert data(out)["object"]["status"] == "active", data(out)
    at_stripe = await _stripe_invoices(localstripe_url, data(out)["object"])
    assert [(i["status"], i["total"]) for i in at_stripe] == [("paid", 1500)], at_stripe


async def test_an_end_now_counts_toward_the_day(sh: Harness, localstripe_url: str) -> None:
    """The first period's invoice an end now made is counted toward the day, once,
    whatever second Stripe's invoice period begins at (review h82rr H1)."""
    t = await _trialing(sh, limits={"daily_payment_volume": {"USD": 2_000}})
    out = await sh.send("subscription.update", t, {"subscription_id": "s1", "trial_end": "now"})
    assert data(out)["object"]["status"] == "active", data(out)
    pay = {"amount": 501, "currency": "USD", "payment_method_id": "m1", "customer_id": "c1"}
    over = await sh.send("payment.create", t, pay)
    assert data(over).get("reason") == "quota_exceeded", data(over)
    assert (data(over)["used"], data(over)["held"]) == (1500, 0), data(over)

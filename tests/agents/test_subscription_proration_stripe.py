"""`subscription.update` with ``proration`` through the pipeline against localstripe
(Stripe's proration_behavior; tests/fixtures/localstripe_server.py makes the proration
lines as Stripe's reference has them, a FAKE: localstripe's are not Stripe's): an
upgrade's lines pending for the next invoice, or invoiced and charged now, once per
key; a downgrade a credit; a declined proration invoice past_due."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from pydantic import SecretStr

from tests.agents.conftest import running_harness
from tests.agents.harness import Harness, data, kind
from tests.fixtures.localstripe import LOCALSTRIPE_API_KEY

pytestmark = pytest.mark.asyncio

AUTH = {"Authorization": f"Bearer {LOCALSTRIPE_API_KEY}"}


@pytest_asyncio.fixture
async def sh(redis_url: str, localstripe_url: str) -> AsyncIterator[Harness]:
    async with running_harness(redis_url, stripe_api_base=localstripe_url) as h:
        h.pool._open_secret = lambda tenant, name: SecretStr(LOCALSTRIPE_API_KEY)
        yield h


def _ts(value: Any) -> int:
    return int(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp())


def _share(amount: int, start: int, end: int, at: int) -> int:
    num, den = amount * (end - at), end - start
    return (2 * num + den) // (2 * den)


def _expected(sub: dict[str, Any], old: int, new: int, line: dict[str, Any]) -> list[int]:
    start, end = _ts(sub["current_period_start"]), _ts(sub["current_period_end"])
    at = _ts(line["period_start"])
    assert start <= at < end and _ts(line["period_end"]) == end
    return [-_share(old, start, end, at), _share(new, start, end, at)]


async def _send(h: Harness, t: str, command_type: str, body: dict[str, Any], **kw: Any) -> Any:
    out = await h.send(command_type, t, body, **kw)
    assert not kind(out).endswith("rejected"), data(out)
    return out


async def _subscribed(h: Harness, declining: bool = False, **tenant: Any) -> str:
    t = h.add_tenant(gateway="stripe", secrets={"api_key": "v1:x"}, **tenant)
    await _send(h, t, "customer.create", {"customer_id": "c1"})
    for pm, token in (("m1", "pm_card_visa"), ("m2", "pm_card_chargeCustomerFail")):
        await _send(h, t, "payment_method.attach",
                    {"customer_id": "c1", "token": token, "payment_method_id": pm})  # fmt: skip
    body = {"subscription_id": "s1", "customer_id": "c1", "payment_method_id": "m1",
            "amount": 1500, "currency": "USD", "interval": "month"}  # fmt: skip
    await _send(h, t, "subscription.create", body)
    return t


def _invoices(outcome: Any) -> list[dict[str, Any]]:
    return [r["object"] for r in data(outcome).get("related", []) if r["entity_type"] == "invoice"]


async def _stripe_invoices(url: str, sub: dict[str, Any]) -> list[dict[str, Any]]:
    params = {"subscription": sub["provider_subscription_id"]}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/v1/invoices", params=params, headers=AUTH) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return list((await resp.json())["data"])


async def test_create_prorations_pends_the_lines_for_the_next_invoice(
    sh: Harness, localstripe_url: str
) -> None:
    t = await _subscribed(sh)
    out = await _send(sh, t, "subscription.update",
                      {"subscription_id": "s1", "amount": 2500,
                       "proration": "create_prorations"})  # fmt: skip
    sub = data(out)["object"]
    assert (sub["amount"], sub["status"]) == (2500, "active")
    pending = data(out)["pending_prorations"]
    assert [p["description"].split(" time")[0] for p in pending] == ["Unused", "Remaining"]
    assert [p["amount"] for p in pending] == _expected(sub, 1500, 2500, pending[0])
    assert _invoices(out) == []  # nothing invoiced now
    assert len(await _stripe_invoices(localstripe_url, sub)) == 1


async def test_always_invoice_charges_the_net_now_once(sh: Harness, localstripe_url: str) -> None:
    t = await _subscribed(sh)
    body = {"subscription_id": "s1", "amount": 2500, "proration": "always_invoice"}
    out = await _send(sh, t, "subscription.update", body, command_id="up-1")
    again = await _send(sh, t, "subscription.update", body, command_id="up-1")  # a replay
    assert data(again) == data(out)
    sub = data(out)["object"]
    [inv] = _invoices(out)
    lines = inv["proration_lines"]
    credit, charge = _expected(sub, 1500, 2500, lines[0])
    assert [x["amount"] for x in lines] == [credit, charge]
    assert (inv["status"], inv["amount"]) == ("paid", credit + charge)
    assert sub["status"] == "active"
    made = await _stripe_invoices(localstripe_url, sub)
    assert len(made) == 2  # the first period's and the proration's: once
    assert sorted(i["amount_paid"] for i in made) == sorted([1500, credit + charge])


async def test_a_downgrade_now_is_paid_at_zero_its_credit_on_the_customers_balance(
    sh: Harness, localstripe_url: str
) -> None:
    t = await _subscribed(sh)
    out = await _send(sh, t, "subscription.update",
                      {"subscription_id": "s1", "amount": 500,
                       "proration": "always_invoice"})  # fmt: skip
    [inv] = _invoices(out)
    credit, charge = _expected(data(out)["object"], 1500, 500, inv["proration_lines"][0])
    assert credit + charge < 0
    assert (inv["status"], inv["amount"]) == ("paid", 0)
    cus = sh.tables.customers[f"{t}:c1"]["provider_customer_id"]
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{localstripe_url}/v1/customers/{cus}", headers=AUTH) as resp,
    ):
        held = await resp.json()
    assert held["account_balance"] == -(credit + charge), held


async def test_a_declined_proration_invoice_leaves_the_update_past_due(sh: Harness) -> None:
    t = await _subscribed(sh)
    out = await _send(sh, t, "subscription.update",
                      {"subscription_id": "s1", "amount": 3000, "payment_method_id": "m2",
                       "proration": "always_invoice"})  # fmt: skip
    assert kind(out) == "subscription.updated", data(out)
    sub = data(out)["object"]
    assert (sub["status"], sub["amount"], sub["payment_method_id"]) == ("past_due", 3000, "m2")
    [inv] = _invoices(out)
    assert inv["status"] == "open" and inv["amount"] > 0 and inv["failure_code"], inv
    assert data(out).get("error") is not None, data(out)


async def test_always_invoice_bills_the_prorations_still_pending(
    sh: Harness, localstripe_url: str
) -> None:
    """Stripe's invoice made by the update bills the subscription's pending invoice items
    too: an earlier create_prorations's lines are charged now (review h79r_e M1)."""
    t = await _subscribed(sh)
    first = await _send(sh, t, "subscription.update",
                        {"subscription_id": "s1", "amount": 2500,
                         "proration": "create_prorations"})  # fmt: skip
    pending = [p["amount"] for p in data(first)["pending_prorations"]]
    out = await _send(sh, t, "subscription.update",
                      {"subscription_id": "s1", "amount": 3000,
                       "proration": "always_invoice"})  # fmt: skip
    [inv] = _invoices(out)
    amounts = sorted(x["amount"] for x in inv["proration_lines"])
    mine = _expected(data(out)["object"], 2500, 3000, inv["proration_lines"][0])
    assert amounts == sorted([*pending, *mine]), inv
    assert (inv["status"], inv["amount"]) == ("paid", sum(amounts))


async def test_always_invoice_counts_its_invoice_toward_the_days_volume(sh: Harness) -> None:
    """Its proration invoice, read back from Stripe, is what it charged: counted once
    (review h79r_e M3: a renewal carrying prorations is told from it by its period)."""
    t = await _subscribed(sh, limits={"daily_payment_volume": {"USD": 100_000}})
    out = await _send(sh, t, "subscription.update",
                      {"subscription_id": "s1", "amount": 2500,
                       "proration": "always_invoice"})  # fmt: skip
    [inv] = _invoices(out)
    assert inv["status"] == "paid" and inv["amount"] > 0, inv
    card = {"amount": 100_000, "currency": "USD", "payment_method_token": "pm_card_visa"}
    over = await sh.send("payment.create", t, card)
    assert data(over)["used"] == 1500 + inv["amount"], data(over)


async def test_always_invoice_is_held_with_the_prorations_still_pending(sh: Harness) -> None:
    """The lines Stripe listed pending after a create_prorations are recorded on the
    subscription and held with an always_invoice's new charge, its invoice billing them
    too (review h79r_e M2)."""
    t = await _subscribed(sh, limits={"daily_payment_volume": {"USD": 5_400}})  # 1500 used
    first = await _send(sh, t, "subscription.update",
                        {"subscription_id": "s1", "amount": 2500,
                         "proration": "create_prorations"})  # fmt: skip
    pending = sum(p["amount"] for p in data(first)["pending_prorations"])
    assert pending > 0 and sh.tables.subscriptions[f"{t}:s1"]["pending_proration_net"] == pending
    # 1500 used + 3000 + the pending lines is over 5400 (3000 alone fits).
    over = await sh.send("subscription.update", t,
                         {"subscription_id": "s1", "amount": 3000,
                          "proration": "always_invoice"})  # fmt: skip
    assert data(over)["reason"] == "quota_exceeded", data(over)
    assert f"amount {(3000 + pending) / 100:.2f} USD" in data(over)["message"], data(over)

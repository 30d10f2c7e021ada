"""Separate charges and transfers of a Stripe tenant through the pipeline, against
localstripe with its FAKE of Transfers (tests/fixtures/localstripe_server.py): a
transfer from a payment's charge (source_transaction) as Stripe holds it, a replay under
its key, one above what is left of its charge refused by paystream and by the FAKE,
one above the available balance refused balance_insufficient, reversals in part then in
full, and a tenant acting for a connected account refused before any request."""

from __future__ import annotations

from collections.abc import AsyncIterator
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


async def _get(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=AUTH) as resp:
        resp.raise_for_status()
        return dict(await resp.json())


async def _post(url: str, form: dict[str, Any]) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=form, headers=AUTH) as resp,
    ):
        return {"status": resp.status, **dict(await resp.json())}


async def _enabled_account(sh: Harness, t: str, stripe_url: str) -> dict[str, Any]:
    made = await sh.send(
        "connected_account.create", t, {"country": "US", "capabilities": ["transfers"]}
    )
    acct = data(made)["object"]
    onboarded = await _post(
        f"{stripe_url}/_fake/accounts/{acct['provider_account_id']}/onboard",
        {"outcome": "enabled"},
    )
    assert onboarded["status"] == 200, onboarded
    read = await sh.send("connected_account.refresh", t, {"connected_account_id": acct["id"]})
    assert data(read)["object"]["status"] == "enabled", data(read)
    return dict(data(read)["object"])


async def _paid(sh: Harness, t: str, amount: int = 10_000) -> dict[str, Any]:
    body = {"amount": amount, "currency": "EUR", "payment_method_token": "pm_card_visa"}
    out = await sh.send("payment.create", t, body)
    assert kind(out) == "payment.succeeded", data(out)
    return dict(data(out)["object"])


def _tr(account_id: str, amount: int, **kw: Any) -> dict[str, Any]:
    return {"connected_account_id": account_id, "amount": amount, "currency": "EUR", **kw}


async def test_a_transfer_from_a_charge_is_stripes_transfer(
    sh: Harness, localstripe_url: str
) -> None:
    t = sh.add_tenant(gateway="stripe", secrets={"api_key": "v1:x"})
    acct = await _enabled_account(sh, t, localstripe_url)
    pay = await _paid(sh, t)
    body = _tr(acct["id"], 6_000, payment_id=pay["id"], transfer_group="order-9",
               metadata={"order": "9"})  # fmt: skip
    out = await sh.send("transfer.create", t, body, command_id="tr-1")
    assert kind(out) == "transfer.created", data(out)
    obj = data(out)["object"]
    held = await _get(f"{localstripe_url}/v1/transfers/{obj['provider_transfer_id']}")
    pi = await _get(f"{localstripe_url}/v1/payment_intents/{pay['provider_payment_id']}")
    charge = pi["latest_charge"]
    charge_id = charge["id"] if isinstance(charge, dict) else charge
    assert held["destination"] == acct["provider_account_id"], held
    assert (held["amount"], held["currency"]) == (6_000, "eur")
    assert held["source_transaction"] == charge_id, held
    assert (held["transfer_group"], held["metadata"]) == ("order-9", {"order": "9"})
    again = await sh.send("transfer.create", t, body, command_id="tr-1")
    assert data(again) == data(out)
    # Above what is left of the charge (4 000): refused by paystream before any call...
    over = await sh.send("transfer.create", t, _tr(acct["id"], 4_001, payment_id=pay["id"]))
    assert kind(over) == "command.rejected" and data(over)["reason"] == "validation_error"
    # ...and by the FAKE, as Stripe refuses it.
    refused = await _post(
        f"{localstripe_url}/v1/transfers",
        {"amount": 4_001, "currency": "eur", "destination": acct["provider_account_id"],
         "source_transaction": charge_id},
    )  # fmt: skip
    assert refused["status"] == 400 and "exceeds" in refused["error"]["message"], refused


async def test_without_a_charge_the_available_balance_pays(
    sh: Harness, localstripe_url: str
) -> None:
    t = sh.add_tenant(gateway="stripe", secrets={"api_key": "v1:x"})
    acct = await _enabled_account(sh, t, localstripe_url)
    await _post(f"{localstripe_url}/_fake/balance", {"currency": "eur", "available": 0})
    short = await sh.send("transfer.create", t, _tr(acct["id"], 500))
    assert kind(short) == "command.rejected", data(short)
    assert data(short)["reason"] == "balance_insufficient", data(short)
    await _post(f"{localstripe_url}/_fake/balance", {"currency": "eur", "available": 800})
    out = await sh.send("transfer.create", t, _tr(acct["id"], 500))
    assert kind(out) == "transfer.created", data(out)
    assert data(out)["object"]["payment_id"] is None


async def test_a_transfer_reversed_in_part_then_in_full(sh: Harness, localstripe_url: str) -> None:
    t = sh.add_tenant(gateway="stripe", secrets={"api_key": "v1:x"})
    acct = await _enabled_account(sh, t, localstripe_url)
    pay = await _paid(sh, t)
    made = await sh.send("transfer.create", t, _tr(acct["id"], 5_000, payment_id=pay["id"]))
    tid, ptid = data(made)["object"]["id"], data(made)["object"]["provider_transfer_id"]
    part = await sh.send("transfer.reverse", t, {"transfer_id": tid, "amount": 1_500})
    assert kind(part) == "transfer.reversed", data(part)
    assert (data(part)["object"]["status"], data(part)["object"]["amount_reversed"]) == (
        "partially_reversed",
        1_500,
    )
    rest = await sh.send("transfer.reverse", t, {"transfer_id": tid})
    assert (data(rest)["object"]["status"], data(rest)["amount_reversed_now"]) == (
        "reversed",
        3_500,
    )
    held = await _get(f"{localstripe_url}/v1/transfers/{ptid}")
    assert (held["amount_reversed"], held["reversed"]) == (5_000, True), held
    assert [r["amount"] for r in held["reversals"]["data"]] == [3_500, 1_500]
    done = await sh.send("transfer.reverse", t, {"transfer_id": tid})
    assert data(done)["reason"] == "invalid_state", data(done)


async def test_a_tenant_acting_for_a_connected_account_is_refused_before_any_request(
    sh: Harness, localstripe_url: str
) -> None:
    t = sh.add_tenant(gateway="stripe", secrets={"api_key": "v1:x"})
    acct = await _enabled_account(sh, t, localstripe_url)
    sh.tenants[t] = {**sh.tenants[t], "connected_account": "acct_1Merchant"}
    out = await sh.send("transfer.create", t, _tr(acct["id"], 100))
    assert kind(out) == "command.rejected" and data(out)["reason"] == "unsupported", data(out)
    assert "acct_1Merchant" in data(out)["message"], data(out)

"""Separate charges and transfers of a Stripe tenant through the pipeline, against
localstripe with its FAKE of Transfers (tests/fixtures/localstripe_server.py): a
transfer from a payment's charge (source_transaction) as Stripe holds it (named by
paystream's reference), a replay under its key, one above what is left of its charge
refused by paystream and by the FAKE, one above the available balance refused
balance_insufficient, reversals in part then in full, a reversal made with Stripe's SDK
outside paystream learnt by transfer.refresh, a let-through create first sent by the
release before (no reference) answered, and a tenant acting for a connected account
refused before any request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import stripe
from pydantic import SecretStr

from paystream.agents.handlers import HandlerContext, create_transfer
from paystream.gateways import base as gw
from paystream.money import Money
from paystream.streams import commands as c
from paystream.streams.outcomes import CommandRef
from paystream.tenancy.models import Tenant
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
    # (paystream's reference added: its transfer.* webhooks find the transfer by it)
    assert (held["transfer_group"], held["metadata"]) == (
        "order-9",
        {"order": "9", "paystream_transfer": f"{t}:{obj['id']}"},
    )
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


async def _reverse_with_stripes_sdk(
    stripe_url: str, provider_transfer_id: str, amount: int
) -> None:
    """The platform reverses part of a transfer in Stripe's Dashboard (the SDK's call)."""
    http = stripe.AIOHTTPClient()
    client = stripe.StripeClient(
        LOCALSTRIPE_API_KEY, base_addresses={"api": stripe_url}, http_client=http
    )
    try:
        await client.v1.transfers.reversals.create_async(provider_transfer_id, {"amount": amount})
    finally:
        await http.close_async()


async def test_a_reversal_made_outside_paystream_is_learnt_by_refresh(
    sh: Harness, localstripe_url: str
) -> None:
    t = sh.add_tenant(gateway="stripe", secrets={"api_key": "v1:x"})
    acct = await _enabled_account(sh, t, localstripe_url)
    pay = await _paid(sh, t)
    made = await sh.send("transfer.create", t, _tr(acct["id"], 6_000, payment_id=pay["id"]))
    tid, ptid = data(made)["object"]["id"], data(made)["object"]["provider_transfer_id"]
    refund = {"payment_id": pay["id"], "amount": 5_000}
    held = await sh.send("refund.create", t, refund, command_id="re-1")
    assert data(held)["reason"] == "invalid_state", data(held)  # (4 000 refundable)
    same = await sh.send("transfer.refresh", t, {"transfer_id": tid})
    assert kind(same) == "transfer.updated", data(same)
    await _reverse_with_stripes_sdk(localstripe_url, ptid, 2_500)
    read = await sh.send("transfer.refresh", t, {"transfer_id": tid}, command_id="rf-1")
    assert kind(read) == "transfer.reversed", data(read)
    assert (data(read)["object"]["status"], data(read)["object"]["amount_reversed"]) == (
        "partially_reversed",
        2_500,
    )
    assert (data(read)["previous_status"], data(read)["amount_reversed_now"]) == ("created", 2_500)
    assert data(read)["related"][0]["object"]["amount_transferred"] == 3_500
    again = await sh.send("transfer.refresh", t, {"transfer_id": tid}, command_id="rf-1")
    assert data(again) == data(read)
    anew = await sh.send("transfer.refresh", t, {"transfer_id": tid})
    assert kind(anew) == "transfer.updated", data(anew)
    assert sh.tables.payments[f"{t}:{pay['id']}"]["amount_transferred"] == 3_500
    refunded = await sh.send("refund.create", t, refund, command_id="re-1")
    assert kind(refunded) == "refund.succeeded", data(refunded)
    # paystream's own reversal of the rest, then read back: nothing more.
    rest = await sh.send("transfer.reverse", t, {"transfer_id": tid})
    assert data(rest)["amount_reversed_now"] == 3_500, data(rest)
    final = await sh.send("transfer.refresh", t, {"transfer_id": tid})
    assert kind(final) == "transfer.updated", data(final)  # (final: from its record)
    assert data(final)["object"]["amount_reversed"] == 6_000, data(final)


async def test_a_let_through_create_first_sent_without_the_reference_is_answered(
    sh: Harness, localstripe_url: str
) -> None:
    """A transfer.create the release before sent (no paystream_transfer in its metadata),
    its answer lost, re-driven by this one: Stripe refuses other parameters under the key
    (idempotency_error), so it is sent once more as then, and answered with the transfer
    made then (one transfer at Stripe)."""
    t = sh.add_tenant(gateway="stripe", secrets={"api_key": "v1:x"})
    acct = await _enabled_account(sh, t, localstripe_url)
    await _post(f"{localstripe_url}/_fake/balance", {"currency": "eur", "available": 900})
    gateway = sh.pool.get(Tenant.model_validate(sh.tenants[t]))
    cmd = CommandRef(
        tenant_id=t, command_id="tr-old", command_type="transfer.create",
        idempotency_key="tr-old", time=datetime.now(UTC),
    )  # fmt: skip
    ctx = HandlerContext(cmd=cmd, gateway=gateway, tables=sh.tables, let_through=True)
    body = c.CreateTransfer.model_validate(
        _tr(acct["id"], 400, transfer_id="tr_old", metadata={"order": "7"})
    )
    before = gw.CreateTransfer(
        amount=Money(amount=400, currency="EUR"),
        destination_account=acct["provider_account_id"],
        metadata={"order": "7"},
    )
    key = ctx.create_key("transfer", "tr_old")
    first = await gateway.create_transfer(before, idempotency_key=key)
    done = await create_transfer(ctx, body)
    assert done.outcome_type == "transfer.created", done
    assert done.primary is not None
    assert done.primary.model_dump()["provider_transfer_id"] == first.provider_transfer_id
    held = await _get(f"{localstripe_url}/v1/transfers/{first.provider_transfer_id}")
    assert held["metadata"] == {"order": "7"}, held  # (as first sent)

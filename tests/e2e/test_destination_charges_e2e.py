"""Destination charges through a real worker: a simulator tenant and a Stripe tenant
(against localstripe and its FAKE of Connect) each make a connected account, onboard it,
charge a customer on its behalf keeping a fee, capture one in part (the fee capped) and
refund with the transfer reversed; a replayed command gets the identical event; another
tenant naming the account is answered `not_found`, as for an unknown one."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from paystream.client import PaystreamClient, build_command
from tests.e2e.connect_e2e import connect_deployment, enabled_account
from tests.e2e.gateway_e2e import client, data, outcome, provider_objects
from tests.fixtures.pipeline import Deployment

__all__ = ["client"]  # (the fixture)

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

API_KEY = f"sk_test_paystream_dc_{uuid.uuid4().hex}"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def deployed(deployment_factory: Any, localstripe_url: str) -> AsyncIterator[Deployment]:
    async with connect_deployment(deployment_factory, localstripe_url, "dc", API_KEY) as dep:
        yield dep


def _pay(account_id: str, **kw: Any) -> dict[str, Any]:
    return {"amount": 10_000, "currency": "USD", "payment_method_token": "pm_card_visa",
            "connected_account_id": account_id, **kw}  # fmt: skip


async def _flow(client: PaystreamClient, tenant: str, account: dict[str, Any]) -> dict[str, Any]:
    """A charge with a fee (sent twice: one event), a manual one captured in part, and a
    refund with the transfer reversed and the fee refunded."""
    cmd = build_command("payment.create", tenant, _pay(account["id"], application_fee_amount=1_230))
    first, again = await client.send(cmd), await client.send(cmd)
    assert outcome(first) == "payment.succeeded", data(first)
    assert (first.get_id(), first.get_data()) == (again.get_id(), again.get_data())
    paid = data(first)["object"]
    assert (paid["connected_account_id"], paid["application_fee_amount"]) == (account["id"], 1_230)
    held = await client.command(
        "payment.create",
        tenant,
        _pay(account["id"], application_fee_amount=4_000, capture="manual"),
    )
    assert outcome(held) == "payment.authorized", data(held)
    cap = await client.command(
        "payment.capture", tenant, {"payment_id": data(held)["object"]["id"], "amount": 3_000}
    )
    assert outcome(cap) == "payment.succeeded", data(cap)
    assert data(cap)["object"]["application_fee_amount"] == 3_000
    refund = await client.command(
        "refund.create",
        tenant,
        {"payment_id": paid["id"], "amount": 5_000, "reverse_transfer": True,
         "refund_application_fee": True},
    )  # fmt: skip
    assert outcome(refund) == "refund.succeeded", data(refund)
    return {"paid": paid, "captured": data(cap)["object"], "refund": data(refund)["object"]}


async def test_a_simulator_tenant_charges_for_its_account(client: PaystreamClient) -> None:
    account = await enabled_account(client, "dc-sim", None)
    await _flow(client, "dc-sim", account)
    theirs = await client.command("payment.create", "dc-other", _pay(account["id"]))
    unknown = await client.command("payment.create", "dc-other", _pay("ca_nobody"))
    assert [data(o)["reason"] for o in (theirs, unknown)] == ["not_found", "not_found"]
    assert data(theirs)["message"] == f"no such connected account: {account['id']}"


async def test_a_stripe_tenant_charges_for_its_account(
    client: PaystreamClient, localstripe_url: str
) -> None:
    account = await enabled_account(client, "dc-stripe", localstripe_url)
    done = await _flow(client, "dc-stripe", account)
    async with provider_objects(localstripe_url, API_KEY, "v1") as get:
        pi = await get("payment_intents", done["paid"]["provider_payment_id"])
        captured = await get("payment_intents", done["captured"]["provider_payment_id"])
        refund = await get("refunds", done["refund"]["provider_refund_id"])
    assert pi["transfer_data"] == {"destination": account["provider_account_id"]}, pi
    assert (pi["application_fee_amount"], captured["application_fee_amount"]) == (1_230, 3_000)
    assert (refund["reverse_transfer"], refund["refund_application_fee"]) == (True, True)

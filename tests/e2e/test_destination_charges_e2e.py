"""Destination charges through a real worker: a simulator tenant and a Stripe tenant
(against localstripe and its FAKE of Connect) each make a connected account, onboard it,
charge a customer on its behalf keeping a fee, capture one in part (the fee capped) and
refund with the transfer reversed; a replayed command gets the identical event; another
tenant naming the account is answered `not_found`, as for an unknown one."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from paystream.client import PaystreamClient, build_command
from paystream.tenancy.crypto import MasterKey, MasterKeyring
from paystream.tenancy.models import Tenant
from paystream.tenancy.secrets import seal_secret
from tests.e2e.gateway_e2e import client, data, outcome, provider_objects
from tests.fixtures.localstripe import LOCALSTRIPE_API_KEY
from tests.fixtures.pipeline import Deployment

__all__ = ["client"]  # (the fixture)

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

MASTER = MasterKey.generate()
API_KEY = f"sk_test_paystream_dc_{uuid.uuid4().hex}"
LINK = {"refresh_url": "https://platform.example/reauth",
        "return_url": "https://platform.example/done"}  # fmt: skip


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def deployed(deployment_factory: Any, localstripe_url: str) -> AsyncIterator[Deployment]:
    dep: Deployment = await deployment_factory(
        paystream_stripe_api_base=localstripe_url,
        paystream_master_key=base64.b64encode(MASTER.key).decode(),
    )
    sealed = seal_secret(MasterKeyring(MASTER), "dc-stripe", "api_key", API_KEY)
    await dep.add_tenants(
        Tenant(tenant_id="dc-sim"),
        Tenant(tenant_id="dc-other"),
        Tenant(tenant_id="dc-stripe", gateway="stripe", secrets={"api_key": sealed}),
    )
    with dep.worker() as worker:
        worker.wait_ready(["dc-sim", "dc-other", "dc-stripe"], partitions=dep.settings.partitions)
        yield dep


async def _enabled(client: PaystreamClient, tenant: str, stripe_url: str | None) -> dict[str, Any]:
    body = {"country": "US", "email": "shop+enabled@example.com", "capabilities": ["transfers"]}
    made = await client.command("connected_account.create", tenant, body)
    assert outcome(made) == "connected_account.created", data(made)
    acct = data(made)["object"]
    link = await client.command(
        "connected_account.onboarding_link", tenant, {"connected_account_id": acct["id"], **LINK}
    )
    assert outcome(link) == "connected_account.onboarding_link_created", data(link)
    if stripe_url is not None:  # (the holder onboards at Stripe: the FAKE's control)
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{stripe_url}/_fake/accounts/{acct['provider_account_id']}/onboard",
                data={"outcome": "enabled"},
                headers={"Authorization": f"Bearer {LOCALSTRIPE_API_KEY}"},
            ) as resp,
        ):
            resp.raise_for_status()
    read = await client.command(
        "connected_account.refresh", tenant, {"connected_account_id": acct["id"]}
    )
    assert data(read)["object"]["status"] == "enabled", data(read)
    return dict(data(read)["object"])


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
    account = await _enabled(client, "dc-sim", None)
    await _flow(client, "dc-sim", account)
    theirs = await client.command("payment.create", "dc-other", _pay(account["id"]))
    unknown = await client.command("payment.create", "dc-other", _pay("ca_nobody"))
    assert [data(o)["reason"] for o in (theirs, unknown)] == ["not_found", "not_found"]
    assert data(theirs)["message"] == f"no such connected account: {account['id']}"


async def test_a_stripe_tenant_charges_for_its_account(
    client: PaystreamClient, localstripe_url: str
) -> None:
    account = await _enabled(client, "dc-stripe", localstripe_url)
    done = await _flow(client, "dc-stripe", account)
    async with provider_objects(localstripe_url, API_KEY, "v1") as get:
        pi = await get("payment_intents", done["paid"]["provider_payment_id"])
        captured = await get("payment_intents", done["captured"]["provider_payment_id"])
        refund = await get("refunds", done["refund"]["provider_refund_id"])
    assert pi["transfer_data"] == {"destination": account["provider_account_id"]}, pi
    assert (pi["application_fee_amount"], captured["application_fee_amount"]) == (1_230, 3_000)
    assert (refund["reverse_transfer"], refund["refund_application_fee"]) == (True, True)

"""Separate charges and transfers through a real worker: a simulator tenant and a Stripe
tenant (against localstripe and its FAKE of Connect and Transfers) each onboard a
connected account, charge a customer, transfer part of the charge to the account (sent
twice: the identical event), are refused a transfer above what is left of the charge,
reverse in part then in full; another tenant naming the account is answered
`not_found`, as for an unknown one."""

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
API_KEY = f"sk_test_paystream_tr_{uuid.uuid4().hex}"
LINK = {"refresh_url": "https://platform.example/reauth",
        "return_url": "https://platform.example/done"}  # fmt: skip


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def deployed(deployment_factory: Any, localstripe_url: str) -> AsyncIterator[Deployment]:
    dep: Deployment = await deployment_factory(
        paystream_stripe_api_base=localstripe_url,
        paystream_master_key=base64.b64encode(MASTER.key).decode(),
    )
    sealed = seal_secret(MasterKeyring(MASTER), "tr-stripe", "api_key", API_KEY)
    await dep.add_tenants(
        Tenant(tenant_id="tr-sim"),
        Tenant(tenant_id="tr-other"),
        Tenant(tenant_id="tr-stripe", gateway="stripe", secrets={"api_key": sealed}),
    )
    with dep.worker() as worker:
        worker.wait_ready(["tr-sim", "tr-other", "tr-stripe"], partitions=dep.settings.partitions)
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


async def _flow(client: PaystreamClient, tenant: str, account: dict[str, Any]) -> dict[str, Any]:
    """A charge, a transfer of part of it (sent twice: one event), one above what is
    left refused, a reversal in part then in full."""
    paid = await client.command(
        "payment.create",
        tenant,
        {"amount": 10_000, "currency": "EUR", "payment_method_token": "pm_card_visa"},
    )
    assert outcome(paid) == "payment.succeeded", data(paid)
    pay = data(paid)["object"]
    body = {"connected_account_id": account["id"], "amount": 6_000, "currency": "EUR",
            "payment_id": pay["id"], "transfer_group": "order-1"}  # fmt: skip
    cmd = build_command("transfer.create", tenant, body)
    first, again = await client.send(cmd), await client.send(cmd)
    assert outcome(first) == "transfer.created", data(first)
    assert (first.get_id(), first.get_data()) == (again.get_id(), again.get_data())
    transfer = data(first)["object"]
    assert data(first)["related"][0]["object"]["amount_transferred"] == 6_000
    over = await client.command("transfer.create", tenant, {**body, "amount": 4_001})
    assert data(over)["reason"] == "validation_error", data(over)
    part = await client.command(
        "transfer.reverse", tenant, {"transfer_id": transfer["id"], "amount": 2_000}
    )
    assert outcome(part) == "transfer.reversed", data(part)
    assert data(part)["object"]["status"] == "partially_reversed"
    rest = await client.command("transfer.reverse", tenant, {"transfer_id": transfer["id"]})
    assert outcome(rest) == "transfer.reversed", data(rest)
    assert (data(rest)["object"]["status"], data(rest)["object"]["amount_reversed"]) == (
        "reversed",
        6_000,
    )
    return dict(data(rest)["object"])


async def test_a_simulator_tenant_transfers_to_its_account(client: PaystreamClient) -> None:
    account = await _enabled(client, "tr-sim", None)
    await _flow(client, "tr-sim", account)
    body = {"connected_account_id": account["id"], "amount": 100, "currency": "EUR"}
    theirs = await client.command("transfer.create", "tr-other", body)
    unknown = await client.command(
        "transfer.create", "tr-other", {**body, "connected_account_id": "ca_nobody"}
    )
    assert [data(o)["reason"] for o in (theirs, unknown)] == ["not_found", "not_found"]
    assert data(theirs)["message"] == f"no such connected account: {account['id']}"


async def test_a_stripe_tenant_transfers_to_its_account(
    client: PaystreamClient, localstripe_url: str
) -> None:
    account = await _enabled(client, "tr-stripe", localstripe_url)
    reversed_ = await _flow(client, "tr-stripe", account)
    async with provider_objects(localstripe_url, API_KEY, "v1") as get:
        held = await get("transfers", reversed_["provider_transfer_id"])
    assert held["destination"] == account["provider_account_id"], held
    assert (held["amount"], held["amount_reversed"], held["reversed"]) == (6_000, 6_000, True)
    assert held["source_transaction"], held

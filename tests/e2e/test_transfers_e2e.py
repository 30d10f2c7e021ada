"""Separate charges and transfers through a real worker: a simulator tenant and a Stripe
tenant (against localstripe and its FAKE of Connect and Transfers) each onboard a
connected account, charge a customer, transfer part of the charge to the account (sent
twice: the identical event), are refused a transfer above what is left of the charge,
reverse in part then in full; another tenant naming the account is answered
`not_found`, as for an unknown one."""

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

API_KEY = f"sk_test_paystream_tr_{uuid.uuid4().hex}"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def deployed(deployment_factory: Any, localstripe_url: str) -> AsyncIterator[Deployment]:
    async with connect_deployment(deployment_factory, localstripe_url, "tr", API_KEY) as dep:
        yield dep


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
    account = await enabled_account(client, "tr-sim", None)
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
    account = await enabled_account(client, "tr-stripe", localstripe_url)
    reversed_ = await _flow(client, "tr-stripe", account)
    async with provider_objects(localstripe_url, API_KEY, "v1") as get:
        held = await get("transfers", reversed_["provider_transfer_id"])
    assert held["destination"] == account["provider_account_id"], held
    assert (held["amount"], held["amount_reversed"], held["reversed"]) == (6_000, 6_000, True)
    assert held["source_transaction"], held

"""Connected accounts of a Stripe tenant through the pipeline, against localstripe's FAKE
accounts and account links (tests/fixtures/localstripe_server.py: localstripe has no
Connect): created on the platform's key, onboarded at the fake, read back enabled; a
tenant acting for a connected account (``--connected-account``) is refused
`unsupported` before any request, naming why."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio
from pydantic import SecretStr

from tests.agents.conftest import running_harness
from tests.agents.harness import Harness, data, kind
from tests.fixtures.localstripe import LOCALSTRIPE_API_KEY

pytestmark = pytest.mark.asyncio

LINK = {
    "refresh_url": "https://platform.example/reauth",
    "return_url": "https://platform.example/done",
}


@pytest_asyncio.fixture
async def sh(redis_url: str, localstripe_url: str) -> AsyncIterator[Harness]:
    async with running_harness(redis_url, stripe_api_base=localstripe_url) as h:
        h.pool._open_secret = lambda tenant, name: SecretStr(LOCALSTRIPE_API_KEY)
        yield h


async def _onboard(stripe_url: str, provider_account_id: str, outcome: str) -> None:
    auth = {"Authorization": f"Bearer {LOCALSTRIPE_API_KEY}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{stripe_url}/_fake/accounts/{provider_account_id}/onboard",
            data={"outcome": outcome},
            headers=auth,
        ) as resp,
    ):
        resp.raise_for_status()


async def test_a_stripe_account_is_made_linked_and_read_back(
    sh: Harness, localstripe_url: str
) -> None:
    t = sh.add_tenant(gateway="stripe", secrets={"api_key": "v1:x"})
    # (card payments too: an account of transfers alone, a recipient, never has its
    # charges enabled: test_destination_charges_stripe)
    body = {"country": "US", "email": "shop@example.com",
            "capabilities": ["card_payments", "transfers"]}  # fmt: skip
    made = await sh.send("connected_account.create", t, body)
    assert kind(made) == "connected_account.created", data(made)
    acct = data(made)["object"]
    assert acct["status"] == "pending" and acct["provider_account_id"].startswith("acct_")
    assert acct["currently_due"] and acct["disabled_reason"] == "requirements.past_due"
    link = await sh.send(
        "connected_account.onboarding_link", t, {"connected_account_id": acct["id"], **LINK}
    )
    assert kind(link) == "connected_account.onboarding_link_created", data(link)
    assert data(link)["url"].startswith("https://connect.stripe.com/setup/")
    await _onboard(localstripe_url, acct["provider_account_id"], "enabled")
    read = await sh.send("connected_account.refresh", t, {"connected_account_id": acct["id"]})
    assert kind(read) == "connected_account.updated", data(read)
    obj = data(read)["object"]
    assert (obj["status"], obj["charges_enabled"], obj["payouts_enabled"]) == (
        "enabled",
        True,
        True,
    )
    assert obj["currently_due"] == [] and obj["disabled_reason"] is None
    # The platform's own Account carries paystream's reference, for account.updated.
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{localstripe_url}/v1/accounts/{acct['provider_account_id']}",
            headers={"Authorization": f"Bearer {LOCALSTRIPE_API_KEY}"},
        ) as resp,
    ):
        held = await resp.json()
    assert held["metadata"]["paystream_connected_account"] == f"{t}:{acct['id']}"


async def test_a_tenant_acting_for_a_connected_account_makes_none(sh: Harness) -> None:
    t = sh.add_tenant(
        gateway="stripe", secrets={"api_key": "v1:x"}, connected_account="acct_1Merchant"
    )
    out = await sh.send("connected_account.create", t, {"country": "US"})
    assert kind(out) == "command.rejected", data(out)
    assert data(out)["reason"] == "unsupported"
    message = data(out)["message"]
    assert "platform's own Stripe key" in message and "acct_1Merchant" in message, message
    # Not remembered (the tenant's setup): the same command, the tenant fixed, goes through.
    sh.tenants[t] = {**sh.tenants[t], "connected_account": None}
    again = await sh.send("connected_account.create", t, {"country": "US"})
    assert kind(again) == "connected_account.created", data(again)

"""What the Connect end-to-end tests share (tests/e2e/test_destination_charges_e2e.py,
test_transfers_e2e.py): a worker serving a simulator tenant, another tenant and a Stripe
tenant (against localstripe), and a connected account onboarded to `enabled` the way a
platform would (create, onboarding link, the holder onboards, refresh)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from paystream.client import PaystreamClient
from paystream.tenancy.crypto import MasterKey, MasterKeyring
from paystream.tenancy.models import Tenant
from paystream.tenancy.secrets import seal_secret
from tests.e2e.gateway_e2e import data, outcome
from tests.fixtures.localstripe import LOCALSTRIPE_API_KEY
from tests.fixtures.pipeline import Deployment

LINK = {"refresh_url": "https://platform.example/reauth",
        "return_url": "https://platform.example/done"}  # fmt: skip


@asynccontextmanager
async def connect_deployment(
    deployment_factory: Any, localstripe_url: str, prefix: str, stripe_api_key: str
) -> AsyncIterator[Deployment]:
    """A running worker serving ``<prefix>-sim``, ``<prefix>-other`` (simulator tenants) and
    ``<prefix>-stripe`` (Stripe at localstripe, its key ``stripe_api_key`` sealed)."""
    master = MasterKey.generate()
    dep: Deployment = await deployment_factory(
        paystream_stripe_api_base=localstripe_url,
        paystream_master_key=base64.b64encode(master.key).decode(),
    )
    sim, other, stripe = f"{prefix}-sim", f"{prefix}-other", f"{prefix}-stripe"
    sealed = seal_secret(MasterKeyring(master), stripe, "api_key", stripe_api_key)
    await dep.add_tenants(
        Tenant(tenant_id=sim),
        Tenant(tenant_id=other),
        Tenant(tenant_id=stripe, gateway="stripe", secrets={"api_key": sealed}),
    )
    with dep.worker() as worker:
        worker.wait_ready([sim, other, stripe], partitions=dep.settings.partitions)
        yield dep


async def enabled_account(
    client: PaystreamClient, tenant: str, stripe_url: str | None
) -> dict[str, Any]:
    """A connected account of ``tenant``'s with the transfers capability, onboarded to
    `enabled`: by the simulator's email tag, or (``stripe_url``) at the FAKE's control."""
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

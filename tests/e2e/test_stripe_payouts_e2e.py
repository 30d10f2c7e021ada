"""Payouts of a Stripe tenant through a real worker, against localstripe: payout.create
answered payout.created with Stripe's payout (named by paystream's payout in its
metadata), payout.cancel, and a signed ``payout.paid`` webhook read back as a
``payout.refresh`` (its outcome payout.paid). localstripe pays out in eur alone; its
payouts move at the bank only by its update's ``status`` (a TEST-ONLY control)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import stripe

from paystream.client import PaystreamClient
from paystream.gateways.base import PAYOUT_REF_KEY
from paystream.ids import derived_id
from paystream.tenancy.crypto import MasterKey, MasterKeyring
from paystream.tenancy.models import Tenant
from paystream.tenancy.secrets import seal_secret
from tests.fixtures.localstripe import LOCALSTRIPE_API_KEY
from tests.fixtures.pipeline import Deployment

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

MASTER = MasterKey.generate()
SECRET = f"whsec_{uuid.uuid4().hex}"
TENANT = "payo"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def deployed(
    deployment_factory: Any, localstripe_url: str
) -> AsyncIterator[tuple[Deployment, str]]:
    dep: Deployment = await deployment_factory(
        paystream_stripe_api_base=localstripe_url,
        paystream_master_key=base64.b64encode(MASTER.key).decode(),
    )
    keyring = MasterKeyring(MASTER)
    with dep.worker() as worker:
        await dep.add_tenants(
            Tenant(
                tenant_id=TENANT,
                gateway="stripe",
                secrets={
                    "api_key": seal_secret(keyring, TENANT, "api_key", LOCALSTRIPE_API_KEY),
                    "webhook_secret": seal_secret(keyring, TENANT, "webhook_secret", SECRET),
                },
            )
        )
        worker.wait_ready([TENANT], partitions=dep.settings.partitions)
        yield dep, worker.base_url
    assert SECRET not in worker.log_path.read_text(errors="replace")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def client(deployed: tuple[Deployment, str]) -> AsyncIterator[PaystreamClient]:
    async with deployed[0].client() as c:
        yield c


def outcome(event: Any) -> str:
    return str(event.get_type()).removeprefix("com.paystream.")


def signed(payload: bytes) -> str:
    at = int(time.time())
    signature = stripe.WebhookSignature._compute_signature(f"{at}.{payload.decode()}", SECRET)
    return f"t={at},v1={signature}"


async def localstripe(localstripe_url: str, method: str, path: str, **form: str) -> Any:
    auth = {"Authorization": f"Bearer {LOCALSTRIPE_API_KEY}"}
    async with (
        aiohttp.ClientSession(base_url=localstripe_url, headers=auth) as session,
        session.request(method, path, data=form or None) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def create(client: PaystreamClient, payout_id: str, amount: int) -> dict[str, Any]:
    body = {
        "payout_id": payout_id,
        "amount": amount,
        "currency": "EUR",
        "description": "weekly payout",
        "statement_descriptor": "PAYSTREAM",
        "metadata": {"batch": "7"},
    }
    created = await client.command("payout.create", TENANT, body)
    assert outcome(created) == "payout.created", created.get_data()
    return dict(created.get_data()["object"])


async def test_a_payout_is_created_at_stripe_named_by_paystreams_payout(
    client: PaystreamClient, localstripe_url: str
) -> None:
    obj = await create(client, "po_e2e_made", 1500)
    assert (obj["status"], obj["amount"], obj["currency"]) == ("pending", 1500, "EUR")
    at_stripe = await localstripe(
        localstripe_url, "GET", f"/v1/payouts/{obj['provider_payout_id']}"
    )
    assert (at_stripe["amount"], at_stripe["currency"]) == (1500, "eur")
    assert at_stripe["statement_descriptor"] == "PAYSTREAM"
    assert at_stripe["metadata"] == {"batch": "7", PAYOUT_REF_KEY: f"{TENANT}:po_e2e_made"}


async def test_a_pending_payout_is_canceled_and_a_paid_one_refused(
    client: PaystreamClient, localstripe_url: str
) -> None:
    obj = await create(client, "po_e2e_cancel", 800)
    canceled = await client.command("payout.cancel", TENANT, {"payout_id": "po_e2e_cancel"})
    assert outcome(canceled) == "payout.canceled", canceled.get_data()
    assert canceled.get_data()["previous_status"] == "pending"
    at_stripe = await localstripe(
        localstripe_url, "GET", f"/v1/payouts/{obj['provider_payout_id']}"
    )
    assert at_stripe["status"] == "canceled"
    again = await client.command("payout.cancel", TENANT, {"payout_id": "po_e2e_cancel"})
    assert again.get_data()["reason"] == "invalid_state", again.get_data()


async def test_a_signed_payout_paid_webhook_reads_the_payout_back(
    deployed: tuple[Deployment, str], client: PaystreamClient, localstripe_url: str
) -> None:
    _, base_url = deployed
    obj = await create(client, "po_e2e_paid", 2500)
    provider_id = obj["provider_payout_id"]
    # The bank paid it (at Stripe, on its arrival date); Stripe then sends payout.paid.
    paid = await localstripe(localstripe_url, "POST", f"/v1/payouts/{provider_id}", status="paid")
    event_id = f"evt_{uuid.uuid4().hex}"
    body = json.dumps(
        {
            "id": event_id,
            "object": "event",
            "type": "payout.paid",
            "created": int(time.time()),
            "data": {"object": paid},
        }
    ).encode()
    command_id = derived_id("whk", "stripe", TENANT, event_id)
    answer = client.expect(TENANT, command_id)
    headers = {"Content-Type": "application/json", "Stripe-Signature": signed(body)}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base_url}/webhooks/stripe/{TENANT}", data=body, headers=headers) as resp,
    ):
        assert resp.status == 200
        assert await resp.json() == {
            "received": True,
            "action": "refresh",
            "command_id": command_id,
        }
    read_back = await asyncio.wait_for(answer, 60)
    assert outcome(read_back) == "payout.paid", read_back.get_data()
    data = read_back.get_data()
    assert data["previous_status"] == "pending"
    assert data["object"]["status"] == "paid" and data["object"]["id"] == "po_e2e_paid"
    # The same event again: the payout is paid here already, nothing read.
    body2 = body.replace(event_id.encode(), f"evt_{uuid.uuid4().hex}".encode())
    headers = {"Content-Type": "application/json", "Stripe-Signature": signed(body2)}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base_url}/webhooks/stripe/{TENANT}", data=body2, headers=headers) as resp,
    ):
        echoed = await resp.json()
    assert echoed["action"] == "ignored" and "paid already" in echoed["why"], echoed

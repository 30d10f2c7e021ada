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
from paystream.tenancy.crypto import MasterKey
from tests.e2e.gateway_e2e import add_tenant_with_cli, client, data, outcome, provider_objects
from tests.fixtures.localstripe import LOCALSTRIPE_API_KEY
from tests.fixtures.pipeline import Deployment

__all__ = ["client"]  # (the shared fixture, used here)

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

MASTER = MasterKey.generate()
SECRET = f"whsec_{uuid.uuid4().hex}"
TENANT = "payo"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def deployed(deployment_factory: Any, localstripe_url: str) -> AsyncIterator[Deployment]:
    dep: Deployment = await deployment_factory(
        paystream_stripe_api_base=localstripe_url,
        paystream_master_key=base64.b64encode(MASTER.key).decode(),
    )
    with dep.worker() as worker:
        secrets = {"api_key": LOCALSTRIPE_API_KEY, "webhook_secret": SECRET}
        add_tenant_with_cli(dep, TENANT, "stripe", secrets)
        worker.wait_ready([TENANT], partitions=dep.settings.partitions)
        dep.worker_handle = worker  # type: ignore[attr-defined]
        yield dep
    assert SECRET not in worker.log_path.read_text(errors="replace")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def payouts_at_stripe(localstripe_url: str) -> AsyncIterator[Any]:
    """``await get(po_…)`` → the payout as localstripe has it."""
    async with provider_objects(localstripe_url, LOCALSTRIPE_API_KEY, "v1") as get:
        yield lambda payout_id: get("payouts", payout_id)


def signed(payload: bytes) -> str:
    at = int(time.time())
    signature = stripe.WebhookSignature._compute_signature(f"{at}.{payload.decode()}", SECRET)
    return f"t={at},v1={signature}"


async def settle(localstripe_url: str, provider_payout_id: str) -> dict[str, Any]:
    """The bank paid it (at Stripe, on its arrival date): localstripe's payout moved by
    its update's ``status`` (a TEST-ONLY control)."""
    auth = {"Authorization": f"Bearer {LOCALSTRIPE_API_KEY}"}
    async with (
        aiohttp.ClientSession(base_url=localstripe_url, headers=auth) as session,
        session.post(f"/v1/payouts/{provider_payout_id}", data={"status": "paid"}) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return dict(await resp.json())


async def webhook(base_url: str, body: bytes) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json", "Stripe-Signature": signed(body)}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base_url}/webhooks/stripe/{TENANT}", data=body, headers=headers) as resp,
    ):
        return resp.status, dict(await resp.json())


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
    assert outcome(created) == "payout.created", data(created)
    return dict(data(created)["object"])


async def test_a_payout_is_created_at_stripe_named_by_paystreams_payout(
    client: PaystreamClient, payouts_at_stripe: Any
) -> None:
    obj = await create(client, "po_e2e_made", 1500)
    assert (obj["status"], obj["amount"], obj["currency"]) == ("pending", 1500, "EUR")
    at_stripe = await payouts_at_stripe(obj["provider_payout_id"])
    assert (at_stripe["amount"], at_stripe["currency"]) == (1500, "eur")
    assert at_stripe["statement_descriptor"] == "PAYSTREAM"
    assert at_stripe["metadata"] == {"batch": "7", PAYOUT_REF_KEY: f"{TENANT}:po_e2e_made"}


async def test_a_pending_payout_is_canceled_and_a_canceled_one_refused(
    client: PaystreamClient, payouts_at_stripe: Any
) -> None:
    obj = await create(client, "po_e2e_cancel", 800)
    canceled = await client.command("payout.cancel", TENANT, {"payout_id": "po_e2e_cancel"})
    assert outcome(canceled) == "payout.canceled", data(canceled)
    assert data(canceled)["previous_status"] == "pending"
    assert (await payouts_at_stripe(obj["provider_payout_id"]))["status"] == "canceled"
    again = await client.command("payout.cancel", TENANT, {"payout_id": "po_e2e_cancel"})
    assert data(again)["reason"] == "invalid_state", data(again)


async def test_a_signed_payout_paid_webhook_reads_the_payout_back(
    deployed: Deployment, client: PaystreamClient, localstripe_url: str
) -> None:
    base_url = deployed.worker_handle.base_url  # type: ignore[attr-defined]
    obj = await create(client, "po_e2e_paid", 2500)
    # The bank paid it; Stripe then sends payout.paid (signed here, as Stripe signs it).
    paid = await settle(localstripe_url, obj["provider_payout_id"])
    event_id = f"evt_{uuid.uuid4().hex}"
    event = {
        "id": event_id,
        "object": "event",
        "type": "payout.paid",
        "created": int(time.time()),
        "data": {"object": paid},
    }
    command_id = derived_id("whk", "stripe", TENANT, event_id)
    answer = client.expect(TENANT, command_id)
    status, body = await webhook(base_url, json.dumps(event).encode())
    assert (status, body) == (
        200,
        {"received": True, "action": "refresh", "command_id": command_id},
    )
    read_back = await asyncio.wait_for(answer, 60)
    assert outcome(read_back) == "payout.paid", data(read_back)
    assert data(read_back)["previous_status"] == "pending"
    assert data(read_back)["object"]["status"] == "paid"
    assert data(read_back)["object"]["id"] == "po_e2e_paid"
    # The same news again (another event): the payout is paid here already, nothing read.
    again = {**event, "id": f"evt_{uuid.uuid4().hex}"}
    status, body = await webhook(base_url, json.dumps(again).encode())
    assert (status, body["action"]) == (200, "ignored") and "paid already" in body["why"], body

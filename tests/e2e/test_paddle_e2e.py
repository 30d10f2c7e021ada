"""A real worker with a Paddle tenant, against the tests' FAKE Paddle
(tests/fixtures/paddle_fake.py): commands in, Paddle ids out, a payment paid at the
fake's checkout and settled by Paddle's signed webhook, a refund approved the same way.

The tenant is registered the documented way (``paystream tenants add shop --gateway
paddle --secret api_key --secret webhook_secret_key`` with ``PAYSTREAM_SECRET_API_KEY``
and ``PAYSTREAM_SECRET_WEBHOOK_SECRET_KEY``): its key and secret key are sealed under the
deployment's master key and opened only inside the worker. The fake sends notifications
signed as Paddle signs (``Paddle-Signature``) to the worker's webhook endpoint.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from paystream.client import PaystreamClient
from paystream.ids import derived_id
from paystream.tenancy.crypto import MasterKey
from tests.e2e.gateway_e2e import add_tenant_with_cli, data, outcome, provider_objects
from tests.fixtures.paddle_fake import FAKE_PADDLE_API_KEY
from tests.fixtures.pipeline import Deployment

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

MASTER = MasterKey.generate()
MASTER_B64 = base64.b64encode(MASTER.key).decode()
TENANT = "paddled"
SECRET_KEY = f"pdl_ntfset_{uuid.uuid4().hex}"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def deployed(
    deployment_factory: Any, paddle_url: str
) -> AsyncIterator[tuple[Deployment, str]]:
    dep: Deployment = await deployment_factory(
        paystream_paddle_api_base=paddle_url, paystream_master_key=MASTER_B64
    )
    with dep.worker() as worker:
        cli = add_tenant_with_cli(
            dep,
            TENANT,
            "paddle",
            {"api_key": FAKE_PADDLE_API_KEY, "webhook_secret_key": SECRET_KEY},
        )
        assert FAKE_PADDLE_API_KEY not in cli.stdout + cli.stderr
        assert SECRET_KEY not in cli.stdout + cli.stderr
        worker.wait_ready([TENANT], partitions=dep.settings.partitions)
        yield dep, worker.base_url
    log = worker.log_path.read_text(errors="replace")
    assert FAKE_PADDLE_API_KEY not in log and SECRET_KEY not in log and MASTER_B64 not in log


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def client(deployed: tuple[Deployment, str]) -> AsyncIterator[PaystreamClient]:
    async with deployed[0].client() as c:
        yield c


async def fake(paddle_url: str, path: str, body: dict[str, Any] | None = None) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{paddle_url}{path}", json=body or {}) as resp,
    ):
        answer = await resp.json()
        assert resp.status == 200, answer
        return answer


async def notify(
    paddle_url: str, base_url: str, event_type: str, object_id: str
) -> tuple[str, int, Any]:
    """The fake Paddle's signed notification about ``object_id``, posted to the worker:
    (event id, status, answer)."""
    event_id = f"evt_{uuid.uuid4().hex}"
    sent = await fake(
        paddle_url,
        "/_fake/webhooks",
        {
            "event_type": event_type,
            "id": object_id,
            "event_id": event_id,
            "url": f"{base_url}/webhooks/paddle/{TENANT}",
            "secret_key": SECRET_KEY,
        },
    )
    return event_id, sent["status"], sent["body"]


async def test_a_paddle_payment_is_paid_at_checkout_and_settled_by_webhook(
    deployed: tuple[Deployment, str], client: PaystreamClient, paddle_url: str
) -> None:
    _, base_url = deployed
    cus = await client.command("customer.create", TENANT, {"email": "ops@paddled.test"})
    assert outcome(cus) == "customer.created", data(cus)
    customer = data(cus)["object"]
    assert customer["provider"] == "paddle"
    async with provider_objects(paddle_url, FAKE_PADDLE_API_KEY, "") as paddle_api:
        held = (await paddle_api("customers", customer["provider_customer_id"]))["data"]
        assert held["email"] == "ops@paddled.test"

        made = await client.command(
            "payment.create",
            TENANT,
            {
                "amount": 2500,
                "currency": "EUR",
                "customer_id": customer["id"],
                "payment_method_token": "checkout",
                "description": "Annual plan",
            },
        )
        assert outcome(made) == "payment.requires_action", data(made)
        pay = data(made)["object"]
        txn_id = pay["provider_payment_id"]
        assert txn_id.startswith("txn_") and pay["amount_captured"] == 0
        assert data(made)["object"]["next_action"]["redirect_to_url"]["url"].endswith(
            f"?_ptxn={txn_id}"
        )
        txn = (await paddle_api("transactions", txn_id))["data"]
        assert txn["custom_data"]["paystream_payment"] == f"{TENANT}:{pay['id']}"
        assert txn["details"]["totals"]["grand_total"] == "2500"

        # The customer pays at checkout; Paddle says so by webhook.
        await fake(paddle_url, f"/_fake/transactions/{txn_id}/checkout", {"outcome": "captured"})
        event_id = f"evt_{uuid.uuid4().hex}"
        expected = client.expect(TENANT, derived_id("whk", "paddle", TENANT, event_id))
        sent = await fake(
            paddle_url,
            "/_fake/webhooks",
            {
                "event_type": "transaction.completed",
                "id": txn_id,
                "event_id": event_id,
                "url": f"{base_url}/webhooks/paddle/{TENANT}",
                "secret_key": SECRET_KEY,
            },
        )
        assert (sent["status"], sent["body"].get("action")) == (200, "refresh"), sent
        paid = await asyncio.wait_for(expected, 60)
        assert outcome(paid) == "payment.succeeded", data(paid)
        assert data(paid)["object"]["amount_captured"] == 2500

        # A refund: pending until Paddle approves it, then settled by its event.
        ref = await client.command(
            "refund.create", TENANT, {"payment_id": pay["id"], "amount": 1000}
        )
        assert outcome(ref) == "refund.pending", data(ref)
        refund = data(ref)["object"]
        adj_id = refund["provider_refund_id"]
        assert adj_id.startswith("adj_")
        await fake(paddle_url, f"/_fake/adjustments/{adj_id}/decide", {"status": "approved"})
        event_id = f"evt_{uuid.uuid4().hex}"
        expected = client.expect(TENANT, derived_id("whk", "paddle", TENANT, event_id))
        sent = await fake(
            paddle_url,
            "/_fake/webhooks",
            {
                "event_type": "adjustment.updated",
                "id": adj_id,
                "event_id": event_id,
                "url": f"{base_url}/webhooks/paddle/{TENANT}",
                "secret_key": SECRET_KEY,
            },
        )
        assert (sent["status"], sent["body"].get("action")) == (200, "refresh"), sent
        settled = await asyncio.wait_for(expected, 60)
        assert outcome(settled) == "refund.succeeded", data(settled)

    # Sent again (Paddle's retry, re-signed): nothing new, acknowledged.
    _, status, answer = await notify(paddle_url, base_url, "transaction.completed", txn_id)
    assert (status, answer.get("action")) == (200, "ignored"), answer


async def test_what_paddle_lacks_is_answered_before_any_call(client: PaystreamClient) -> None:
    card = await client.command(
        "payment.create",
        TENANT,
        {"amount": 700, "currency": "USD", "payment_method_token": "pm_card_visa"},
    )
    assert outcome(card) == "command.rejected", data(card)
    assert "checkout" in data(card)["message"]
    manual = await client.command(
        "payment.create",
        TENANT,
        {"amount": 700, "currency": "USD", "payment_method_token": "checkout", "capture": "manual"},
    )
    assert (outcome(manual), data(manual)["reason"]) == ("command.rejected", "unsupported")

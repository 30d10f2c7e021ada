"""A Paddle subscription through a real worker, against the tests' FAKE Paddle
(tests/fixtures/paddle_fake.py): ``subscription.create`` with ``payment_method_token:
"checkout"`` answered ``subscription.requires_action`` (the checkout URL), paid at the
fake's checkout and read back by Paddle's signed ``transaction.completed``; a renewal
read back by its transaction's event; an update of its amount (no proration), a cancel
at period end, a cancel now. The tenant is registered the documented way (CLI, sealed
key and notification secret key)."""

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
TENANT = "paddlesubs"
SECRET_KEY = f"pdl_ntfset_{uuid.uuid4().hex}"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def deployed(
    deployment_factory: Any, paddle_url: str
) -> AsyncIterator[tuple[Deployment, str]]:
    dep: Deployment = await deployment_factory(
        paystream_paddle_api_base=paddle_url, paystream_master_key=MASTER_B64
    )
    with dep.worker() as worker:
        add_tenant_with_cli(
            dep,
            TENANT,
            "paddle",
            {"api_key": FAKE_PADDLE_API_KEY, "webhook_secret_key": SECRET_KEY},
        )
        worker.wait_ready([TENANT], partitions=dep.settings.partitions)
        yield dep, worker.base_url


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


async def renewal_of(paddle_url: str, paddle_sub: str) -> str:
    """The newest renewal transaction of the Paddle subscription ``paddle_sub``."""
    auth = {"Authorization": f"Bearer {FAKE_PADDLE_API_KEY}"}
    async with (
        aiohttp.ClientSession(headers=auth) as session,
        session.get(f"{paddle_url}/transactions?subscription_id={paddle_sub}") as resp,
    ):
        listed = (await resp.json())["data"]
    return next(str(t["id"]) for t in listed if t["origin"] == "subscription_recurring")


async def notified(
    client: PaystreamClient, paddle_url: str, base_url: str, event_type: str, object_id: str
) -> dict[str, Any]:
    """The fake Paddle's signed notification about ``object_id`` posted to the worker,
    and the outcome of the refresh it became."""
    event_id = f"evt_{uuid.uuid4().hex}"
    expected = client.expect(TENANT, derived_id("whk", "paddle", TENANT, event_id))
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
    assert (sent["status"], sent["body"].get("action")) == (200, "refresh"), sent
    return await asyncio.wait_for(expected, 60)  # type: ignore[no-any-return]


async def test_a_paddle_subscription_starts_at_checkout(
    deployed: tuple[Deployment, str], client: PaystreamClient, paddle_url: str
) -> None:
    _, base_url = deployed
    cus = await client.command("customer.create", TENANT, {"email": "subs@paddled.test"})
    assert outcome(cus) == "customer.created", data(cus)
    customer = data(cus)["object"]
    made = await client.command(
        "subscription.create",
        TENANT,
        {
            "customer_id": customer["id"],
            "payment_method_token": "checkout",
            "amount": 1500,
            "currency": "USD",
            "interval": "month",
            "description": "Pro plan",
        },
    )
    assert outcome(made) == "subscription.requires_action", data(made)
    sub = data(made)["object"]
    checkout_id = sub["provider_subscription_id"]
    assert checkout_id.startswith("txn_") and sub["status"] == "requires_action"
    assert sub["payment_method_id"] is None
    assert data(made)["next_action"]["redirect_to_url"]["url"].endswith(f"?_ptxn={checkout_id}")
    async with provider_objects(paddle_url, FAKE_PADDLE_API_KEY, "") as paddle_api:
        txn = (await paddle_api("transactions", checkout_id))["data"]
        assert txn["custom_data"]["paystream_subscription"] == f"{TENANT}:{sub['id']}"
        assert txn["items"][0]["price"]["billing_cycle"] == {"interval": "month", "frequency": 1}

        # Paid at checkout: Paddle makes the subscription; its transaction's event reads
        # it back active, the checkout its first paid invoice.
        await fake(paddle_url, f"/_fake/transactions/{checkout_id}/checkout")
        live = await notified(client, paddle_url, base_url, "transaction.completed", checkout_id)
        assert outcome(live) == "subscription.updated", data(live)
        assert data(live)["object"]["status"] == "active"
        assert [r["object"]["status"] for r in data(live)["related"]] == ["paid"]
        paddle_sub = (await paddle_api("transactions", checkout_id))["data"]["subscription_id"]
        assert paddle_sub.startswith("sub_")

        # A renewal, declined: its transaction's event (custom_data copied) reads it
        # past_due.
        await fake(paddle_url, f"/_fake/subscriptions/{paddle_sub}/renew", {"outcome": "declined"})
        renewal = await renewal_of(paddle_url, paddle_sub)
        due = await notified(client, paddle_url, base_url, "transaction.past_due", renewal)
        assert data(due)["object"]["status"] == "past_due", data(due)
        assert data(due)["error"]["decline_code"] or data(due)["error"]["code"]
        # Paid on Paddle's retry: the subscription's own event reads it active again.
        await fake(paddle_url, f"/_fake/subscriptions/{paddle_sub}/renew")
        again = await notified(client, paddle_url, base_url, "subscription.updated", paddle_sub)
        assert data(again)["object"]["status"] == "active", data(again)

    changed = await client.command(
        "subscription.update", TENANT, {"subscription_id": sub["id"], "amount": 900}
    )
    assert outcome(changed) == "subscription.updated", data(changed)
    assert data(changed)["object"]["amount"] == 900
    card = await client.command(
        "subscription.update",
        TENANT,
        {"subscription_id": sub["id"], "payment_method_id": "pm_elsewhere"},
    )
    assert outcome(card) == "command.rejected", data(card)
    ending = await client.command(
        "subscription.cancel", TENANT, {"subscription_id": sub["id"], "at_period_end": True}
    )
    assert outcome(ending) == "subscription.updated", data(ending)
    assert data(ending)["object"]["cancel_at_period_end"] is True
    gone = await client.command("subscription.cancel", TENANT, {"subscription_id": sub["id"]})
    assert outcome(gone) == "subscription.canceled", data(gone)


async def test_an_unpaid_one_is_canceled_and_checkout_is_paddles_only(
    client: PaystreamClient, paddle_url: str
) -> None:
    cus = await client.command("customer.create", TENANT, {"email": "later@paddled.test"})
    customer = data(cus)["object"]
    body = {
        "customer_id": customer["id"],
        "amount": 700,
        "currency": "EUR",
        "interval": "week",
        "interval_count": 2,
    }
    made = await client.command(
        "subscription.create", TENANT, {**body, "payment_method_token": "checkout"}
    )
    assert outcome(made) == "subscription.requires_action", data(made)
    sub = data(made)["object"]
    read = await client.command("subscription.refresh", TENANT, {"subscription_id": sub["id"]})
    assert outcome(read) == "subscription.updated", data(read)
    assert data(read)["object"]["status"] == "requires_action" and data(read)["next_action"]
    # (a declined card leaves the transaction ready: Paddle cancels it so)
    await fake(
        paddle_url,
        f"/_fake/transactions/{sub['provider_subscription_id']}/checkout",
        {"outcome": "declined"},
    )
    gone = await client.command("subscription.cancel", TENANT, {"subscription_id": sub["id"]})
    assert outcome(gone) == "subscription.canceled", data(gone)
    saved = await client.command(
        "subscription.create", TENANT, {**body, "payment_method_id": "pm_none"}
    )
    assert outcome(saved) == "command.rejected", data(saved)


async def test_a_free_trial_starts_at_checkout_then_bills(
    deployed: tuple[Deployment, str], client: PaystreamClient, paddle_url: str
) -> None:
    """trial_days: the checkout's price carries Paddle's trial_period, charges nothing;
    its transaction.completed reads the subscription trialing (its trial_end), the first
    charge at the trial's end active; a trial canceled at its end is never billed."""
    _, base_url = deployed
    cus = await client.command("customer.create", TENANT, {"email": "trial@paddled.test"})
    customer = data(cus)["object"]
    body = {
        "customer_id": customer["id"],
        "payment_method_token": "checkout",
        "amount": 1500,
        "currency": "USD",
        "interval": "month",
        "trial_days": 14,
    }
    made = await client.command("subscription.create", TENANT, body)
    assert outcome(made) == "subscription.requires_action", data(made)
    sub = data(made)["object"]
    assert sub["trial_end"] and sub["amount"] == 1500
    checkout_id = sub["provider_subscription_id"]
    async with provider_objects(paddle_url, FAKE_PADDLE_API_KEY, "") as paddle_api:
        txn = (await paddle_api("transactions", checkout_id))["data"]
        price = txn["items"][0]["price"]
        assert price["trial_period"] == {"interval": "day", "frequency": 14}
        assert txn["details"]["totals"]["grand_total"] == "0"

        await fake(paddle_url, f"/_fake/transactions/{checkout_id}/checkout")
        trial = await notified(client, paddle_url, base_url, "transaction.completed", checkout_id)
        assert outcome(trial) == "subscription.updated", data(trial)
        live = data(trial)["object"]
        assert live["status"] == "trialing" and live["trial_end"], live
        assert live["trial_end"] == live["current_period_end"]
        assert [(r["object"]["status"], r["object"]["amount"]) for r in data(trial)["related"]] == [
            ("paid", 0)
        ]
        paddle_sub = (await paddle_api("transactions", checkout_id))["data"]["subscription_id"]
        # The trial's end: Paddle charges the saved method, the subscription active.
        await fake(paddle_url, f"/_fake/subscriptions/{paddle_sub}/renew")
        paid = await notified(client, paddle_url, base_url, "subscription.activated", paddle_sub)
        assert data(paid)["object"]["status"] == "active", data(paid)
        assert data(paid)["object"]["current_period_start"] == live["trial_end"]

    # Another, canceled at its trial's end: nothing billed.
    ending = await client.command("subscription.create", TENANT, body)
    other = data(ending)["object"]
    await fake(paddle_url, f"/_fake/transactions/{other['provider_subscription_id']}/checkout")
    read = await client.command("subscription.refresh", TENANT, {"subscription_id": other["id"]})
    assert data(read)["object"]["status"] == "trialing", data(read)
    scheduled = await client.command(
        "subscription.cancel", TENANT, {"subscription_id": other["id"], "at_period_end": True}
    )
    assert outcome(scheduled) == "subscription.updated", data(scheduled)
    assert data(scheduled)["object"]["cancel_at_period_end"] is True
    assert data(scheduled)["object"]["status"] == "trialing"
    gone = await client.command("subscription.cancel", TENANT, {"subscription_id": other["id"]})
    assert outcome(gone) == "subscription.canceled", data(gone)

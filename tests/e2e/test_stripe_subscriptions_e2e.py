"""Stripe subscriptions in a real worker, against localstripe: subscription.create,
cancel (at period end, then now), a first invoice declined (subscription.failed), and a
signed ``invoice.payment_failed`` event (signed as Stripe signs, with the tenant's
endpoint secret) becoming a subscription.refresh whose outcome goes out; the echo of
paystream's own create, cancel at period end, update and decline dropped (review h73q),
a price or card changed in Stripe's dashboard read and recorded (review h77n)."""

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

from paystream.client import PaystreamClient
from paystream.ids import derived_id
from paystream.tenancy.crypto import MasterKey, MasterKeyring
from paystream.tenancy.models import Tenant
from paystream.tenancy.secrets import seal_secret
from tests.e2e.test_stripe_webhooks import outcome, post, signed
from tests.fixtures.localstripe import LOCALSTRIPE_API_KEY
from tests.fixtures.pipeline import Deployment
from tests.gateways.harness import localstripe_token

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

MASTER = MasterKey.generate()
SECRET = f"whsec_{uuid.uuid4().hex}"
TENANT = "hooked"  # (the name test_stripe_webhooks' post and signed use)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def deployed(
    deployment_factory: Any, localstripe_url: str
) -> AsyncIterator[tuple[Deployment, str]]:
    dep: Deployment = await deployment_factory(
        paystream_stripe_api_base=localstripe_url,
        paystream_master_key=base64.b64encode(MASTER.key).decode(),
    )
    keyring = MasterKeyring(MASTER)
    secrets = {
        "api_key": seal_secret(keyring, TENANT, "api_key", LOCALSTRIPE_API_KEY),
        "webhook_secret": seal_secret(keyring, TENANT, "webhook_secret", SECRET),
    }
    with dep.worker() as worker:
        await dep.add_tenants(Tenant(tenant_id=TENANT, gateway="stripe", secrets=secrets))
        worker.wait_ready([TENANT], partitions=dep.settings.partitions)
        yield dep, worker.base_url


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def client(deployed: tuple[Deployment, str]) -> AsyncIterator[PaystreamClient]:
    async with deployed[0].client() as c:
        yield c


async def _subscriber(client: PaystreamClient, stripe_url: str, card: str) -> tuple[str, str]:
    cus = await client.command("customer.create", TENANT, {"email": "sub@example.com"})
    assert outcome(cus) == "customer.created", cus.get_data()
    customer = cus.get_data()["object"]["id"]
    token = await localstripe_token(stripe_url, card)
    pm = await client.command(
        "payment_method.attach", TENANT, {"customer_id": customer, "token": token}
    )
    assert outcome(pm) == "payment_method.attached", pm.get_data()
    return customer, pm.get_data()["object"]["id"]


async def _at_stripe(stripe_url: str, path: str) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {LOCALSTRIPE_API_KEY}"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{stripe_url}/v1/{path}", headers=auth) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return dict(await resp.json())


async def _in_the_dashboard(stripe_url: str, path: str, form: dict[str, str]) -> dict[str, Any]:
    """A change made at Stripe outside paystream (as its dashboard makes it)."""
    auth = {"Authorization": f"Bearer {LOCALSTRIPE_API_KEY}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{stripe_url}/v1/{path}", data=form, headers=auth) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return dict(await resp.json())


def _event(kind: str, obj: dict[str, Any]) -> bytes:
    """A Stripe event about ``obj`` (as Stripe sends it, it names it whole)."""
    event = {"id": f"evt_{uuid.uuid4().hex}", "object": "event", "type": kind,
             "created": int(time.time()), "data": {"object": obj}}  # fmt: skip
    return json.dumps(event).encode()


async def test_a_subscription_is_created_and_canceled_at_stripe(
    deployed: tuple[Deployment, str], client: PaystreamClient, localstripe_url: str
) -> None:
    _, base_url = deployed
    customer, pm = await _subscriber(client, localstripe_url, "pm_card_visa")
    made = await client.command(
        "subscription.create",
        TENANT,
        {"customer_id": customer, "payment_method_id": pm, "amount": 1500,
         "currency": "EUR", "interval": "month", "metadata": {"plan": "gold"}},
    )  # fmt: skip
    assert outcome(made) == "subscription.created", made.get_data()
    sub = made.get_data()["object"]
    assert sub["status"] == "active" and sub["provider"] == "stripe"
    (related,) = made.get_data()["related"]
    assert related["entity_type"] == "invoice"
    invoice = related["object"]
    assert invoice["status"] == "paid"
    assert invoice["amount"] == 1500 and invoice["provider_payment_id"].startswith("pi_")
    at_stripe = await _at_stripe(
        localstripe_url, f"subscriptions/{sub['provider_subscription_id']}"
    )
    assert at_stripe["metadata"] == {
        "plan": "gold",
        "paystream_subscription": f"{TENANT}:{sub['id']}",
    }
    assert at_stripe["default_payment_method"].startswith("pm_")
    # Stripe's echo of the create (its first invoice's invoice.paid) brings nothing
    # (review h73q): dropped, against the rows the worker wrote, no refresh.
    paid = await _at_stripe(localstripe_url, f"invoices/{invoice['provider_invoice_id']}")
    details = {"subscription": sub["provider_subscription_id"],
               "metadata": at_stripe["metadata"]}  # fmt: skip
    paid["parent"] = {"type": "subscription_details", "subscription_details": details}
    body = _event("invoice.paid", paid)
    status, answer = await post(base_url, body, signed(body, SECRET))
    assert (status, answer) == (
        200,
        {"received": True, "action": "ignored", "why": "the invoice is paid already"},
    )

    ends = await client.command(
        "subscription.cancel", TENANT, {"subscription_id": sub["id"], "at_period_end": True}
    )
    assert outcome(ends) == "subscription.updated", ends.get_data()
    assert ends.get_data()["object"]["cancel_at_period_end"] is True
    # And the cancel at period end's customer.subscription.updated, as localstripe holds
    # the subscription now.
    at_stripe = await _at_stripe(
        localstripe_url, f"subscriptions/{sub['provider_subscription_id']}"
    )
    body = _event("customer.subscription.updated", at_stripe)
    status, answer = await post(base_url, body, signed(body, SECRET))
    assert (status, answer["action"]) == (200, "ignored"), answer
    assert answer["why"] == "the subscription is active already, as the event says"
    now = await client.command("subscription.cancel", TENANT, {"subscription_id": sub["id"]})
    assert outcome(now) == "subscription.canceled", now.get_data()
    assert now.get_data()["previous_status"] == "active"
    at_stripe = await _at_stripe(
        localstripe_url, f"subscriptions/{sub['provider_subscription_id']}"
    )
    assert at_stripe["status"] == "canceled"


async def test_a_price_or_card_changed_in_stripes_dashboard_is_read_by_its_webhook(
    deployed: tuple[Deployment, str], client: PaystreamClient, localstripe_url: str
) -> None:
    """Stripe's ``customer.subscription.updated`` for a price or card changed in its
    dashboard (status, cancel flag and period as recorded) is no echo: each becomes a
    refresh that records it. paystream's own update's echo is still dropped: its outcome
    recorded the new price and card first."""
    _, base_url = deployed
    customer, pm = await _subscriber(client, localstripe_url, "pm_card_visa")
    token = await localstripe_token(localstripe_url, "pm_card_visa")
    second = await client.command(
        "payment_method.attach", TENANT, {"customer_id": customer, "token": token}
    )
    assert outcome(second) == "payment_method.attached", second.get_data()
    pm2, pm2_at_stripe = (
        second.get_data()["object"][k] for k in ("id", "provider_payment_method_id")
    )
    made = await client.command(
        "subscription.create",
        TENANT,
        {"customer_id": customer, "payment_method_id": pm, "amount": 1500,
         "currency": "EUR", "interval": "month"},
    )  # fmt: skip
    assert outcome(made) == "subscription.created", made.get_data()
    sub = made.get_data()["object"]
    path = f"subscriptions/{sub['provider_subscription_id']}"

    async def webhook_of_stripes_subscription() -> dict[str, Any]:
        body = _event("customer.subscription.updated", await _at_stripe(localstripe_url, path))
        status, answer = await post(base_url, body, signed(body, SECRET))
        assert status == 200, answer
        return answer

    async def refreshed_by_webhook() -> dict[str, Any]:
        body = _event("customer.subscription.updated", await _at_stripe(localstripe_url, path))
        command_id = derived_id("whk", "stripe", TENANT, json.loads(body)["id"])
        answered = client.expect(TENANT, command_id)
        status, answer = await post(base_url, body, signed(body, SECRET))
        assert (status, answer.get("action")) == (200, "refresh"), answer
        refreshed = await asyncio.wait_for(answered, 60)
        assert outcome(refreshed) == "subscription.updated", refreshed.get_data()
        return dict(refreshed.get_data()["object"])

    # As created: the echo.
    assert (await webhook_of_stripes_subscription())["action"] == "ignored"
    # The price, in the dashboard (a new Plan on the item, as the dashboard bills it).
    item = (await _at_stripe(localstripe_url, path))["items"]["data"][0]
    plan = await _in_the_dashboard(
        localstripe_url,
        "plans",
        {"amount": "1900", "currency": "eur", "interval": "month",
         "product": item["plan"]["product"]},
    )  # fmt: skip
    await _in_the_dashboard(
        localstripe_url,
        path,
        {"items[0][id]": item["id"], "items[0][plan]": plan["id"], "proration_behavior": "none"},
    )
    obj = await refreshed_by_webhook()
    assert (obj["amount"], obj["payment_method_id"], obj["status"]) == (1900, pm, "active"), obj
    # The card, in the dashboard: one paystream records for the customer.
    await _in_the_dashboard(localstripe_url, path, {"default_payment_method": pm2_at_stripe})
    obj = await refreshed_by_webhook()
    assert (obj["amount"], obj["payment_method_id"]) == (1900, pm2), obj
    # Read and recorded: the same event again is the echo now.
    assert (await webhook_of_stripes_subscription())["action"] == "ignored"

    # paystream's own update of both: its echo brings no refresh.
    updated = await client.command(
        "subscription.update",
        TENANT,
        {"subscription_id": sub["id"], "amount": 2500, "payment_method_id": pm},
    )
    assert outcome(updated) == "subscription.updated", updated.get_data()
    assert (
        updated.get_data()["object"]["amount"],
        updated.get_data()["object"]["payment_method_id"],
    ) == (2500, pm)
    assert await webhook_of_stripes_subscription() == {
        "received": True,
        "action": "ignored",
        "why": "the subscription is active already, as the event says",
    }


async def test_a_declined_first_invoice_and_its_webhook(
    deployed: tuple[Deployment, str], client: PaystreamClient, localstripe_url: str
) -> None:
    _, base_url = deployed
    customer, pm = await _subscriber(client, localstripe_url, "pm_card_chargeCustomerFail")
    failed = await client.command(
        "subscription.create",
        TENANT,
        {"customer_id": customer, "payment_method_id": pm, "amount": 900,
         "currency": "USD", "interval": "week"},
    )  # fmt: skip
    assert outcome(failed) == "subscription.failed", failed.get_data()
    sub = failed.get_data()["object"]
    assert sub["status"] == "incomplete"
    assert failed.get_data()["error"]["code"] == "card_declined", failed.get_data()
    invoice = failed.get_data()["related"][0]["object"]
    assert invoice["status"] == "open"

    # Stripe's invoice.payment_failed for it (the shape of API version 2025-03-31.basil).
    event_id = f"evt_{uuid.uuid4().hex}"
    ref = {"paystream_subscription": f"{TENANT}:{sub['id']}"}
    details = {"subscription": sub["provider_subscription_id"], "metadata": ref}
    body = json.dumps(
        {
            "id": event_id,
            "object": "event",
            "type": "invoice.payment_failed",
            "created": int(time.time()),
            "data": {
                "object": {
                    "id": invoice["provider_invoice_id"],
                    "object": "invoice",
                    "status": "open",
                    "parent": {"type": "subscription_details", "subscription_details": details},
                }
            },
        }
    ).encode()
    # It is the echo of the create's own decline: its invoice is recorded open, as the
    # event says, and a refresh would bring nothing (review h73q): dropped, unread.
    status, answer = await post(base_url, body, signed(body, SECRET))
    assert (status, answer) == (
        200,
        {"received": True, "action": "ignored", "why": "the invoice is open already"},
    )
    # One about an invoice not recorded here (a renewal's, as Stripe would send it)
    # becomes the subscription's refresh.
    renewal = json.loads(body)
    event_id = renewal["id"] = f"evt_{uuid.uuid4().hex}"
    renewal["data"]["object"]["id"] = f"in_{uuid.uuid4().hex}"
    body = json.dumps(renewal).encode()
    command_id = derived_id("whk", "stripe", TENANT, event_id)
    answered = client.expect(TENANT, command_id)
    status, answer = await post(base_url, body, signed(body, SECRET))
    assert (status, answer) == (
        200,
        {"received": True, "action": "refresh", "command_id": command_id},
    )
    refreshed = await asyncio.wait_for(answered, 60)
    assert outcome(refreshed) == "subscription.updated", refreshed.get_data()
    assert refreshed.get_data()["object"]["status"] == "incomplete"
    assert refreshed.get_data()["previous_status"] == "incomplete"
    # Another tenant's subscription named in an event is not this endpoint's.
    other = body.replace(f"{TENANT}:".encode(), b"neighbour:").replace(
        event_id.encode(), b"evt_other"
    )
    status, answer = await post(base_url, other, signed(other, SECRET))
    assert (status, answer["action"]) == (200, "ignored"), answer

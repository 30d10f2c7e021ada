"""A real worker with a Square tenant, against the tests' FAKE Square
(tests/fixtures/square_fake.py): commands in, Square ids out.

The tenant is registered the documented way (``paystream tenants add shop --gateway
square --secret access_token --option location_id=...`` with
``PAYSTREAM_SECRET_ACCESS_TOKEN``): its token is sealed under the deployment's master key
and opened only inside the worker. Every Square object the pipeline reports is read back
from the fake, so the ids on ``paystream.events`` are Square's, not paystream's.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from paystream.client import PaystreamClient
from paystream.tenancy.crypto import MasterKey
from tests.e2e.gateway_e2e import add_tenant_with_cli, client, data, outcome, provider_objects
from tests.fixtures.pipeline import Deployment
from tests.fixtures.square_fake import FAKE_SQUARE_LOCATION, FAKE_SQUARE_TOKEN
from tests.gateways.harness import advance_square_clock

__all__ = ["client"]  # (the fixture)

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

MASTER = MasterKey.generate()
MASTER_B64 = base64.b64encode(MASTER.key).decode()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def deployed(deployment_factory: Any, square_url: str) -> AsyncIterator[Deployment]:
    dep: Deployment = await deployment_factory(
        paystream_square_api_base=square_url, paystream_master_key=MASTER_B64
    )
    with dep.worker() as worker:
        cli = add_tenant_with_cli(
            dep,
            "shop",
            "square",
            {"access_token": FAKE_SQUARE_TOKEN},
            {"location_id": FAKE_SQUARE_LOCATION},
        )
        assert FAKE_SQUARE_TOKEN not in cli.stdout + cli.stderr
        worker.wait_ready(["shop"], partitions=dep.settings.partitions)
        yield dep
    log = worker.log_path.read_text(errors="replace")
    assert FAKE_SQUARE_TOKEN not in log and MASTER_B64 not in log


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def square_api(square_url: str) -> AsyncIterator[Any]:
    """``await square_api("payments", id)`` → the object as the fake Square has it."""
    async with provider_objects(square_url, FAKE_SQUARE_TOKEN, "v2") as get:
        yield get


async def test_square_tenant_full_flow_carries_square_ids(
    client: PaystreamClient, square_api: Any
) -> None:
    cus = await client.command("customer.create", "shop", {"email": "ops@shop.test"})
    assert outcome(cus) == "customer.created", data(cus)
    customer = data(cus)["object"]
    assert customer["provider"] == "square"
    sq_cus = await square_api("customers", customer["provider_customer_id"])
    assert sq_cus["customer"]["email_address"] == "ops@shop.test"

    pm = await client.command(
        "payment_method.attach",
        "shop",
        {"customer_id": customer["id"], "token": "cnon:card-nonce-ok"},
    )
    assert outcome(pm) == "payment_method.attached", data(pm)
    method = data(pm)["object"]
    assert method["provider_payment_method_id"].startswith("ccof:")
    assert (method["brand"], method["last4"]) == ("visa", "1111")
    sq_card = await square_api("cards", method["provider_payment_method_id"])
    assert sq_card["card"]["customer_id"] == customer["provider_customer_id"]

    def payment(amount: int, **more: str) -> dict[str, Any]:
        return {"amount": amount, "currency": "USD", "customer_id": customer["id"],
                "payment_method_id": method["id"], **more}  # fmt: skip

    auto = await client.command("payment.create", "shop", payment(2500))
    assert outcome(auto) == "payment.succeeded", data(auto)
    paid = data(auto)["object"]
    assert (paid["amount"], paid["amount_captured"]) == (2500, 2500)
    sq_paid = (await square_api("payments", paid["provider_payment_id"]))["payment"]
    assert (sq_paid["status"], sq_paid["amount_money"]) == (
        "COMPLETED",
        {"amount": 2500, "currency": "USD"},
    )

    manual = await client.command("payment.create", "shop", payment(1200, capture="manual"))
    assert outcome(manual) == "payment.authorized", data(manual)
    held = data(manual)["object"]
    assert held["amount_captured"] == 0
    assert (await square_api("payments", held["provider_payment_id"]))["payment"][
        "status"
    ] == "APPROVED"
    cap = await client.command("payment.capture", "shop", {"payment_id": held["id"]})
    assert outcome(cap) == "payment.succeeded", data(cap)
    assert data(cap)["object"]["amount_captured"] == 1200
    assert (await square_api("payments", held["provider_payment_id"]))["payment"][
        "status"
    ] == "COMPLETED"

    partial = await client.command("payment.create", "shop", payment(3000, capture="manual"))
    assert outcome(partial) == "payment.authorized", data(partial)
    some = await client.command(
        "payment.capture", "shop", {"payment_id": data(partial)["object"]["id"], "amount": 1000}
    )
    assert outcome(some) == "command.rejected", data(some)
    assert data(some)["reason"] == "unsupported"

    ref = await client.command("refund.create", "shop", {"payment_id": paid["id"], "amount": 1000})
    assert outcome(ref) == "refund.succeeded", data(ref)
    refund = data(ref)["object"]
    sq_refund = (await square_api("refunds", refund["provider_refund_id"]))["refund"]
    assert (sq_refund["amount_money"]["amount"], sq_refund["payment_id"]) == (
        1000,
        paid["provider_payment_id"],
    )


async def test_square_decline_is_a_failed_payment(client: PaystreamClient) -> None:
    out = await client.command(
        "payment.create",
        "shop",
        {"amount": 700, "currency": "USD", "payment_method_token": "cnon:card-nonce-declined"},
    )
    assert outcome(out) == "payment.failed", data(out)
    error = data(out)["error"]
    assert (error["code"], error["provider"], error["retryable"]) == (
        "card_declined",
        "square",
        False,
    )
    assert error["decline_code"] == "generic_decline"


async def test_a_square_subscription_is_created_renewed_updated_and_canceled(
    client: PaystreamClient, square_api: Any, square_url: str
) -> None:
    """Through the worker: Square bills the first week at once, renews on its own clock
    (the fake's, moved on), a refresh reads the renewal back; an update is billed from
    the next period; a cancel now is refused (Square cancels only at a period's end), one
    at period end takes effect there."""
    cus = await client.command("customer.create", "shop", {"email": "subs@shop.test"})
    customer = data(cus)["object"]["id"]
    cards = []
    for _ in range(2):
        pm = await client.command(
            "payment_method.attach",
            "shop",
            {"customer_id": customer, "token": "cnon:card-nonce-ok"},
        )
        assert outcome(pm) == "payment_method.attached", data(pm)
        cards.append(data(pm)["object"])
    made = await client.command(
        "subscription.create",
        "shop",
        {"customer_id": customer, "payment_method_id": cards[0]["id"], "amount": 700,
         "currency": "USD", "interval": "week", "metadata": {"plan": "gold"}},
    )  # fmt: skip
    assert outcome(made) == "subscription.created", data(made)
    sub = data(made)["object"]
    assert (sub["status"], sub["provider"]) == ("active", "square")
    (first,) = [r["object"] for r in data(made)["related"] if r["entity_type"] == "invoice"]
    assert (first["status"], first["amount"]) == ("paid", 700) and first["provider_payment_id"]
    at_square = (await square_api("subscriptions", sub["provider_subscription_id"]))["subscription"]
    assert at_square["card_id"] == cards[0]["provider_payment_method_id"]
    assert at_square["price_override_money"] == {"amount": 700, "currency": "USD"}

    await advance_square_clock(square_url, 7 * 24 * 3600 + 60)
    refreshed = await client.command("subscription.refresh", "shop", {"subscription_id": sub["id"]})
    assert outcome(refreshed) == "subscription.updated", data(refreshed)
    (renewal,) = [r["object"] for r in data(refreshed)["related"] if r["entity_type"] == "invoice"]
    assert (renewal["status"], renewal["amount"]) == ("paid", 700)
    assert renewal["period_start"] == sub["current_period_end"]
    assert data(refreshed)["object"]["current_period_start"] == sub["current_period_end"]

    updated = await client.command(
        "subscription.update",
        "shop",
        {"subscription_id": sub["id"], "amount": 900, "payment_method_id": cards[1]["id"]},
    )
    assert outcome(updated) == "subscription.updated", data(updated)
    assert (data(updated)["object"]["amount"], data(updated)["object"]["payment_method_id"]) == (
        900,
        cards[1]["id"],
    )
    at_square = (await square_api("subscriptions", sub["provider_subscription_id"]))["subscription"]
    assert at_square["card_id"] == cards[1]["provider_payment_method_id"]

    now = await client.command("subscription.cancel", "shop", {"subscription_id": sub["id"]})
    assert outcome(now) == "command.rejected", data(now)
    assert data(now)["reason"] == "unsupported"
    assert "send at_period_end true" in data(now)["message"]
    ends = await client.command(
        "subscription.cancel", "shop", {"subscription_id": sub["id"], "at_period_end": True}
    )
    assert outcome(ends) == "subscription.updated", data(ends)
    assert data(ends)["object"]["cancel_at_period_end"] is True

    await advance_square_clock(square_url, 7 * 24 * 3600 + 60)
    ended = await client.command("subscription.refresh", "shop", {"subscription_id": sub["id"]})
    assert outcome(ended) == "subscription.canceled", data(ended)
    assert data(ended)["object"]["status"] == "canceled"
    assert data(ended)["object"]["canceled_at"] is not None
    # (nothing billed past the cancel: the two periods paid, the second at its old price
    # as the update came after it was billed)
    invoices = await square_api_invoices(square_url, at_square["customer_id"])
    assert sorted(
        i["payment_requests"][0]["computed_amount_money"]["amount"] for i in invoices
    ) == [
        700,
        700,
    ]


async def square_api_invoices(square_url: str, customer_id: str) -> list[dict[str, Any]]:
    """The customer's invoices at the fake's main location (SearchInvoices)."""
    query = {"filter": {"location_ids": [FAKE_SQUARE_LOCATION], "customer_ids": [customer_id]}}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{square_url}/v2/invoices/search",
            json={"query": query},
            headers={"Authorization": f"Bearer {FAKE_SQUARE_TOKEN}"},
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return list((await resp.json()).get("invoices", []))


async def test_a_square_subscriptions_declined_first_charge_fails_it_and_a_cancel_voids_it(
    client: PaystreamClient, square_api: Any, square_url: str
) -> None:
    """Through the worker (review h78f F4a): a declined first charge is
    subscription.failed with the decline, as on every provider, never a
    subscription.created that a tenant would provision on; its end is scheduled at
    Square (nothing more billed), and a cancel now cancels its unpaid invoice."""
    cus = await client.command("customer.create", "shop", {"email": "declined@shop.test"})
    customer = data(cus)["object"]["id"]
    pm = await client.command(
        "payment_method.attach", "shop", {"customer_id": customer, "token": "cnon:card-nonce-ok"}
    )
    card = data(pm)["object"]
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{square_url}/_fake/cards/{card['provider_payment_method_id']}/decline", json={}
        ) as resp,
    ):
        resp.raise_for_status()
    made = await client.command(
        "subscription.create",
        "shop",
        {"customer_id": customer, "payment_method_id": card["id"], "amount": 700,
         "currency": "USD", "interval": "week"},
    )  # fmt: skip
    assert outcome(made) == "subscription.failed", data(made)
    sub = data(made)["object"]
    assert sub["status"] == "incomplete"
    assert data(made)["error"]["code"] == "card_declined"
    (first,) = [r["object"] for r in data(made)["related"] if r["entity_type"] == "invoice"]
    assert first["status"] == "open"
    at_square = (await square_api("subscriptions", sub["provider_subscription_id"]))["subscription"]
    assert at_square["canceled_date"] == at_square["charged_through_date"]

    canceled = await client.command("subscription.cancel", "shop", {"subscription_id": sub["id"]})
    assert outcome(canceled) == "subscription.canceled", data(canceled)
    assert data(canceled)["object"]["status"] == "canceled"
    (void,) = [r["object"] for r in data(canceled)["related"] if r["entity_type"] == "invoice"]
    assert void["status"] == "void"
    invoice = (await square_api("invoices", first["provider_invoice_id"]))["invoice"]
    assert invoice["status"] == "CANCELED"

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

import pytest
import pytest_asyncio

from paystream.client import PaystreamClient
from paystream.tenancy.crypto import MasterKey
from tests.e2e.gateway_e2e import add_tenant_with_cli, client, data, outcome, provider_objects
from tests.fixtures.pipeline import Deployment
from tests.fixtures.square_fake import FAKE_SQUARE_LOCATION, FAKE_SQUARE_TOKEN

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

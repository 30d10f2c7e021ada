"""Square webhooks into a real worker: `POST /webhooks/square/{tenant}`.

The tests' FAKE Square (tests/fixtures/square_fake.py) keeps the payments and disputes
and sends the notifications, signed as Square documents (the subscription's signature
key over its notification URL and the body). The tenant is registered the documented
way (``paystream tenants add`` with ``--secret webhook_signature_key`` and
``--option webhook_url=``): its notification URL is a public one, as behind an ingress,
not the worker's own address, where the fake posts.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from paystream.client import PaystreamClient
from paystream.ids import derived_id
from paystream.ids import invoice_id as derived_invoice_id
from paystream.tenancy.crypto import MasterKey
from tests.e2e.gateway_e2e import add_tenant_with_cli, outcome
from tests.fixtures.pipeline import Deployment
from tests.fixtures.square_fake import (
    FAKE_SQUARE_LOCATION,
    FAKE_SQUARE_MERCHANT,
    FAKE_SQUARE_TOKEN,
)

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

MASTER = MasterKey.generate()
MASTER_B64 = base64.b64encode(MASTER.key).decode()
TENANT = "hooked"
SIGNATURE_KEY = f"sqsig-{uuid.uuid4().hex}"
# The subscription's notification URL at Square: the public address in front of the
# workers (an ingress), never the worker's own.
PUBLIC_URL = f"https://pay.example.com/webhooks/square/{TENANT}"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def deployed(
    deployment_factory: Any, square_url: str
) -> AsyncIterator[tuple[Deployment, str]]:
    dep: Deployment = await deployment_factory(
        paystream_square_api_base=square_url, paystream_master_key=MASTER_B64
    )
    with dep.worker() as worker:
        cli = add_tenant_with_cli(
            dep,
            TENANT,
            "square",
            {"access_token": FAKE_SQUARE_TOKEN, "webhook_signature_key": SIGNATURE_KEY},
            {"location_id": FAKE_SQUARE_LOCATION, "webhook_url": PUBLIC_URL},
        )
        assert SIGNATURE_KEY not in cli.stdout + cli.stderr
        worker.wait_ready([TENANT], partitions=dep.settings.partitions)
        yield dep, worker.base_url
    log = worker.log_path.read_text(errors="replace")
    assert SIGNATURE_KEY not in log and FAKE_SQUARE_TOKEN not in log


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def client(deployed: tuple[Deployment, str]) -> AsyncIterator[PaystreamClient]:
    async with deployed[0].client() as c:
        yield c


async def fake(square_url: str, path: str, body: dict[str, Any] | None = None) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{square_url}{path}", json=body or {}) as resp,
    ):
        answer = await resp.json()
        assert resp.status == 200, answer
        return answer


async def notify(
    square_url: str, base_url: str, event_type: str, object_id: str, **more: Any
) -> tuple[str, int, Any]:
    """The fake Square's notification about ``object_id``, signed over the tenant's
    notification URL, posted to the worker: (event id, status, answer)."""
    event_id = str(uuid.uuid4())
    sent = await fake(
        square_url,
        "/_fake/webhooks",
        {
            "type": event_type,
            "id": object_id,
            "event_id": event_id,
            "url": PUBLIC_URL,
            "post_to": f"{base_url}/webhooks/square/{TENANT}",
            "signature_key": SIGNATURE_KEY,
            **more,
        },
    )
    return event_id, sent["status"], sent["body"]


async def square_payment(square_url: str, payment_id: str) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {FAKE_SQUARE_TOKEN}"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{square_url}/v2/payments/{payment_id}", headers=auth) as resp,
    ):
        return dict((await resp.json())["payment"])


async def test_a_square_dispute_arrives_by_webhook_and_is_answered(
    deployed: tuple[Deployment, str], client: PaystreamClient, square_url: str
) -> None:
    """The cardholder disputes the payment: Square's dispute.created, posted to the
    worker, becomes the payment's refresh, whose outcome records the dispute; the
    tenant answers it with evidence."""
    _, base_url = deployed
    paid = await client.command(
        "payment.create",
        TENANT,
        {"amount": 2500, "currency": "USD", "payment_method_token": "cnon:card-nonce-ok"},
    )
    assert outcome(paid) == "payment.succeeded", paid.get_data()
    pay = paid.get_data()["object"]
    at_square = await square_payment(square_url, pay["provider_payment_id"])
    tag = hashlib.sha256(TENANT.encode()).hexdigest()[:4]
    assert at_square["reference_id"] == f"{tag}{pay['id']}"

    opened = await fake(square_url, "/_fake/disputes", {"payment_id": pay["provider_payment_id"]})
    provider_dispute = opened["dispute"]["id"]
    event_id = str(uuid.uuid4())
    expected = client.expect(TENANT, derived_id("whk", "square", TENANT, event_id))
    _, status, answer = await notify(
        square_url, base_url, "dispute.created", provider_dispute, event_id=event_id
    )
    assert (status, answer.get("action")) == (200, "refresh"), answer
    found = await asyncio.wait_for(expected, 60)
    assert outcome(found) == "payment.succeeded", found.get_data()
    [related] = found.get_data()["related"]
    dispute = related["object"]
    assert (dispute["provider_dispute_id"], dispute["status"], dispute["payment_id"]) == (
        provider_dispute,
        "needs_response",
        pay["id"],
    )
    assert dispute["evidence_due_by"] is not None

    # Sent again (Square's retry): the dispute is recorded as the event has it.
    _, status, answer = await notify(square_url, base_url, "dispute.created", provider_dispute)
    assert (status, answer.get("why")) == (200, "the dispute is needs_response already"), answer

    answered = await client.command(
        "dispute.submit_evidence",
        TENANT,
        {"dispute_id": dispute["id"], "evidence": {"uncategorized_text": "delivered"}},
    )
    assert outcome(answered) == "dispute.evidence_submitted", answered.get_data()
    assert answered.get_data()["object"]["status"] == "under_review"

    # The bank decides: dispute.state.changed is read back the same way.
    await fake(square_url, f"/_fake/disputes/{provider_dispute}/decide", {"state": "WON"})
    event_id = str(uuid.uuid4())
    expected = client.expect(TENANT, derived_id("whk", "square", TENANT, event_id))
    _, status, answer = await notify(
        square_url, base_url, "dispute.state.changed", provider_dispute, event_id=event_id
    )
    assert (status, answer.get("action")) == (200, "refresh"), answer
    decided = await asyncio.wait_for(expected, 60)
    [related] = decided.get_data()["related"]
    assert (related["entity_id"], related["object"]["status"]) == (dispute["id"], "won")


async def test_an_authorisation_square_voided_is_canceled_by_its_payment_updated(
    deployed: tuple[Deployment, str], client: PaystreamClient, square_url: str
) -> None:
    _, base_url = deployed
    held = await client.command(
        "payment.create",
        TENANT,
        {
            "amount": 1200,
            "currency": "USD",
            "payment_method_token": "cnon:card-nonce-ok",
            "capture": "manual",
        },
    )
    assert outcome(held) == "payment.authorized", held.get_data()
    pay = held.get_data()["object"]
    # Not completed within its delay: Square voids it, and says so.
    await fake(square_url, f"/_fake/payments/{pay['provider_payment_id']}/lapse")
    event_id = str(uuid.uuid4())
    expected = client.expect(TENANT, derived_id("whk", "square", TENANT, event_id))
    _, status, answer = await notify(
        square_url, base_url, "payment.updated", pay["provider_payment_id"], event_id=event_id
    )
    assert (status, answer.get("action")) == (200, "refresh"), answer
    moved = await asyncio.wait_for(expected, 60)
    assert outcome(moved) == "payment.canceled", moved.get_data()
    assert moved.get_data()["previous_status"] == "authorized"
    assert moved.get_data()["object"]["status"] == "canceled"


async def test_a_refund_is_found_from_its_event_and_a_wrong_url_fails_the_signature(
    deployed: tuple[Deployment, str], client: PaystreamClient, square_url: str
) -> None:
    _, base_url = deployed
    paid = await client.command(
        "payment.create",
        TENANT,
        {"amount": 900, "currency": "USD", "payment_method_token": "cnon:card-nonce-ok"},
    )
    pay = paid.get_data()["object"]
    refunded = await client.command(
        "refund.create", TENANT, {"payment_id": pay["id"], "reason": "requested_by_customer"}
    )
    assert outcome(refunded) == "refund.succeeded", refunded.get_data()
    refund = refunded.get_data()["object"]
    # Found by the reference at the end of its reason: what paystream holds already.
    _, status, answer = await notify(
        square_url, base_url, "refund.updated", refund["provider_refund_id"]
    )
    assert (status, answer.get("why")) == (200, "the refund is succeeded already"), answer

    # Signed over another URL (the worker's own, not the subscription's): refused.
    _, status, answer = await notify(
        square_url,
        base_url,
        "payment.updated",
        pay["provider_payment_id"],
        url=f"{base_url}/webhooks/square/{TENANT}",
    )
    assert (status, answer.get("error")) == (400, "bad_signature"), answer


async def test_a_cancel_scheduled_at_square_comes_by_its_subscription_updated(
    deployed: tuple[Deployment, str], client: PaystreamClient, square_url: str
) -> None:
    """The seller schedules a subscription's cancel in Square's Dashboard: Square's
    subscription.updated names paystream's subscription in the Square subscription's
    source name, and becomes its refresh, which records the cancel at period end. One
    not made by paystream (another source name) is ignored."""
    _, base_url = deployed
    cus = await client.command("customer.create", TENANT, {"email": "hooks@shop.test"})
    customer = cus.get_data()["object"]["id"]
    card = await client.command(
        "payment_method.attach", TENANT, {"customer_id": customer, "token": "cnon:card-nonce-ok"}
    )
    made = await client.command(
        "subscription.create",
        TENANT,
        {"customer_id": customer, "payment_method_id": card.get_data()["object"]["id"],
         "amount": 700, "currency": "USD", "interval": "week"},
    )  # fmt: skip
    assert outcome(made) == "subscription.created", made.get_data()
    sub = made.get_data()["object"]
    assert sub["cancel_at_period_end"] is False
    sqid = sub["provider_subscription_id"]
    tag = hashlib.sha256(TENANT.encode()).hexdigest()[:4]
    assert (await square_subscription(square_url, sqid))["source"] == {
        "name": f"paystream [ps:{tag}:{sub['id']}]"
    }

    await square_call(square_url, f"/v2/subscriptions/{sqid}/cancel")  # (the Dashboard's)
    event_id = str(uuid.uuid4())
    expected = client.expect(TENANT, derived_id("whk", "square", TENANT, event_id))
    _, status, answer = await notify(
        square_url, base_url, "subscription.updated", sqid, event_id=event_id
    )
    assert (status, answer.get("action")) == (200, "refresh"), answer
    moved = await asyncio.wait_for(expected, 60)
    assert outcome(moved) == "subscription.updated", moved.get_data()
    assert moved.get_data()["object"]["cancel_at_period_end"] is True

    # Made at Square by another application of the seller's: not paystream's.
    other = await square_call(
        square_url,
        "/v2/subscriptions",
        {"idempotency_key": uuid.uuid4().hex, "location_id": FAKE_SQUARE_LOCATION,
         "customer_id": cus.get_data()["object"]["provider_customer_id"],
         "card_id": card.get_data()["object"]["provider_payment_method_id"],
         "plan_variation_id": (await square_subscription(square_url, sqid))["plan_variation_id"],
         "source": {"name": "Another App"}},
    )  # fmt: skip
    _, status, answer = await notify(
        square_url, base_url, "subscription.updated", other["subscription"]["id"]
    )
    assert (status, answer.get("action")) == (200, "ignored"), answer


async def square_subscription(square_url: str, subscription_id: str) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {FAKE_SQUARE_TOKEN}"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{square_url}/v2/subscriptions/{subscription_id}", headers=auth) as resp,
    ):
        return dict((await resp.json())["subscription"])


async def square_call(square_url: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """Square's API as the seller's Dashboard (or another application) calls it."""
    auth = {"Authorization": f"Bearer {FAKE_SQUARE_TOKEN}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{square_url}{path}", json=body or {}, headers=auth) as resp,
    ):
        answer = await resp.json()
        assert resp.status == 200, answer
        return answer


async def test_a_renewal_declined_then_paid_comes_by_its_invoice_events(
    deployed: tuple[Deployment, str], client: PaystreamClient, square_url: str
) -> None:
    """The fake notifies by itself, as a webhook subscription at Square does: a renewal
    declined (invoice.updated, UNPAID) makes the subscription past_due, and paid
    from Square's email (invoice.payment_made) active again, no refresh sent by anyone;
    an event saying what is recorded (the create's own invoice's and subscription's, a
    duplicate, the renewal's subscription.updated) brings no refresh; invoices of a
    subscription paystream did not make, or another tenant's, change nothing."""
    _, base_url = deployed
    hook = await fake(square_url, "/_fake/webhook_subscriptions", {
        "url": PUBLIC_URL, "signature_key": SIGNATURE_KEY,
        "post_to": f"{base_url}/webhooks/square/{TENANT}",
        "event_types": ["invoice.payment_made", "invoice.updated"]})  # fmt: skip
    try:
        await _renewal_declined_then_paid(base_url, client, square_url)
    finally:
        async with (
            aiohttp.ClientSession() as session,
            session.delete(
                f"{square_url}/_fake/webhook_subscriptions/{hook['subscription']['id']}"
            ) as resp,
        ):
            assert resp.status == 200


async def _renewal_declined_then_paid(
    base_url: str, client: PaystreamClient, square_url: str
) -> None:
    cus = await client.command("customer.create", TENANT, {"email": "renew@shop.test"})
    card = await client.command(
        "payment_method.attach",
        TENANT,
        {"customer_id": cus.get_data()["object"]["id"], "token": "cnon:card-nonce-ok"},
    )
    made = await client.command(
        "subscription.create",
        TENANT,
        {"customer_id": cus.get_data()["object"]["id"],
         "payment_method_id": card.get_data()["object"]["id"],
         "amount": 800, "currency": "USD", "interval": "week"},
    )  # fmt: skip
    assert outcome(made) == "subscription.created", made.get_data()
    sub = made.get_data()["object"]
    sqid = sub["provider_subscription_id"]
    [first_invoice] = (await square_subscription(square_url, sqid))["invoice_ids"]
    # The first charge's invoice.payment_made: sent again (503) until the create is
    # recorded, then what paystream holds: no refresh.
    first = await delivered(square_url, first_invoice, "invoice.payment_made")
    assert (first["status"], first["body"].get("why")) == (200, "the invoice is paid already")
    # So is the create's own subscription.created (review h78l L5).
    _, status, answer = await notify(square_url, base_url, "subscription.created", sqid)
    assert answer.get("why") == "the subscription is active already, as the event says", answer

    card_id = card.get_data()["object"]["provider_payment_method_id"]
    await fake(square_url, f"/_fake/cards/{card_id}/decline")
    await fake(square_url, "/_fake/clock", {"seconds": 7 * 24 * 3600 + 60})
    renewal = (await square_subscription(square_url, sqid))["invoice_ids"][0]
    failed = await delivered(square_url, renewal, "invoice.updated")
    assert (failed["status"], failed["body"].get("action")) == (200, "refresh"), failed
    now = await entity(base_url, "subscriptions", sub["id"], "past_due")
    invoice_id = derived_invoice_id(TENANT, sub["id"], renewal)
    assert now["latest_invoice_id"] == invoice_id
    held = await entity(base_url, "invoices", invoice_id, "open")
    assert held["failure_code"] == "card_declined"

    # The same news again (another invoice.updated; a replay of the same event): no
    # second refresh.
    _, status, answer = await notify(square_url, base_url, "invoice.updated", renewal)
    assert (status, answer.get("why")) == (200, "the invoice is open already"), answer
    replay = await fake(square_url, "/_fake/webhooks", {
        "type": "invoice.updated", "id": renewal,
        "event_id": failed["event_id"], "url": PUBLIC_URL, "signature_key": SIGNATURE_KEY,
        "post_to": f"{base_url}/webhooks/square/{TENANT}"})  # fmt: skip
    assert replay["body"].get("why") == "the event was received already", replay

    # Invoices of subscriptions at the tenant's location paystream did not make: another
    # application's, and one another tenant's record names (its tag in the source name).
    other_tag = hashlib.sha256(b"another-tenant").hexdigest()[:4]
    for source, why in (
        ("Another App", "not an event about a payment"),
        (f"paystream [ps:{other_tag}:{sub['id']}]", "another tenant's subscription"),
    ):
        other = await square_call(square_url, "/v2/subscriptions", {
            "idempotency_key": uuid.uuid4().hex, "location_id": FAKE_SQUARE_LOCATION,
            "customer_id": cus.get_data()["object"]["provider_customer_id"],
            "plan_variation_id": (await square_subscription(square_url, sqid))[
                "plan_variation_id"],
            "source": {"name": source}})  # fmt: skip
        [its_invoice] = other["subscription"]["invoice_ids"]
        _, status, answer = await notify(
            square_url, base_url, "invoice.scheduled_charge_failed", its_invoice
        )
        assert (status, answer.get("action")) == (200, "ignored"), answer
        assert answer["why"].startswith(why), answer
    assert (await entity(base_url, "subscriptions", sub["id"], "past_due"))["status"] == "past_due"

    # Paid from Square's email: invoice.payment_made, and the subscription is active.
    await fake(square_url, f"/_fake/invoices/{renewal}/pay")
    paid = await delivered(square_url, renewal, "invoice.payment_made")
    assert (paid["status"], paid["body"].get("action")) == (200, "refresh"), paid
    await entity(base_url, "subscriptions", sub["id"], "active")
    assert (await entity(base_url, "invoices", invoice_id, "paid"))["status"] == "paid"
    # The renewal's subscription.updated after its invoice's event: nothing new.
    _, status, answer = await notify(square_url, base_url, "subscription.updated", sqid)
    assert answer.get("why") == "the subscription is active already, as the event says", answer


async def delivered(square_url: str, invoice_id: str, event_type: str) -> dict[str, Any]:
    """The fake's own notification of ``event_type`` about the invoice, once answered 2xx
    (the fake sends it again until it is)."""
    for _ in range(600):
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{square_url}/_fake/webhook_deliveries") as resp,
        ):
            sent = (await resp.json())[FAKE_SQUARE_MERCHANT]
        done = [d for d in sent if (d["id"], d["type"]) == (invoice_id, event_type)
                and d["status"] is not None and 200 <= d["status"] < 300]  # fmt: skip
        if done:
            return dict(done[-1])
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {event_type} about {invoice_id} answered 2xx")


async def entity(base_url: str, kind: str, entity_id: str, status: str) -> dict[str, Any]:
    """The tenant's entity as the worker's view shows it, once at ``status``."""
    found: Any = None
    for _ in range(300):
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{base_url}/v1/tenants/{TENANT}/{kind}/{entity_id}") as resp,
        ):
            found = await resp.json() if resp.status == 200 else None
        if found is not None and found.get("status") == status:
            return dict(found)
        await asyncio.sleep(0.1)
    raise AssertionError(f"{kind} {entity_id} never {status}: {found}")

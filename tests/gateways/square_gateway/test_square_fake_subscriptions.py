"""The FAKE Square's subscriptions (tests/fixtures/square_fake.py), as Square's published
Subscriptions, Catalog and Invoices references have them: a plan variation made under its
key; a subscription billed one invoice a period on the fake's clock, charged to its card
on file (a declining card leaves it UNPAID); a cancel only at the billed period's end,
undone by deleting its action."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import date, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.fixtures.square_fake import (
    FAKE_SQUARE_LOCATION,
    FAKE_SQUARE_MERCHANT,
    FAKE_SQUARE_TOKEN,
    square_signature,
)

DAY = 24 * 3600


class Square:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session, self.url = session, url

    async def call(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {FAKE_SQUARE_TOKEN}"}
        async with self.session.request(
            method, f"{self.url}{path}", json=body, headers=headers
        ) as resp:
            return resp.status, await resp.json()

    async def ok(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        status, answer = await self.call(method, path, body)
        assert status == 200, answer
        return answer

    async def variation(self, cadence: str = "WEEKLY", key: str | None = None) -> str:
        key = key or uuid.uuid4().hex
        plan = await self.ok("POST", "/v2/catalog/object", {
            "idempotency_key": f"{key}-plan",
            "object": {"type": "SUBSCRIPTION_PLAN", "id": "#plan",
                       "subscription_plan_data": {"name": "p"}},
        })  # fmt: skip
        body = {
            "idempotency_key": key,
            "object": {"type": "SUBSCRIPTION_PLAN_VARIATION", "id": "#v",
                       "subscription_plan_variation_data": {
                           "name": "v", "subscription_plan_id": plan["catalog_object"]["id"],
                           "phases": [{"cadence": cadence, "ordinal": 0, "pricing": {
                               "type": "STATIC",
                               "price_money": {"amount": 100, "currency": "USD"}}}]}},
        }  # fmt: skip
        return str((await self.ok("POST", "/v2/catalog/object", body))["catalog_object"]["id"])

    async def card(self) -> tuple[str, str]:
        cus = await self.ok("POST", "/v2/customers", {"given_name": "Ada"})
        cid = cus["customer"]["id"]
        card = await self.ok("POST", "/v2/cards", {
            "idempotency_key": uuid.uuid4().hex, "source_id": "cnon:card-nonce-ok",
            "card": {"customer_id": cid}})  # fmt: skip
        return cid, card["card"]["id"]

    async def subscribe(self, cadence: str = "WEEKLY", amount: int = 700) -> dict[str, Any]:
        cid, card = await self.card()
        answer = await self.ok("POST", "/v2/subscriptions", {
            "idempotency_key": uuid.uuid4().hex, "location_id": FAKE_SQUARE_LOCATION,
            "plan_variation_id": await self.variation(cadence), "customer_id": cid,
            "card_id": card, "price_override_money": {"amount": amount, "currency": "USD"},
        })  # fmt: skip
        return dict(answer["subscription"])

    async def invoices(self, sub: dict[str, Any]) -> list[dict[str, Any]]:
        where = {"location_ids": [FAKE_SQUARE_LOCATION], "customer_ids": [sub["customer_id"]]}
        answer = await self.ok("POST", "/v2/invoices/search", {"query": {"filter": where}})
        return [i for i in answer.get("invoices", []) if i["subscription_id"] == sub["id"]]

    async def advance(self, seconds: int) -> None:
        async with self.session.post(f"{self.url}/_fake/clock", json={"seconds": seconds}) as r:
            assert r.status == 200, await r.text()


@pytest.fixture
async def square(square_url: str) -> AsyncIterator[Square]:
    async with aiohttp.ClientSession() as session:
        yield Square(session, square_url)


async def test_a_plan_variation_is_made_once_under_its_key(square: Square) -> None:
    key = uuid.uuid4().hex
    assert await square.variation(key=key) == await square.variation(key=key)
    status, answer = await square.call("POST", "/v2/catalog/object", {
        "idempotency_key": uuid.uuid4().hex,
        "object": {"type": "SUBSCRIPTION_PLAN_VARIATION", "id": "#v",
                   "subscription_plan_variation_data": {"name": "v", "phases": []}}})  # fmt: skip
    assert status == 404, answer  # (no plan named)


async def test_each_period_is_billed_to_the_card_on_file_on_the_fakes_clock(
    square: Square,
) -> None:
    sub = await square.subscribe(amount=700)
    assert sub["status"] == "ACTIVE" and len(sub["invoice_ids"]) == 1
    (first,) = await square.invoices(sub)
    assert first["status"] == "PAID"
    assert first["payment_requests"][0]["computed_amount_money"]["amount"] == 700
    assert first["sale_or_service_date"] == sub["start_date"]
    assert sub["charged_through_date"] > sub["start_date"]
    orders = await square.ok(
        "POST", "/v2/orders/batch-retrieve", {"order_ids": [first["order_id"]]}
    )
    assert orders["orders"][0]["tenders"][0]["payment_id"]
    await square.ok("PUT", f"/v2/subscriptions/{sub['id']}", {
        "subscription": {"price_override_money": {"amount": 900, "currency": "USD"}}})  # fmt: skip
    await square.advance(7 * DAY + 60)
    newest, older = await square.invoices(sub)
    assert older["id"] == first["id"]
    # (charged_through_date is the billed period's last day: the next is billed the day after)
    after = date.fromisoformat(sub["charged_through_date"]) + timedelta(days=1)
    assert (newest["status"], newest["sale_or_service_date"]) == ("PAID", after.isoformat())
    assert newest["payment_requests"][0]["computed_amount_money"]["amount"] == 900


async def test_a_declining_card_leaves_the_invoice_unpaid(square: Square) -> None:
    sub = await square.subscribe()
    async with square.session.post(
        f"{square.url}/_fake/cards/{sub['card_id']}/decline", json={}
    ) as resp:
        assert resp.status == 200
    await square.advance(7 * DAY + 60)
    newest, first = await square.invoices(sub)
    assert (newest["status"], first["status"]) == ("UNPAID", "PAID")
    now = await square.ok("GET", f"/v2/subscriptions/{sub['id']}")
    assert now["subscription"]["status"] == "ACTIVE"  # (Square bills on: no dunning here)


async def test_a_cancel_waits_for_the_periods_end_and_is_undone_by_its_action(
    square: Square,
) -> None:
    sub = await square.subscribe()
    canceled = await square.ok("POST", f"/v2/subscriptions/{sub['id']}/cancel")
    (action,) = canceled["actions"]
    assert action["type"] == "CANCEL"
    assert canceled["subscription"]["canceled_date"] == sub["charged_through_date"]
    assert canceled["subscription"]["status"] == "ACTIVE"
    # A second cancel is refused (Square schedules one), the action listed on a read.
    status, _ = await square.call("POST", f"/v2/subscriptions/{sub['id']}/cancel")
    assert status == 400
    read = await square.ok("GET", f"/v2/subscriptions/{sub['id']}?include=actions")
    assert [a["id"] for a in read["subscription"]["actions"]] == [action["id"]]
    resumed = await square.ok("DELETE", f"/v2/subscriptions/{sub['id']}/actions/{action['id']}")
    assert "canceled_date" not in resumed["subscription"]
    await square.ok("POST", f"/v2/subscriptions/{sub['id']}/cancel")
    await square.advance(7 * DAY + 60)
    ended = await square.ok("GET", f"/v2/subscriptions/{sub['id']}")
    assert ended["subscription"]["status"] == "CANCELED"
    assert len(await square.invoices(sub)) == 1  # (nothing billed past the cancel)
    status, _ = await square.call("PUT", f"/v2/subscriptions/{sub['id']}", {"subscription": {}})
    assert status == 400


async def test_its_billing_notifies_a_webhook_subscription_signed_and_retried(
    square: Square,
) -> None:
    """A webhook subscription hears the fake's billing as Square's invoice events: the
    first period charged (invoice.payment_made), a renewal declined (invoice.updated, the
    invoice UNPAID: Square sends no invoice.scheduled_charge_failed for a Subscriptions
    API invoice, that event is its recurring invoices'), paid from the email
    (invoice.payment_made, PAID), each signed over the subscription's URL and sent again
    until answered 2xx."""
    heard: list[dict[str, Any]] = []
    answers = iter([503])  # (the first notification is refused once: sent again)
    url, key = "https://pay.example.com/webhooks/square/t", "sq-fake-hook-key"

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        signed = request.headers.get("x-square-hmacsha256-signature")
        assert signed == square_signature(url, body, key)
        status = next(answers, 200)
        heard.append({**json.loads(body), "answered": status})
        return web.json_response({}, status=status)

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    hook = await square.ok("POST", "/_fake/webhook_subscriptions", {
        "url": url, "signature_key": key, "post_to": f"http://127.0.0.1:{port}/hook"})  # fmt: skip
    try:
        sub = await square.subscribe()

        async def of_sub(n: int) -> list[tuple[str, str, int]]:
            for _ in range(200):
                invoices = [(e, e["data"]["object"]["invoice"]) for e in heard]
                mine = [(e["type"], i["status"], e["answered"])
                        for e, i in invoices if i["subscription_id"] == sub["id"]]  # fmt: skip
                if len(mine) >= n:
                    return mine
                await asyncio.sleep(0.05)
            raise AssertionError(heard)

        assert await of_sub(2) == [
            ("invoice.payment_made", "PAID", 503),
            ("invoice.payment_made", "PAID", 200),
        ]
        first = heard[0]
        assert (first["data"]["type"], first["location_id"]) == ("invoice", FAKE_SQUARE_LOCATION)
        assert heard[1]["event_id"] == first["event_id"]  # (the same event, sent again)
        async with square.session.post(
            f"{square.url}/_fake/cards/{sub['card_id']}/decline", json={}
        ) as resp:
            assert resp.status == 200
        await square.advance(7 * DAY + 60)
        assert (await of_sub(3))[2] == ("invoice.updated", "UNPAID", 200)
        newest, _ = await square.invoices(sub)
        async with square.session.post(f"{square.url}/_fake/invoices/{newest['id']}/pay") as r:
            assert r.status == 200
        assert (await of_sub(4))[3] == ("invoice.payment_made", "PAID", 200)
        assert "invoice.scheduled_charge_failed" not in [e["type"] for e in heard]
        async with square.session.get(f"{square.url}/_fake/webhook_deliveries") as r:
            deliveries = (await r.json())[FAKE_SQUARE_MERCHANT]
        assert [d["answers"] for d in deliveries if d["event_id"] == first["event_id"]] == [
            [503, 200]
        ]
    finally:
        async with square.session.delete(
            f"{square.url}/_fake/webhook_subscriptions/{hook['subscription']['id']}"
        ) as r:
            assert r.status == 200
        await runner.cleanup()


async def test_a_removed_webhook_subscription_sends_nothing_more(square: Square) -> None:
    """DELETE /_fake/webhook_subscriptions/{id} stops its notifications, those still being
    sent again too (a test's hook must not post into the next test's deployment)."""
    tries: list[str] = []

    async def refuse(request: web.Request) -> web.Response:
        tries.append(json.loads(await request.read())["event_id"])
        return web.json_response({}, status=503)

    app = web.Application()
    app.router.add_post("/hook", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        hook = await square.ok("POST", "/_fake/webhook_subscriptions", {
            "url": "https://pay.example.com/h", "signature_key": "k",
            "post_to": f"http://127.0.0.1:{port}/hook"})  # fmt: skip
        await square.subscribe()
        for _ in range(100):
            if tries:
                break
            await asyncio.sleep(0.05)
        assert tries, "the first invoice's notification was never sent"
        async with square.session.delete(
            f"{square.url}/_fake/webhook_subscriptions/{hook['subscription']['id']}"
        ) as resp:
            assert resp.status == 200
        sent = len(tries)
        await asyncio.sleep(1.5)  # (the fake's next tries come within 0.25, 0.5 s)
        assert len(tries) == sent, "a removed webhook subscription's notification was sent again"
    finally:
        await runner.cleanup()

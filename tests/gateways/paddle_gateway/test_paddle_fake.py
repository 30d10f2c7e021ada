"""The tests' FAKE Paddle (tests/fixtures/paddle_fake.py) holds to Paddle's published
reference where a looser fake would hide a gateway bug: no idempotency keys (a create sent
again makes another), one email per customer, archived never deleted, drafts that cannot
be canceled, refunds pending approval that block the next, pagination and date filters,
Paddle's error shape and signatures. Its answers are read by Paddle's own SDK's entities
(paddle-python-sdk), which fail on a field missing or of another type."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from paddle_billing.Entities.Adjustment import Adjustment
from paddle_billing.Entities.Customer import Customer
from paddle_billing.Entities.Subscription import Subscription
from paddle_billing.Entities.Transaction import Transaction

from tests.fixtures.paddle_fake import (
    FAKE_PADDLE_API_KEY,
    FAKE_PADDLE_NO_LINK_API_KEY,
    FAKE_PADDLE_OTHER_API_KEY,
    paddle_signature,
)


class Paddle:
    """Paddle's HTTP API, as one seller's key sends it."""

    def __init__(self, session: aiohttp.ClientSession, url: str, key: str) -> None:
        self.session, self.url, self.key = session, url, key

    async def call(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        async with self.session.request(
            method, f"{self.url}{path}", json=body, headers=headers
        ) as resp:
            return resp.status, await resp.json()

    async def transaction(self, amount: str = "1000", **fields: Any) -> dict[str, Any]:
        status, body = await self.call(
            "POST",
            "/transactions",
            {
                "items": [
                    {
                        "quantity": 1,
                        "price": {
                            "description": "one payment",
                            "tax_mode": "internal",
                            "unit_price": {"amount": amount, "currency_code": "USD"},
                            "product": {"name": "Payment", "tax_category": "standard"},
                        },
                    }
                ],
                "collection_mode": "automatic",
                **fields,
            },
        )
        assert status == 201, body
        return body["data"]

    async def paid(self, amount: str = "1000") -> dict[str, Any]:
        txn = await self.transaction(amount)
        async with self.session.post(
            f"{self.url}/_fake/transactions/{txn['id']}/checkout", json={"outcome": "captured"}
        ) as resp:
            assert resp.status == 200
            return dict((await resp.json())["data"])


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def paddle(http: aiohttp.ClientSession, paddle_url: str) -> Paddle:
    return Paddle(http, paddle_url, FAKE_PADDLE_API_KEY)


def _error(body: dict[str, Any], code: str) -> None:
    error = body["error"]
    assert error["code"] == code, body
    assert error["type"] and error["detail"] and error["documentation_url"].endswith(code)
    assert body["meta"]["request_id"]


async def test_answers_read_as_paddles_sdk_reads_them(paddle: Paddle) -> None:
    status, body = await paddle.call("POST", "/customers", {"email": f"{uuid.uuid4()}@x.io"})
    assert status == 201 and body["data"]["id"].startswith("ctm_")
    assert len(body["data"]["id"]) == len("ctm_") + 26
    Customer.from_dict(body["data"])
    txn = await paddle.transaction(customer_id=body["data"]["id"])
    Transaction.from_dict(txn)
    assert txn["status"] == "draft" and txn["checkout"]["url"].endswith(f"?_ptxn={txn['id']}")
    assert txn["details"]["totals"]["grand_total"] == "1000"
    paid = await paddle.paid()
    Transaction.from_dict(paid)
    assert paid["status"] == "completed" and paid["payments"][0]["status"] == "captured"
    status, body = await paddle.call(
        "POST",
        "/adjustments",
        {"action": "refund", "type": "full", "transaction_id": paid["id"], "reason": "r"},
    )
    assert status == 201, body
    Adjustment.from_dict(body["data"])
    assert body["data"]["status"] == "pending_approval"


async def test_no_idempotency_a_create_sent_again_makes_another(paddle: Paddle) -> None:
    first, second = await paddle.transaction(), await paddle.transaction()
    assert first["id"] != second["id"] and first["id"] < second["id"]  # (ids sort as made)


async def test_an_email_is_one_customer_and_archived_is_kept(paddle: Paddle) -> None:
    email = f"{uuid.uuid4()}@example.com"
    status, made = await paddle.call("POST", "/customers", {"email": email})
    assert status == 201
    cid = made["data"]["id"]
    status, body = await paddle.call("POST", "/customers", {"email": email.upper()})
    assert status == 409
    _error(body, "customer_already_exists")
    assert cid in body["error"]["detail"]
    status, body = await paddle.call("PATCH", f"/customers/{cid}", {"status": "archived"})
    assert (status, body["data"]["status"]) == (200, "archived")
    status, body = await paddle.call("GET", f"/customers?email={email}")
    assert [c["id"] for c in body["data"]] == [cid]  # (archived, still found by email)
    status, body = await paddle.call("POST", "/customers", {"email": email})
    assert status == 409


async def test_a_draft_cannot_be_canceled_a_ready_one_can(paddle: Paddle) -> None:
    txn = await paddle.transaction()
    status, body = await paddle.call("PATCH", f"/transactions/{txn['id']}", {"status": "canceled"})
    assert status == 400
    _error(body, "transaction_invalid_status_change")
    async with paddle.session.post(
        f"{paddle.url}/_fake/transactions/{txn['id']}/checkout", json={"outcome": "declined"}
    ) as resp:
        failed = (await resp.json())["data"]
    assert failed["status"] == "ready" and failed["payments"][0]["error_code"] == "declined"
    status, body = await paddle.call("PATCH", f"/transactions/{txn['id']}", {"status": "canceled"})
    assert (status, body["data"]["status"]) == (200, "canceled")


async def test_a_pending_refund_blocks_the_next_and_none_goes_past_what_is_left(
    paddle: Paddle,
) -> None:
    paid = await paddle.paid("2500")
    item = paid["details"]["line_items"][0]["id"]
    refund = {
        "action": "refund",
        "transaction_id": paid["id"],
        "reason": "r",
        "type": "partial",
        "items": [{"item_id": item, "type": "partial", "amount": "1000"}],
    }
    status, first = await paddle.call("POST", "/adjustments", refund)
    assert status == 201
    status, body = await paddle.call("POST", "/adjustments", refund)
    assert status == 400
    _error(body, "adjustment_pending_refund_request")
    async with paddle.session.post(
        f"{paddle.url}/_fake/adjustments/{first['data']['id']}/decide", json={"status": "approved"}
    ) as resp:
        assert resp.status == 200
    over = {**refund, "items": [{"item_id": item, "type": "partial", "amount": "1501"}]}
    status, body = await paddle.call("POST", "/adjustments", over)
    _error(body, "adjustment_total_amount_above_remaining_allowed")
    status, body = await paddle.call("GET", f"/adjustments?transaction_id={paid['id']}")
    assert [a["id"] for a in body["data"]] == [first["data"]["id"]]
    unpaid = await paddle.transaction()
    status, body = await paddle.call(
        "POST", "/adjustments", {**refund, "transaction_id": unpaid["id"]}
    )
    _error(body, "adjustment_transaction_invalid_status_for_refund")


async def test_lists_page_and_filter_by_creation_time(paddle: Paddle) -> None:
    customer = await paddle.call("POST", "/customers", {"email": f"{uuid.uuid4()}@x.io"})
    cid = customer[1]["data"]["id"]
    made = [(await paddle.transaction(customer_id=cid))["id"] for _ in range(3)]
    _, body = await paddle.call(
        "GET", f"/transactions?customer_id={cid}&order_by=created_at[DESC]&per_page=2"
    )
    assert [t["id"] for t in body["data"]] == made[:0:-1]
    page = body["meta"]["pagination"]
    assert page["has_more"] and page["per_page"] == 2
    async with paddle.session.get(
        page["next"], headers={"Authorization": f"Bearer {paddle.key}"}
    ) as resp:
        rest = await resp.json()
    assert [t["id"] for t in rest["data"]] == made[:1]
    assert not rest["meta"]["pagination"]["has_more"]
    _, second = await paddle.call("GET", f"/transactions?id={made[1]}")
    since = second["data"][0]["created_at"]
    _, body = await paddle.call("GET", f"/transactions?customer_id={cid}&created_at[GTE]={since}")
    assert {t["id"] for t in body["data"]} == set(made[1:])
    _, body = await paddle.call("GET", "/transactions?per_page=500")
    assert body["meta"]["pagination"]["per_page"] == 30  # (transactions' most)


async def test_keys_sellers_and_a_seller_without_a_payment_link(
    http: aiohttp.ClientSession, paddle_url: str, paddle: Paddle
) -> None:
    txn = await paddle.transaction()
    other = Paddle(http, paddle_url, FAKE_PADDLE_OTHER_API_KEY)
    status, body = await other.call("GET", f"/transactions/{txn['id']}")
    assert status == 404
    _error(body, "not_found")
    status, body = await Paddle(http, paddle_url, "pdl_sdbx_apikey_nope").call("GET", "/customers")
    assert status == 403
    _error(body, "invalid_token")
    status, body = await Paddle(http, paddle_url, "").call("GET", "/customers")
    _error(body, "authentication_missing")
    unlinked = Paddle(http, paddle_url, FAKE_PADDLE_NO_LINK_API_KEY)
    status, body = await unlinked.call(
        "POST",
        "/transactions",
        {
            "items": [
                {
                    "quantity": 1,
                    "price": {
                        "description": "d",
                        "unit_price": {"amount": "100", "currency_code": "USD"},
                        "product": {"name": "p", "tax_category": "standard"},
                    },
                }
            ]
        },
    )
    assert status == 400
    _error(body, "transaction_default_checkout_url_not_set")


def test_its_signature_is_paddles_documented_one() -> None:
    body = b'{"event_id":"evt_1"}'
    header = paddle_signature(body, "pdl_ntfset_secret", ts=1700000000)
    expected = hmac.new(b"pdl_ntfset_secret", b"1700000000:" + body, hashlib.sha256).hexdigest()
    assert header == f"ts=1700000000;h1={expected}"


async def test_restated_totals_keep_paddles_shapes(paddle: Paddle) -> None:
    """TEST-ONLY /_fake/restate: other totals, in the shapes the SDK reads (a discount)."""
    paid = await paddle.paid("1000")
    status, body = await paddle.call("POST", "/_fake/restate", {"id": paid["id"], "total": "900"})
    assert status == 200, body
    Transaction.from_dict(body["data"])
    totals = body["data"]["details"]["totals"]
    assert (totals["grand_total"], totals["discount"], totals["subtotal"]) == ("900", "100", "1000")
    assert body["data"]["items"][0]["price"]["unit_price"]["amount"] == "1000"  # (as asked)
    status, body = await paddle.call(
        "POST",
        "/adjustments",
        {"action": "refund", "type": "full", "transaction_id": paid["id"], "reason": "r"},
    )
    assert status == 201, body
    status, body = await paddle.call(
        "POST", "/_fake/restate", {"id": body["data"]["id"], "total": "5", "currency_code": "EUR"}
    )
    assert status == 200, body
    Adjustment.from_dict(body["data"])
    assert body["data"]["totals"]["total"] == "5" and body["data"]["currency_code"] == "EUR"


async def test_a_recurring_checkout_makes_a_subscription_paddles_sdk_reads(
    paddle: Paddle,
) -> None:
    txn = await paddle.transaction(
        custom_data={"paystream_subscription": "acme:sub_1"},
        items=[
            {
                "quantity": 1,
                "price": {
                    "description": "monthly",
                    "tax_mode": "internal",
                    "billing_cycle": {"interval": "month", "frequency": 1},
                    "unit_price": {"amount": "1200", "currency_code": "USD"},
                    "product": {"name": "Plan", "tax_category": "standard"},
                },
            }
        ],
    )
    assert txn["subscription_id"] is None
    async with paddle.session.post(f"{paddle.url}/_fake/transactions/{txn['id']}/checkout") as r:
        paid = (await r.json())["data"]
    Transaction.from_dict(paid)
    status, body = await paddle.call("GET", f"/subscriptions/{paid['subscription_id']}")
    assert status == 200, body
    sub = body["data"]
    Subscription.from_dict(sub)
    assert sub["status"] == "active" and sub["custom_data"] == txn["custom_data"]
    # PATCH items: proration_billing_mode is required (Paddle's error code).
    item = {"quantity": 1, "price": {**sub["items"][0]["price"], "product_id": "pro_x"}}
    status, body = await paddle.call("PATCH", f"/subscriptions/{sub['id']}", {"items": [item]})
    _error(body, "subscription_items_update_missing_proration_billing_mode")
    # A renewal (the fake's clock): a transaction of the subscription, custom_data copied.
    async with paddle.session.post(
        f"{paddle.url}/_fake/subscriptions/{sub['id']}/renew", json={"outcome": "declined"}
    ) as r:
        assert (await r.json())["data"]["status"] == "past_due"
    status, body = await paddle.call("GET", f"/transactions?subscription_id={sub['id']}")
    renewal = next(t for t in body["data"] if t["origin"] == "subscription_recurring")
    Transaction.from_dict(renewal)
    assert renewal["status"] == "past_due" and renewal["custom_data"] == txn["custom_data"]
    status, body = await paddle.call(
        "POST", f"/subscriptions/{sub['id']}/cancel", {"effective_from": "immediately"}
    )
    Subscription.from_dict(body["data"])
    assert body["data"]["status"] == "canceled" and body["data"]["canceled_at"]
    # A trial without a billing cycle: Paddle's error.
    status, body = await paddle.call(
        "POST",
        "/transactions",
        {
            "items": [
                {
                    "quantity": 1,
                    "price": {
                        "description": "d",
                        "trial_period": {"interval": "day", "frequency": 7},
                        "unit_price": {"amount": "1", "currency_code": "USD"},
                        "product": {"name": "P", "tax_category": "standard"},
                    },
                }
            ]
        },
    )
    _error(body, "price_trial_period_requires_billing_cycle")


async def test_a_free_trial_checkout_charges_nothing_and_trials_paddles_sdk_reads(
    paddle: Paddle,
) -> None:
    """A price's trial_period: zero charge at checkout, the subscription trialing until
    its next_billed_at (the trial's end), then billed and active (Paddle's trials)."""
    price = {
        "description": "monthly",
        "tax_mode": "internal",
        "billing_cycle": {"interval": "month", "frequency": 1},
        "trial_period": {"interval": "day", "frequency": 10},
        "unit_price": {"amount": "1200", "currency_code": "USD"},
        "product": {"name": "Plan", "tax_category": "standard"},
    }
    txn = await paddle.transaction(items=[{"quantity": 1, "price": price}])
    Transaction.from_dict(txn)
    assert txn["details"]["totals"]["grand_total"] == "0"
    assert txn["items"][0]["price"]["trial_period"] == {"interval": "day", "frequency": 10}
    async with paddle.session.post(f"{paddle.url}/_fake/transactions/{txn['id']}/checkout") as r:
        paid = (await r.json())["data"]
    Transaction.from_dict(paid)
    assert paid["status"] == "completed" and paid["payments"][0]["amount"] == "0"
    status, body = await paddle.call("GET", f"/subscriptions/{paid['subscription_id']}")
    sub = body["data"]
    Subscription.from_dict(sub)
    trial = sub["current_billing_period"]
    assert sub["status"] == "trialing" and sub["first_billed_at"] is None
    assert sub["next_billed_at"] == trial["ends_at"] == sub["items"][0]["trial_dates"]["ends_at"]
    assert paid["billing_period"] == trial
    async with paddle.session.post(
        f"{paddle.url}/_fake/subscriptions/{sub['id']}/renew", json={"outcome": "captured"}
    ) as r:
        active = (await r.json())["data"]
    Subscription.from_dict(active)
    assert active["status"] == "active"
    assert active["current_billing_period"]["starts_at"] == trial["ends_at"]
    status, body = await paddle.call("GET", f"/transactions?subscription_id={sub['id']}")
    assert status == 200, body
    first = next(t for t in body["data"] if t["origin"] == "subscription_recurring")
    assert first["details"]["totals"]["grand_total"] == "1200"
    # A trial_period as Paddle's price errors name them.
    for trial_period, code in (
        ({"interval": "day"}, "price_trial_period_missing_fields"),
        ({"interval": "day", "frequency": 0}, "price_trial_period_frequency_below_1"),
    ):
        _, body = await paddle.call(
            "POST",
            "/transactions",
            {"items": [{"quantity": 1, "price": {**price, "trial_period": trial_period}}]},
        )
        _error(body, code)

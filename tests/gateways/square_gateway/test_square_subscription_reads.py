"""Square subscriptions' reads and plan variations (review h78f F8, F6): a subscription's
invoices are the ones its ``invoice_ids`` name, however many others its customer has; a
plan variation deleted at Square is made again, once, by the next create."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp

from paystream.gateways.base import InvoiceStatus, SubscriptionStatus
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.square.gateway import SquareGateway
from paystream.money import Money
from tests.fixtures.square_fake import (
    FAKE_SQUARE_LOCATION,
    FAKE_SQUARE_LOCATION_2,
    FAKE_SQUARE_TOKEN,
)
from tests.gateways.harness import advance_square_clock
from tests.gateways.square_gateway.test_square_subscriptions import (
    DAY,
    card_of,
    declining,
    fake,
    plan,
    read,
    subscribe,
)
from tests.gateways.square_gateway.wire import Wire, gateway_at, key, wired

__all__ = ["wired"]

# More of the customer's invoices than the five pages of 200 the search once read.
_OTHERS = 1001


async def _bill_others(square_url: str, variation: str, customer: str, card: str) -> None:
    """``_OTHERS`` ANNUAL subscriptions of ``customer`` made at the fake (each billed one
    invoice now), each canceled at its year's end: the session's later clock moves bill
    them nothing more."""
    auth = {"Authorization": f"Bearer {FAKE_SQUARE_TOKEN}"}
    async with aiohttp.ClientSession(headers=auth) as session:

        async def one() -> None:
            body = {
                "idempotency_key": uuid.uuid4().hex,
                "location_id": FAKE_SQUARE_LOCATION,
                "plan_variation_id": variation,
                "customer_id": customer,
                "card_id": card,
                "price_override_money": {"amount": 100, "currency": "USD"},
            }
            async with session.post(f"{square_url}/v2/subscriptions", json=body) as resp:
                assert resp.status == 200, await resp.text()
                sid = (await resp.json())["subscription"]["id"]
            async with session.post(f"{square_url}/v2/subscriptions/{sid}/cancel", json={}) as r:
                assert r.status == 200, await r.text()

        for start in range(0, _OTHERS, 50):
            await asyncio.gather(*(one() for _ in range(min(50, _OTHERS - start))))


async def test_a_past_due_subscription_reads_past_due_past_its_customers_other_invoices(
    wired: tuple[SquareGateway, Wire], square_url: str
) -> None:
    """F8: the customer has 1,001 invoices of other subscriptions newer than this one's
    declined renewal. SearchInvoices (location and customer only) read five pages of 200
    and never reached it: read `active`. Now: one page searched, this one's two read
    by id (GetInvoice), past_due."""
    gw, wire = wired
    customer, card = await declining(gw, square_url)
    await fake(square_url, "POST", f"/_fake/cards/{card}/decline", {"declining": False})
    sub = await gw.create_subscription(plan(customer, card), idempotency_key=key())
    await fake(square_url, "POST", f"/_fake/cards/{card}/decline", {})
    await advance_square_clock(square_url, 7 * DAY + 60)
    _, other_card = await card_of(gw, customer)
    annual = await gw._plan_variation("USD", "ANNUAL")
    await _bill_others(square_url, annual, customer, other_card)
    wire.sent.clear()
    renewed = await read(gw, sub)
    assert renewed.status is SubscriptionStatus.PAST_DUE
    assert [i.status for i in renewed.invoices] == [InvoiceStatus.OPEN, InvoiceStatus.PAID]
    paths = [path for path, _ in wire.sent]
    searches = [p for p in paths if p == "/v2/invoices/search"]
    gets = [p for p in paths if p.startswith("/v2/invoices/inv:")]
    # GetSubscription, one SearchInvoices page, GetInvoice of each of its two,
    # BatchRetrieveOrders (the paid one's payment); its plan variation known already
    assert (len(searches), len(gets), len(paths)) == (1, 2, 5), paths


async def test_a_subscriptions_few_invoices_are_read_in_one_search(
    wired: tuple[SquareGateway, Wire], square_url: str
) -> None:
    """A customer of few invoices: one page of SearchInvoices holds the subscription's
    (no GetInvoice); a subscription of one invoice: one GetInvoice (no search)."""
    gw, wire = wired
    sub = await subscribe(gw)
    wire.sent.clear()
    await read(gw, sub)
    paths = [path for path, _ in wire.sent]
    assert [p for p in paths if p.startswith("/v2/invoices")] == [
        f"/v2/invoices/{(await _held(square_url, sub.provider_subscription_id))[0]}"
    ]
    await advance_square_clock(square_url, 7 * DAY + 60)
    wire.sent.clear()
    renewed = await read(gw, sub)
    assert len(renewed.invoices) == 2
    paths = [path for path, _ in wire.sent]
    assert [p for p in paths if p.startswith("/v2/invoices")] == ["/v2/invoices/search"]


async def _held(square_url: str, sid: str) -> list[str]:
    """The subscription's invoice_ids as the fake holds them (newest first)."""
    return list(
        (await fake(square_url, "GET", f"/v2/subscriptions/{sid}"))["subscription"]["invoice_ids"]
    )


async def test_a_plan_deleted_at_square_is_made_again_by_the_next_create(
    square_url: str,
) -> None:
    """F6: the plan deleted in Square's Dashboard (its variations with it): the worker's
    cached variation is not found; forgotten, a new one is made once and the create sent
    again under its key. A worker started since (its upsert keys replaying the deleted
    variation) makes the same new one, not another."""
    first = gateway_at(square_url)
    # (JPY every six months: a pair of its own, the session's other tests keep theirs)
    before = await first.create_subscription(
        plan(*await card_of(first), interval="month", interval_count=6, amount=_jpy(500)),
        idempotency_key=key(),
    )
    old = await _variation_of(square_url, before.provider_subscription_id)
    plan_id = (await first._variation(old))["subscription_plan_variation_data"][
        "subscription_plan_id"
    ]
    await fake(square_url, "DELETE", f"/v2/catalog/object/{plan_id}")
    after = await first.create_subscription(
        plan(*await card_of(first), interval="month", interval_count=6, amount=_jpy(700)),
        idempotency_key=key(),
    )
    assert after.status is SubscriptionStatus.ACTIVE and after.amount == _jpy(700)
    new = await _variation_of(square_url, after.provider_subscription_id)
    assert new != old
    restarted = gateway_at(square_url)
    again = await restarted.create_subscription(
        plan(*await card_of(restarted), interval="month", interval_count=6, amount=_jpy(900)),
        idempotency_key=key(),
    )
    assert await _variation_of(square_url, again.provider_subscription_id) == new
    await first.aclose()
    await restarted.aclose()


def _jpy(amount: int) -> Money:
    return Money(amount=amount, currency="JPY")


async def _variation_of(square_url: str, sid: str) -> str:
    held = await fake(square_url, "GET", f"/v2/subscriptions/{sid}")
    return str(held["subscription"]["plan_variation_id"])


async def test_an_invoice_events_subscription_is_read_at_the_tenants_location_only(
    square_url: str,
) -> None:
    """read_subscription (web/webhooks.py's read of an invoice event's subscription, for
    its source name): the tenant's location's subscription as Square answers it;
    another location's (another tenant on the seller) reads as not found."""
    here, there = gateway_at(square_url), gateway_at(square_url, FAKE_SQUARE_LOCATION_2)
    try:
        made = await subscribe(here)
        found = await here.read_subscription(made.provider_subscription_id)
        assert (found["id"], found["location_id"]) == (
            made.provider_subscription_id,
            FAKE_SQUARE_LOCATION,
        )
        try:
            await there.read_subscription(made.provider_subscription_id)
        except GatewayError as exc:
            assert exc.code is ErrorCode.NOT_FOUND
        else:
            raise AssertionError("another location's subscription was read")
    finally:
        await here.aclose()
        await there.aclose()

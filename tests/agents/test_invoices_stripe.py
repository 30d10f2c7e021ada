"""A Stripe tenant's one-off invoice its customer's credit balance covers, through the
pipeline against localstripe (tests/fixtures/localstripe_server.py applies a customer's
``balance`` as Stripe does, when an invoice is finalized): Stripe marks it paid as it is
finalized, and paystream answers invoice.paid, the status it reached (review L1), not
invoice.finalized; nothing is charged, and a pay of it is refused."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from pydantic import SecretStr

from tests.agents.conftest import running_harness
from tests.agents.harness import Harness, data, kind
from tests.fixtures.localstripe import LOCALSTRIPE_API_KEY

pytestmark = pytest.mark.asyncio

AUTH = {"Authorization": f"Bearer {LOCALSTRIPE_API_KEY}"}


@pytest_asyncio.fixture
async def sh(redis_url: str, localstripe_url: str) -> AsyncIterator[Harness]:
    async with running_harness(redis_url, stripe_api_base=localstripe_url) as h:
        h.pool._open_secret = lambda tenant, name: SecretStr(LOCALSTRIPE_API_KEY)
        yield h


async def _made(h: Harness, t: str, command_type: str, body: dict[str, Any]) -> dict[str, Any]:
    out = await h.send(command_type, t, body)
    assert not kind(out).endswith("rejected"), data(out)
    return dict(data(out)["object"])


async def _credited_draft(sh: Harness, url: str, t: str, credit: int) -> dict[str, Any]:
    """A draft of 45.00 USD (two lines), its customer holding ``credit`` on their Stripe
    balance (set at Stripe, as in its dashboard: a negative balance is a credit)."""
    cus = await _made(sh, t, "customer.create", {"email": "credit@example.com"})
    pm = await _made(
        sh, t, "payment_method.attach", {"customer_id": cus["id"], "token": "pm_card_visa"}
    )
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{url}/v1/customers/{cus['provider_customer_id']}",
            data={"balance": str(-credit)},
            headers=AUTH,
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
    lines = [
        {"description": "Hours", "amount": 1500, "quantity": 2},
        {"description": "Fee", "amount": 1500},
    ]
    body = {"customer_id": cus["id"], "payment_method_id": pm["id"], "currency": "USD",
            "line_items": lines}  # fmt: skip
    return await _made(sh, t, "invoice.create", body)


async def test_an_invoice_its_credit_covers_is_answered_paid_as_it_is_finalized(
    sh: Harness, localstripe_url: str
) -> None:
    t = sh.add_tenant(
        gateway="stripe",
        secrets={"api_key": "v1:x"},
        limits={"daily_payment_volume": {"USD": 100_000}},
    )
    draft = await _credited_draft(sh, localstripe_url, t, 10_000)
    out = await sh.send("invoice.finalize", t, {"invoice_id": draft["id"]})
    assert kind(out) == "invoice.paid", data(out)
    assert data(out)["previous_status"] == "draft"
    obj = data(out)["object"]
    assert (obj["status"], obj["amount"]) == ("paid", 0), obj
    pay = await sh.send("invoice.pay", t, {"invoice_id": draft["id"]})
    assert kind(pay) == "command.rejected" and "already paid" in data(pay)["message"]
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{localstripe_url}/v1/invoices/{obj['provider_invoice_id']}", headers=AUTH
        ) as resp,  # fmt: skip
    ):
        held = await resp.json()
    assert held["status"] == "paid" and not held.get("payment_intent"), held
    state = sh.processor.limits.table[f"{t}:limits"]
    assert not (state.get("volume") or {}).get("USD") and not state.get("held"), state


async def test_an_invoice_its_credit_covers_in_part_is_finalized_open(
    sh: Harness, localstripe_url: str
) -> None:
    """(The credit short of it: open, the rest due; answered invoice.finalized.)"""
    t = sh.add_tenant(gateway="stripe", secrets={"api_key": "v1:x"})
    draft = await _credited_draft(sh, localstripe_url, t, 1_000)
    out = await sh.send("invoice.finalize", t, {"invoice_id": draft["id"]})
    assert kind(out) == "invoice.finalized", data(out)
    assert data(out)["object"]["status"] == "open"


async def _balance(url: str, provider_customer_id: str) -> int:
    """The customer's Stripe balance (negative: a credit; localstripe keeps its opposite
    as ``account_balance``)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/v1/customers/{provider_customer_id}", headers=AUTH) as resp,
    ):
        return -int((await resp.json())["account_balance"])


async def test_a_credit_leaving_less_than_the_minimum_charge_is_answered_paid(
    sh: Harness, localstripe_url: str
) -> None:
    """Credit of 44.80 on 45.00 leaves 0.20 due, under USD's minimum charge (0.50):
    Stripe marks the invoice paid as it is finalized and adds the 0.20 to the customer's
    balance as a debit; paystream answers invoice.paid, nothing charged or counted
    (review h79r_c F3)."""
    t = sh.add_tenant(
        gateway="stripe",
        secrets={"api_key": "v1:x"},
        limits={"daily_payment_volume": {"USD": 100_000}},
    )
    draft = await _credited_draft(sh, localstripe_url, t, 4_480)
    out = await sh.send("invoice.finalize", t, {"invoice_id": draft["id"]})
    assert kind(out) == "invoice.paid", data(out)
    obj = data(out)["object"]
    assert (obj["status"], obj["amount"]) == ("paid", 0), obj
    provider_customer = sh.tables.customers[f"{t}:{draft['customer_id']}"]["provider_customer_id"]
    assert await _balance(localstripe_url, provider_customer) == 20  # (a debit)
    state = sh.processor.limits.table[f"{t}:limits"]
    assert not (state.get("volume") or {}).get("USD") and not state.get("held"), state


async def test_voiding_an_invoice_gives_back_the_credit_applied_to_it(
    sh: Harness, localstripe_url: str
) -> None:
    """Credit of 10.00 applied to 45.00 as it is finalized (35.00 left); voided, the
    10.00 is the customer's again, as Stripe gives it back (review h79r_c F4)."""
    t = sh.add_tenant(gateway="stripe", secrets={"api_key": "v1:x"})
    draft = await _credited_draft(sh, localstripe_url, t, 1_000)
    provider_customer = sh.tables.customers[f"{t}:{draft['customer_id']}"]["provider_customer_id"]
    opened = await _made(sh, t, "invoice.finalize", {"invoice_id": draft["id"]})
    assert opened["amount"] == 3_500 and await _balance(localstripe_url, provider_customer) == 0
    voided = await sh.send("invoice.void", t, {"invoice_id": draft["id"]})
    assert kind(voided) == "invoice.voided", data(voided)
    assert await _balance(localstripe_url, provider_customer) == -1_000

"""A Stripe tenant's draft read back names its lines (review h81rx F1, h81re F1): an
invoice.update whose answer was lost (parked) replaced the draft's items at Stripe; an
invoice.refresh then records the lines Stripe holds with the total it reads (every one:
more than the page the invoice carries, listed with ``starting_after``), an item made at
Stripe since among them, so the record's lines make its amount and a finalize (which
checks the draft's items against the recorded lines) bills them. Lines no update of this
release made whole (the create's; tests/agents/test_invoice_read_partial_update_stripe.py)
are not recorded."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from paystream.gateways import base as gw
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.stripe.gateway import StripeGateway
from paystream.tenancy.models import Tenant
from tests.agents.harness import Harness, data, kind
from tests.agents.test_invoice_update_stripe import _draft, _stripe_tenant
from tests.agents.test_invoices_stripe import AUTH, sh  # noqa: F401 (sh: a fixture)
from tests.agents.test_let_through import _answer, _command

pytestmark = pytest.mark.asyncio

# More lines than the ten an invoice carries (Stripe's first page of ``lines``).
MANY = [
    {"description": f"Session {n}", "amount": 1000 + 100 * n, "quantity": 1 + n % 3}
    for n in range(13)
]
MANY_TOTAL = sum(line["amount"] * line["quantity"] for line in MANY)


def _lines(obj: dict[str, Any]) -> list[tuple[str, int, int]]:
    return [(ln["description"], ln["amount"], ln.get("quantity", 1)) for ln in obj["line_items"]]


async def _lost(
    sh: Harness,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    t: str,
    iid: str,
    lines: list[dict[str, Any]],
) -> None:
    """An invoice.update (command ``a``) of ``lines`` done at Stripe, every answer lost:
    parked."""
    real = StripeGateway.update_invoice

    async def lose(
        self: StripeGateway, req: gw.UpdateInvoice, *, idempotency_key: str
    ) -> gw.InvoiceResult:
        answer = await real(self, req, idempotency_key=idempotency_key)
        if idempotency_key == f"ps:{t}:a":
            raise GatewayError(ErrorCode.PROVIDER_UNAVAILABLE, "answer lost", provider="stripe",
                               retryable=True)  # fmt: skip
        return answer

    monkeypatch.setattr(StripeGateway, "update_invoice", lose)
    body = {"invoice_id": iid, "line_items": lines}
    emits = await sh.processor.process(_command(t, "invoice.update", body, "a"))
    assert [e.topic for e in emits] == [sh.settings.retry_topic]  # (parked)


async def test_a_refresh_records_every_line_stripe_holds(
    sh: Harness,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    t = _stripe_tenant(sh)
    draft, _ = await _draft(sh, t)
    iid = draft["id"]
    await _lost(sh, monkeypatch, t, iid, MANY)
    before = sh.processor.tables.invoices[f"{t}:{iid}"]
    assert len(before["line_items"]) == 2  # (the create's: the update's answer was lost)
    read = await _answer(sh, _command(t, "invoice.refresh", {"invoice_id": iid}, "r"))
    assert kind(read) == "invoice.updated", data(read)
    asked = [(ln["description"], ln["amount"], ln["quantity"]) for ln in MANY]
    obj = data(read)["object"]
    assert (obj["amount"], _lines(obj)) == (MANY_TOTAL, asked)
    record = sh.processor.tables.invoices[f"{t}:{iid}"]
    assert (record["amount"], _lines(record)) == (MANY_TOTAL, asked)
    # The line's shape is invoice.update's (so finalize's check of the items passes).
    assert record["line_items"][0] == {"description": "Session 0", "amount": 1000, "quantity": 1}
    out = await _answer(sh, _command(t, "invoice.finalize", {"invoice_id": iid}, "f"))
    assert kind(out) == "invoice.finalized", data(out)
    assert data(out)["object"]["amount"] == MANY_TOTAL


async def test_a_line_made_at_stripe_is_recorded(
    sh: Harness,  # noqa: F811
    localstripe_url: str,
) -> None:
    """An invoice item added at Stripe (its dashboard), not by paystream, to a draft whose
    lines an invoice.update set: read back, it is one of the record's lines, and the
    draft finalizes with it (an item beside an update's whole set is newer than it: the
    update deleted every other before adding its own)."""
    t = _stripe_tenant(sh)
    draft, provider_invoice = await _draft(sh, t)
    iid = draft["id"]
    lines = [{"description": "Hours", "amount": 1500, "quantity": 2},
             {"description": "Fee", "amount": 1500}]  # fmt: skip
    up = await _answer(sh, _command(t, "invoice.update", {"invoice_id": iid, "line_items": lines},
                                    "u"))  # fmt: skip
    assert kind(up) == "invoice.updated", data(up)
    await _courier(localstripe_url, provider_invoice)
    read = await _answer(sh, _command(t, "invoice.refresh", {"invoice_id": iid}, "r"))
    assert kind(read) == "invoice.updated", data(read)
    record = sh.processor.tables.invoices[f"{t}:{iid}"]
    assert record["amount"] == 5200
    assert _lines(record) == [("Hours", 1500, 2), ("Fee", 1500, 1), ("Courier", 700, 1)]
    out = await _answer(sh, _command(t, "invoice.finalize", {"invoice_id": iid}, "f"))
    assert kind(out) == "invoice.finalized", data(out)
    assert data(out)["object"]["amount"] == 5200


async def test_a_line_made_at_stripe_beside_the_creates_is_not_recorded(
    sh: Harness,  # noqa: F811
    localstripe_url: str,
) -> None:
    """The create's items name no update: a read cannot tell them whole from a first
    update's deletions parked part way (review h82ra F1), so it names no lines. A line
    added at Stripe beside them is not recorded, and finalize refuses the draft (as before
    reads named lines) until invoice.update sets the lines to bill."""
    t = _stripe_tenant(sh)
    draft, provider_invoice = await _draft(sh, t)
    iid = draft["id"]
    await _courier(localstripe_url, provider_invoice)
    read = await _answer(sh, _command(t, "invoice.refresh", {"invoice_id": iid}, "r"))
    assert kind(read) == "invoice.updated", data(read)
    record = sh.processor.tables.invoices[f"{t}:{iid}"]
    assert _lines(record) == [("Hours", 1500, 2), ("Fee", 1500, 1)]
    out = await _answer(sh, _command(t, "invoice.finalize", {"invoice_id": iid}, "f"))
    assert kind(out) == "command.rejected", data(out)
    assert data(out)["reason"] == "invalid_state"


async def _courier(url: str, provider_invoice: str) -> None:
    """A 7.00 item added to the draft at Stripe."""
    item = {"customer": await _customer_of(url, provider_invoice),
            "invoice": provider_invoice, "currency": "usd", "amount": "700",
            "description": "Courier"}  # fmt: skip
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/v1/invoiceitems", data=item, headers=AUTH) as resp,
    ):
        assert resp.status == 200, await resp.text()


async def _customer_of(url: str, provider_invoice: str) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/v1/invoices/{provider_invoice}", headers=AUTH) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["customer"])


@pytest.mark.parametrize(("count", "calls"), [(10, 1), (11, 2)])
async def test_a_drafts_read_costs_one_call_for_ten_lines(
    sh: Harness,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    count: int,
    calls: int,
) -> None:
    """The lines come with the invoice (its first ten): a draft of ten lines is read in
    one call, ``GET /v1/invoices/{id}``; past ten, one list call more per page."""
    t = _stripe_tenant(sh)
    draft, provider_invoice = await _draft(sh, t)
    up = {"invoice_id": draft["id"], "line_items": MANY[:count]}
    assert kind(await _answer(sh, _command(t, "invoice.update", up, "u"))) == "invoice.updated"
    gateway = sh.pool.get(Tenant.model_validate(sh.tenants[t]))
    made: list[str] = []
    real = StripeGateway._call

    async def counted(self: StripeGateway, operation: str, *args: Any) -> Any:
        made.append(operation)
        return await real(self, operation, *args)

    monkeypatch.setattr(StripeGateway, "_call", counted)
    read = await gateway.retrieve_invoice(
        gw.RetrieveInvoice(provider_invoice_id=provider_invoice), idempotency_key="read"
    )
    assert read.line_items is not None and len(read.line_items) == count
    assert made == ["retrieve_invoice"] * calls

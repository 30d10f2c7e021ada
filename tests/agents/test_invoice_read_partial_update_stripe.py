"""A Stripe tenant's draft read while an invoice.update of its lines is parked part way
(review h82ra F1). Stripe's replacement is several calls (the old items deleted, then
each new one added); cut after k of them, the draft holds some of the old items, or k of
the new, or none. An invoice.refresh then must not record that partial set as the
draft's lines: finalize's check of the items against the recorded lines would pass and
bill it (none: paid at 0). The read names no lines while the set is incomplete (the
record keeps its lines, finalize keeps refusing); the update re-driven, the refresh
records its lines and the finalize bills them."""

from __future__ import annotations

from typing import Any

import pytest

from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.stripe.gateway import StripeGateway
from tests.agents.harness import Harness, data, kind
from tests.agents.test_invoice_update_stripe import (
    _ASKED,
    NEW_LINES,
    NEW_TOTAL,
    _draft,
    _get,
    _items,
    _stripe_tenant,
)
from tests.agents.test_invoices_stripe import sh  # noqa: F401 (a fixture)
from tests.agents.test_let_through import _answer, _command

pytestmark = pytest.mark.asyncio

_CREATED = [("Hours", 1500, 2), ("Fee", 1500, 1)]
# A first update's lines, set in full before the update read part way.
FIRST = [
    {"description": "Audit", "amount": 900, "quantity": 2},
    {"description": "Visit", "amount": 400},
    {"description": "Report", "amount": 300},
]


def _record_lines(sh: Harness, key: str) -> list[tuple[str, int, int]]:  # noqa: F811
    return [
        (ln["description"], ln["amount"], ln.get("quantity", 1))
        for ln in sh.processor.tables.invoices[key]["line_items"]
    ]


def _cut_after(monkeypatch: pytest.MonkeyPatch, name: str, prefix: str, k: int) -> None:
    """The update's (command ids from ``prefix``) item calls of kind ``name`` after the
    k-th never reach Stripe (a worker gone between two calls): parked."""
    real = getattr(StripeGateway, name)
    done = {"n": 0}

    async def cut(self: StripeGateway, *args: Any) -> None:
        key = args[-1] if name == "_add_item" else ""
        if name == "_delete_item" or key.startswith(prefix):
            if done["n"] >= k:
                raise GatewayError(ErrorCode.PROVIDER_UNAVAILABLE, "cut", provider="stripe",
                                   retryable=True)  # fmt: skip
            done["n"] += 1
        await real(self, *args)

    monkeypatch.setattr(StripeGateway, name, cut)


@pytest.mark.parametrize(
    ("first", "name", "k"),
    [
        (False, "_add_item", 0),  # the create's items deleted, none added: none left
        (False, "_add_item", 1),
        (False, "_add_item", 2),  # 2 of 3 new
        (False, "_delete_item", 1),  # 1 of the create's 2 deleted
        (True, "_delete_item", 1),  # 1 of a first update's 3 deleted
        (True, "_add_item", 2),  # after a first update: 2 of 3 new
    ],
    ids=[
        "none-added",
        "one-added",
        "two-added",
        "one-deleted",
        "after-update-one-deleted",
        "after-update-two-added",
    ],
)
async def test_a_refresh_mid_update_records_no_partial_lines_and_finalize_refuses(
    sh: Harness,  # noqa: F811
    localstripe_url: str,
    monkeypatch: pytest.MonkeyPatch,
    first: bool,
    name: str,
    k: int,
) -> None:
    t = _stripe_tenant(sh)
    draft, provider_invoice = await _draft(sh, t)
    iid, key = draft["id"], f"{t}:{draft['id']}"
    before = _CREATED
    if first:
        done = await _answer(
            sh, _command(t, "invoice.update", {"invoice_id": iid, "line_items": FIRST}, "u1")
        )
        assert kind(done) == "invoice.updated", data(done)
        before = [(ln["description"], ln["amount"], ln.get("quantity", 1)) for ln in FIRST]
    _cut_after(monkeypatch, name, f"ps:{t}:up", k)
    update = {"invoice_id": iid, "line_items": NEW_LINES}
    emits = await sh.processor.process(_command(t, "invoice.update", update, "up"))
    assert [e.topic for e in emits] == [sh.settings.retry_topic]  # (parked part way)
    held = await _items(localstripe_url, provider_invoice)
    assert held not in (sorted(before), _ASKED), held  # (a partial set at Stripe)
    read = await _answer(sh, _command(t, "invoice.refresh", {"invoice_id": iid}, "r"))
    assert kind(read) == "invoice.updated", data(read)
    assert _record_lines(sh, key) == before  # (not the partial set)
    out = await _answer(sh, _command(t, "invoice.finalize", {"invoice_id": iid}, "fin"))
    assert kind(out) == "command.rejected", data(out)
    assert data(out)["reason"] == "invalid_state"
    invoice = await _get(localstripe_url, f"/v1/invoices/{provider_invoice}")
    assert invoice["status"] == "draft"  # (nothing billed)
    # The update re-driven (`dlq replay`), read again: its lines recorded and billed.
    monkeypatch.undo()
    done = await _answer(sh, _command(t, "invoice.update", update, "up"))
    assert kind(done) == "invoice.updated", data(done)
    read = await _answer(sh, _command(t, "invoice.refresh", {"invoice_id": iid}, "r2"))
    assert sorted(_record_lines(sh, key)) == _ASKED
    out = await _answer(sh, _command(t, "invoice.finalize", {"invoice_id": iid}, "fin"))
    assert kind(out) == "invoice.finalized", data(out)
    assert data(out)["object"]["amount"] == NEW_TOTAL

"""An invoice.refresh of a draft whose invoice.update is parked (its answer lost, or
never sent), review h81rx F1. The refresh is a read: the parked update, re-driven (`dlq
replay`), is applied, not refused invalid_state as if another command had changed the
invoice (handlers._changed_since_first_attempt); an applied entry of the release before
(no command type) still counts as a change. A refresh reading an update in effect takes
its lines with its total (gw.InvoiceResult.line_items; it took the total alone)."""

from __future__ import annotations

import pytest

from paystream.gateways import base as gw
from paystream.gateways.simulator.gateway import SimulatorGateway
from tests.agents.harness import Harness, data, kind
from tests.agents.test_invoice_update_late_redrive import A_LINES, _parked, _provider_lines
from tests.agents.test_let_through import _answer, _command

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("stored", [True, False], ids=["stored-then-lost", "never-reached"])
async def test_a_parked_update_re_driven_after_a_read_is_applied(
    harness: Harness, stored: bool
) -> None:
    h = harness
    t, iid = await _parked(h, "lose_response_first" if stored else "fail_first")
    read = await _answer(h, _command(t, "invoice.refresh", {"invoice_id": iid}, "r"))
    assert kind(read) == "invoice.updated", data(read)
    a = {"invoice_id": iid, "line_items": A_LINES}
    out = await _answer(h, _command(t, "invoice.update", a, "a"))  # `dlq replay`
    assert kind(out) == "invoice.updated", data(out)
    assert await _provider_lines(h, t, iid) == [(12000, 2)]
    record = h.processor.tables.invoices[f"{t}:{iid}"]
    lines = [(line["amount"], line.get("quantity", 1)) for line in record["line_items"]]
    assert lines == [(12000, 2)] and record["amount"] == 24000, record


async def test_a_read_remembered_by_the_release_before_still_counts_as_a_change(
    harness: Harness,
) -> None:
    """An applied entry without a command type (written by the release before) cannot be
    told from a change: the re-drive is read back and refused, as before."""
    h = harness
    t, iid = await _parked(h, "fail_first")
    read = await _answer(h, _command(t, "invoice.refresh", {"invoice_id": iid}, "r"))
    assert kind(read) == "invoice.updated", data(read)
    record = h.processor.tables.invoices[f"{t}:{iid}"]
    assert record["applied"]["r"].pop("cmd") == "invoice.refresh"
    h.processor.tables.invoices[f"{t}:{iid}"] = record
    a = {"invoice_id": iid, "line_items": A_LINES}
    out = await _answer(h, _command(t, "invoice.update", a, "a"))  # `dlq replay`
    assert kind(out) == "command.rejected", data(out)
    assert data(out)["reason"] == "invalid_state", data(out)
    assert "changed since this update was first tried" in data(out)["message"]


async def test_a_read_of_a_draft_whose_update_was_parked_keeps_lines_and_total_together(
    harness: Harness,
) -> None:
    """A's lines set at the provider, its answer lost (parked); an invoice.refresh then
    reads the draft's new total (A's) and its lines (A's): the record's (and the
    refresh's invoice.updated object's) line_items make its amount (they kept the lines
    before A)."""
    h = harness
    t, iid = await _parked(h, "lose_response_first")
    read = await _answer(h, _command(t, "invoice.refresh", {"invoice_id": iid}, "r"))
    assert kind(read) == "invoice.updated", data(read)
    obj = data(read)["object"]
    total = sum(line["amount"] * line.get("quantity", 1) for line in obj["line_items"])
    assert (obj["amount"], total) == (24000, 24000), obj


async def test_a_read_naming_no_lines_leaves_the_records_lines(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A provider that cannot name a draft's lines (InvoiceResult.line_items None; an
    answer kept by the release before names none either): the read takes the total, the
    record's lines stand, as before lines were read."""
    h = harness
    t, iid = await _parked(h, "lose_response_first")
    lines_before = h.processor.tables.invoices[f"{t}:{iid}"]["line_items"]
    real = SimulatorGateway.retrieve_invoice

    async def unnamed(
        self: SimulatorGateway, req: gw.RetrieveInvoice, *, idempotency_key: str
    ) -> gw.InvoiceResult:
        read = await real(self, req, idempotency_key=idempotency_key)
        assert read.line_items is not None  # (the simulator's names them)
        return read.model_copy(update={"line_items": None})

    monkeypatch.setattr(SimulatorGateway, "retrieve_invoice", unnamed)
    read = await _answer(h, _command(t, "invoice.refresh", {"invoice_id": iid}, "r"))
    assert kind(read) == "invoice.updated", data(read)
    record = h.processor.tables.invoices[f"{t}:{iid}"]
    assert (record["amount"], record["line_items"]) == (24000, lines_before), record

"""A written-off invoice's parked pays, end to end through the limits: a write-off
keeps their holds (the invoice may still be paid), a pay of it re-driven charges it and
is counted once (its hold going as it is counted), and a void of it releases the holds
(nothing will be collected on it). The unit test of learnt_void alone did not run the
pipeline's release (review h81rb)."""

from __future__ import annotations

import pytest

from tests.agents.harness import Harness, data, kind, new_tenant_id
from tests.agents.test_invoices_balance import _charges, _parked_pay, _state
from tests.agents.test_let_through import _answer, _command

pytestmark = pytest.mark.asyncio


async def _written_off_with_a_parked_pay(h: Harness) -> tuple[str, dict[str, str]]:
    """A tenant's invoice of 120 000 with a pay of it parked (its hold kept), written off:
    the tenant and the invoice's body."""
    t = new_tenant_id()
    invoice, _ = await _parked_pay(h, t, 120_000)
    body = {"invoice_id": invoice}
    out = await h.send("invoice.mark_uncollectible", t, body)
    assert kind(out) == "invoice.marked_uncollectible", data(out)
    return t, body


async def test_a_write_off_keeps_the_hold_and_the_re_driven_pay_is_counted_once(
    harness: Harness,
) -> None:
    h = harness
    t, body = await _written_off_with_a_parked_pay(h)
    assert len(_state(h, t)["held"]) == 2  # (it may still be paid: the hold stays)
    paid = await _answer(h, _command(t, "invoice.pay", body, "pay-1"))
    assert kind(paid) == "invoice.paid", data(paid)
    assert data(paid)["previous_status"] == "uncollectible"
    state = _state(h, t)
    assert len(state["held"]) == 1 and state["volume"] == {"EUR": 50_000}, state
    assert len(await _charges(h, t)) == 1


async def test_a_void_of_a_written_off_invoice_releases_its_parked_pays_hold(
    harness: Harness,
) -> None:
    h = harness
    t, body = await _written_off_with_a_parked_pay(h)
    voided = await h.send("invoice.void", t, body)
    assert kind(voided) == "invoice.voided", data(voided)
    held = _state(h, t)["held"]
    assert len(held) == 1 and [v[2] for v in held.values()] == [50_000], held
    redriven = await _answer(h, _command(t, "invoice.pay", body, "pay-1"))
    assert kind(redriven) == "command.rejected" and "void" in data(redriven)["message"]
    assert not _state(h, t).get("volume", {}).get("EUR")
    assert await _charges(h, t) == []

"""A command id reused past the idempotency window (README: it may then name another
request) for a charge on another payment that the provider disputes: the dispute's id,
derived from the tenant and command id alone, named the first payment's dispute, and
the second was written over it (version 1 again; the first payment's dispute could no
longer be answered, and its refund rule read the other dispute). Review finding."""

from __future__ import annotations

import time

import pytest

from paystream.agents import handlers
from tests.agents.harness import Harness, data, new_tenant_id, set_pipeline_clock
from tests.agents.test_applied_by_entity import _change, _entities
from tests.agents.test_command_id_resent import _DaysLater, _rec
from tests.agents.test_let_through import _answer

pytestmark = pytest.mark.asyncio
_DISPUTED = {"amount": 5000, "currency": "USD", "payment_method_token": "pm_card_createDispute"}


async def test_a_reused_command_id_does_not_write_over_another_payments_dispute(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    t = new_tenant_id()
    h.add_tenant(t)
    first = await _answer(h, _rec(t, "payment.create", {**_DISPUTED, "payment_id": "p1"}, "o-1"))
    dp1 = data(first)["object"]["dispute_id"]
    lost = await _answer(h, _rec(t, "dispute.accept", {"dispute_id": dp1}, "accept-1"))
    assert data(lost)["object"]["status"] == "lost"
    h.processor.purge_expired(t, time.time() + 2 * 86_400)
    set_pipeline_clock(monkeypatch, _DaysLater(2))
    monkeypatch.setattr(handlers, "time", _DaysLater(2))
    second = await _answer(h, _rec(t, "payment.create", {**_DISPUTED, "payment_id": "p2"}, "o-1"))
    dp2 = data(second)["object"]["dispute_id"]
    assert dp2 != dp1
    kept = h.tables.disputes[f"{t}:{dp1}"]
    assert (kept["payment_id"], kept["status"]) == ("p1", "lost"), kept
    new = h.tables.disputes[f"{t}:{dp2}"]
    assert (new["payment_id"], new["status"]) == ("p2", "needs_response"), new
    # A crash kept only that dispute of the second charge (its idempotency record and
    # payment lost), and the tenant is suspended meanwhile: the dispute, under the id
    # the command derives with its payment, knows the charge took effect.
    entities = _entities(h)
    del h.idempotency[f"{t}:o-1"]
    del h.tables.payments[f"{t}:p2"]
    _change(h, t, "suspended")
    again = await _answer(h, _rec(t, "payment.create", {**_DISPUTED, "payment_id": "p2"}, "o-1"))
    assert again.get_id() == second.get_id() and data(again) == data(second), data(again)
    assert _entities(h) == entities  # the payment repaired from the answer

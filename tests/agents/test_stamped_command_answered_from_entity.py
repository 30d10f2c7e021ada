"""A command parked unanswered (its tenant suspended, the provider not askable), re-driven
once the tenant is active again, whose effect an entity records though its idempotency
record was lost: answered from the entity (the provider charged it), never refused
`tenant_suspended`."""

from __future__ import annotations

import dataclasses

import pytest

from tests.agents.harness import Harness, data, kind
from tests.agents.test_applied_by_entity import _crash_back_to, _durable, _effects
from tests.agents.test_let_through import _answer
from tests.agents.test_let_through_by_provider import (
    CHARGE,
    _command,
    _park_while_down,
    _suspend,
)

pytestmark = pytest.mark.asyncio


async def test_a_stamped_copy_of_a_charge_an_entity_records_is_answered_from_it(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    t = h.add_tenant()
    record = dict(h.tenants[t])
    rec = _command(t, "payment.create", {**CHARGE, "payment_id": "p1"}, "c1")
    durable = _durable(h)
    charged = await _answer(h, rec)
    assert kind(charged) == "payment.succeeded", data(charged)
    _crash_back_to(h, durable)  # the provider charged; the whole batch is lost
    _suspend(h, t)
    redrive = await _park_while_down(h, monkeypatch, rec)
    h.tenants[t] = {**h.tenants[t], "status": "active"}
    first = await _answer(h, redrive)  # the provider says it took it: it finishes
    assert kind(first) == kind(charged), data(first)
    # A crash kept the payment's entity write and lost the idempotency record's; the
    # stamped record comes again (another copy of the re-drive).
    del h.idempotency[f"{t}:c1"]
    again = dataclasses.replace(redrive, offset=redrive.offset + 1)
    out = await _answer(h, again)
    assert kind(out) == kind(first) and data(out)["object"]["id"] == "p1", data(out)
    assert [k for k, _ in await _effects(h, record)] == ["charge"]

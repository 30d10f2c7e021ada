"""The operators' lookup of one command (`GET /v1/tenants/{tenant}/commands/{key}`): what
became of it, from the idempotency table the pipeline keeps, by idempotency key or by
command id, for the tenant's own commands only."""

from __future__ import annotations

import time
from datetime import datetime

from paystream.client import build_command
from paystream.tables.commands_view import command_view
from tests.agents.harness import Harness, data
from tests.agents.test_let_through import _parked_after_a_charge

_PAY = {"amount": 2500, "currency": "USD", "payment_method_token": "pm_card_visa"}


def _view(h: Harness, tenant: str, key: str, now: float | None = None) -> dict | None:  # type: ignore[type-arg]
    return command_view(h.idempotency, tenant, key, time.time() if now is None else now)


async def test_a_done_command_shows_its_outcome_event_and_entity(harness: Harness) -> None:
    t = harness.add_tenant()
    out = await harness.send("payment.create", t, _PAY, command_id="order-7")
    view = _view(harness, t, "order-7")
    assert view is not None
    assert view["expires_at"].endswith("Z")
    assert {k: v for k, v in view.items() if k != "expires_at"} == {
        "tenant_id": t,
        "idempotency_key": "order-7",
        "command_id": "order-7",
        "command_type": "payment.create",
        "state": "done",
        "outcome": {
            "id": out.get_id(),  # the very event emitted
            "type": out.get_type(),
            "time": view["outcome"]["time"],
            "entity": {"kind": "payments", "id": data(out)["entity_id"]},
        },
    }
    assert datetime.fromisoformat(view["outcome"]["time"]) == out.get_time()
    # Nothing of the request or the outcome's data: look the payment up for that.
    assert "request_hash" not in view and "data" not in view["outcome"]


async def test_a_rejection_shows_its_reason(harness: Harness) -> None:
    t = harness.add_tenant()
    await harness.send("payment.create", t, {**_PAY, "payment_id": "p1"})
    refused = await harness.send(
        "refund.create", t, {"payment_id": "p1", "amount": 999_999}, command_id="r-1"
    )
    assert data(refused)["reason"] == "invalid_state", data(refused)
    view = _view(harness, t, "r-1")
    assert view is not None and view["state"] == "done"
    assert view["outcome"] == {
        "id": refused.get_id(),
        "type": refused.get_type(),
        "time": view["outcome"]["time"],
        "reason": "invalid_state",
        "message": data(refused)["message"],
    }


async def test_found_by_command_id_when_sent_under_another_key(harness: Harness) -> None:
    t = harness.add_tenant()
    event = build_command("payment.create", t, _PAY, command_id="c-9")
    event.get_attributes()["idempotencykey"] = "checkout-42"
    _, out = await harness.send_event(event)
    assert out is not None
    by_key, by_id = _view(harness, t, "checkout-42"), _view(harness, t, "c-9")
    assert by_key is not None and by_key == by_id
    assert (by_key["idempotency_key"], by_key["command_id"]) == ("checkout-42", "c-9")
    assert by_key["outcome"]["id"] == out.get_id()


async def test_another_tenants_command_and_odd_keys_are_not_found(harness: Harness) -> None:
    owner, other = harness.add_tenant(), harness.add_tenant()
    await harness.send("payment.create", owner, _PAY, command_id="c-1")
    assert _view(harness, owner, "c-1") is not None
    assert _view(harness, other, "c-1") is None
    assert _view(harness, owner, "c-2") is None
    # Table keys of other kinds hold control characters: never a command's.
    assert _view(harness, owner, "\x1fid:c-1") is None
    assert _view(harness, owner, "") is None
    # Past its window the key is free again: nothing to show.
    assert _view(harness, owner, "c-1", now=time.time() + 2 * 86_400) is None


async def test_a_parked_command_shows_parked_without_an_outcome(harness: Harness) -> None:
    t, _ = await _parked_after_a_charge(harness)
    view = _view(harness, t, "c1")
    assert view is not None
    assert (view["state"], view["command_type"]) == ("parked", "payment.create")
    assert "outcome" not in view

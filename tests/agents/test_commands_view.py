"""The operators' lookup of one command (`GET /v1/tenants/{tenant}/commands/{key}`): what
became of it, from the idempotency table the pipeline keeps, by idempotency key or by
command id, for the tenant's own commands only."""

from __future__ import annotations

import time
from datetime import datetime

import jsonschema
import pytest
from cloudevents.core.v1.event import CloudEvent

from paystream.client import build_command
from paystream.docs import openapi
from paystream.tables.commands_view import command_view
from tests.agents.harness import Harness, data, kind, new_tenant_id
from tests.agents.test_let_through import _parked_after_a_charge

_PAY = {"amount": 2500, "currency": "USD", "payment_method_token": "pm_card_visa"}
_LINK = {"refresh_url": "https://p.example/r", "return_url": "https://p.example/d"}


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


def _keyed(command_type: str, t: str, body: dict, command_id: str, key: str) -> CloudEvent:  # type: ignore[type-arg]
    event = build_command(command_type, t, body, command_id=command_id)
    event.get_attributes()["idempotencykey"] = key
    return event


async def test_a_command_id_whose_key_was_reused_since_is_not_found(harness: Harness) -> None:
    """The id's pointer outlives the key's record (kept as long as a parked one): once
    the key names another request, the id's command is gone from the window, not that
    one (review finding: shown as the other request's)."""
    t = new_tenant_id()
    harness.add_tenant(t, gateway_options={"lose_response_first": {f"pse:{t}:payment:p1": 3}})
    body = {**_PAY, "payment_id": "p1"}
    _, out = await harness.send_event(_keyed("payment.create", t, body, "c-9", "K"), offset=1)
    assert out is None and harness.idempotency[f"{t}:K"]["state"] == "parked"
    _, out = await harness.send_event(_keyed("payment.create", t, body, "c-10", "K"), offset=2)
    assert out is not None and kind(out) == "payment.succeeded", data(out)
    finished = _view(harness, t, "c-9")  # finished by the retry under its key
    assert finished is not None and finished["command_id"] == "c-10"
    assert finished["outcome"]["id"] == out.get_id()
    del harness.idempotency[f"{t}:K"]  # a day on: expired; the key reused for another
    _, other = await harness.send_event(_keyed("customer.create", t, {}, "c-50", "K"), offset=3)
    assert other is not None and kind(other) == "customer.created", data(other)
    assert _view(harness, t, "c-9") is None
    assert _view(harness, t, "K")["command_id"] == "c-50"  # type: ignore[index]


@pytest.mark.parametrize("key", ["order\u00a042", "order\u200b42", "re\u00adfund-7", "k\u2028x"])
async def test_a_key_the_pipeline_takes_is_found(harness: Harness, key: str) -> None:
    """Only C0 and DEL are refused in keys and ids (review finding: every character
    Python does not print, a no-break space among them, was "no such command")."""
    t = harness.add_tenant()
    _, out = await harness.send_event(_keyed("payment.create", t, _PAY, "cid-1", key))
    assert out is not None and kind(out) == "payment.succeeded", data(out)
    assert _view(harness, t, key) is not None
    assert _view(harness, t, "cid-1") is not None


async def test_every_shape_matches_the_documented_schema(harness: Harness) -> None:
    t = harness.add_tenant()
    await harness.send("payment.create", t, {**_PAY, "payment_id": "p1"}, command_id="a")
    await harness.send("refund.create", t, {"payment_id": "p1", "amount": 10**7}, command_id="b")
    cus = await harness.send("customer.create", t, {"email": "a@example.com"}, command_id="c")
    await harness.send(
        "customer.export", t, {"customer_id": data(cus)["entity_id"]}, command_id="d"
    )
    await harness.send("customer.erase", t, {"customer_id": data(cus)["entity_id"]}, command_id="e")
    declined = {**_PAY, "payment_method_token": "pm_card_chargeDeclined"}
    await harness.send("payment.create", t, declined, command_id="f")
    three_ds = {**_PAY, "payment_method_token": "pm_card_threeDSecureRequired"}
    await harness.send("payment.create", t, three_ds, command_id="g")
    made = await harness.send("connected_account.create", t, {"country": "US"})
    link = {"connected_account_id": data(made)["object"]["id"], **_LINK}
    await harness.send("connected_account.onboarding_link", t, link, command_id="h")
    views = [_view(harness, t, k) for k in "abcdefgh"]
    assert views[-1] is not None and "message" in views[-1]["outcome"]  # (link: no url)
    parked, _ = await _parked_after_a_charge(harness)
    views.append(_view(harness, parked, "c1"))
    schema = openapi()["components"]["schemas"]["CommandStatus"]
    for view in views:
        assert view is not None
        jsonschema.validate(view, schema)

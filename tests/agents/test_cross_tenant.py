"""Another tenant's entity looks exactly like one that does not exist, for every command
that names an existing entity: the same outcome type, data (the id aside) and headers
(the event's own ids aside). Only refund.create was held to it field by field."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from cloudevents.core.v1.event import CloudEvent

from paystream.client import build_command
from tests.agents.harness import Harness, data, kind

pytestmark = pytest.mark.asyncio


async def _owned_by_a(h: Harness, a: str) -> dict[str, str]:
    """Tenant a's entities, one of each kind, by kind."""
    cus = await h.send("customer.create", a, {"customer_id": "cus_x", "email": "x@example.com"})
    assert kind(cus) == "customer.created"
    pm = await h.send(
        "payment_method.attach",
        a,
        {"customer_id": "cus_x", "payment_method_id": "pm_x", "token": "pm_card_visa"},
    )
    assert kind(pm) == "payment_method.attached"
    pay = await h.send(
        "payment.create",
        a,
        {"payment_id": "pay_x", "amount": 900, "currency": "USD",
         "payment_method_token": "pm_card_createDispute"},
    )  # fmt: skip
    held = await h.send(
        "payment.create",
        a,
        {"payment_id": "pay_m", "amount": 900, "currency": "USD",
         "payment_method_token": "pm_card_visa", "capture": "manual"},
    )  # fmt: skip
    assert kind(pay) == "payment.succeeded" and kind(held) == "payment.authorized"
    return {"dispute": str(data(pay)["object"]["dispute_id"])}


_COMMANDS: list[tuple[str, Any]] = [
    ("customer.update", lambda ids, x: {"customer_id": x("cus_x"), "name": "B"}),
    ("customer.delete", lambda ids, x: {"customer_id": x("cus_x")}),
    ("payment_method.detach", lambda ids, x: {"payment_method_id": x("pm_x")}),
    ("payment.capture", lambda ids, x: {"payment_id": x("pay_m")}),
    ("payment.cancel", lambda ids, x: {"payment_id": x("pay_m")}),
    ("payment.refresh", lambda ids, x: {"payment_id": x("pay_m")}),
    ("refund.create", lambda ids, x: {"payment_id": x("pay_x"), "amount": 100}),
    ("dispute.accept", lambda ids, x: {"dispute_id": x(ids["dispute"])}),
    (
        "dispute.submit_evidence",
        lambda ids, x: {"dispute_id": x(ids["dispute"]), "evidence": {"customer_name": "B"}},
    ),
    (
        "payment.create",
        lambda ids, x: {
            "amount": 100,
            "currency": "USD",
            "customer_id": x("cus_x"),
            "payment_method_id": x("pm_x"),
        },
    ),
]


@pytest.mark.parametrize(("command_type", "body"), _COMMANDS, ids=[c for c, _ in _COMMANDS])
async def test_another_tenants_entity_looks_exactly_like_none(
    harness: Harness, command_type: str, body: Any
) -> None:
    h = harness
    a, b = h.add_tenant(), h.add_tenant()
    ids = await _owned_by_a(h, a)

    def same(name: str) -> str:
        return name

    def never(name: str) -> str:
        return f"{name}_never"

    out_f, headers_f = await _answer(h, b, command_type, body(ids, same), "c1")
    out_m, headers_m = await _answer(h, b, command_type, body(ids, never), "c2")
    assert kind(out_f) == kind(out_m) == "command.rejected", (data(out_f), data(out_m))
    assert data(out_f)["reason"] == "not_found", data(out_f)
    assert data(out_f) == _renamed(data(out_m), body(ids, never), body(ids, same))
    assert headers_f.keys() == headers_m.keys()
    for name in headers_f.keys() - {"ce_id", "ce_causationid"}:
        assert headers_f[name] == headers_m[name], name


async def _answer(
    h: Harness, tenant: str, command_type: str, body: dict[str, Any], command_id: str
) -> tuple[CloudEvent, dict[str, bytes]]:
    built = build_command(command_type, tenant, body, command_id=command_id)
    # (Both sent at the same time: an outcome carries its command's.)
    event = CloudEvent({**built.get_attributes(), "time": _AT}, built.get_data())
    emits, out = await h.send_event(event, timestamp_ms=1_700_000_000_000)
    assert out is not None
    [record] = [e.record for e in emits if e.topic == h.settings.events_topic]
    return out, dict(record.headers)


_AT = datetime(2026, 12, 1, tzinfo=UTC)


def _renamed(value: Any, never: dict[str, Any], same: dict[str, Any]) -> Any:
    """``value`` with each id of ``never`` written as its counterpart in ``same``."""
    text = json.dumps(value)
    for name, given in never.items():
        if isinstance(given, str) and given != same[name]:
            text = text.replace(json.dumps(given)[1:-1], json.dumps(same[name])[1:-1])
    return json.loads(text)


_MORE: list[tuple[str, Any]] = [
    ("customer.export", lambda ids, x: {"customer_id": x("cus_x")}),
    ("customer.erase", lambda ids, x: {"customer_id": x("cus_x")}),
    ("payment_method.attach", lambda ids, x: {"customer_id": x("cus_x"), "token": "pm_card_visa"}),
    ("refund.refresh", lambda ids, x: {"refund_id": x("re_x")}),
    (
        "refund.create",
        lambda ids, x: {"payment_id": x("pay_m"), "refund_id": x("re_x"), "amount": 50},
    ),
    (
        "payment.create",
        lambda ids, x: {"amount": 100, "currency": "USD", "payment_method_id": x("pm_x")},
    ),
    ("customer.update", lambda ids, x: {"customer_id": x("cus_x"), "metadata": {"a": "b"}}),
]


@pytest.mark.parametrize(("command_type", "body"), _MORE, ids=[c for c, _ in _MORE])
async def test_another_tenants_entity_looks_exactly_like_none_more_commands(
    harness: Harness, command_type: str, body: Any
) -> None:
    """The commands the list above left out, over a tenant's captured payment and its
    refund as well (review h67d)."""
    h = harness
    a, b = h.add_tenant(), h.add_tenant()
    ids = await _owned_by_a(h, a)
    cap = await h.send("payment.capture", a, {"payment_id": "pay_m"})
    assert kind(cap) in ("payment.captured", "payment.succeeded"), data(cap)
    ref = await h.send(
        "refund.create", a, {"payment_id": "pay_m", "refund_id": "re_x", "amount": 10}
    )
    assert kind(ref) == "refund.succeeded", data(ref)

    def same(name: str) -> str:
        return name

    def never(name: str) -> str:
        return f"{name}_never"

    out_f, headers_f = await _answer(h, b, command_type, body(ids, same), "c1")
    out_m, headers_m = await _answer(h, b, command_type, body(ids, never), "c2")
    assert kind(out_f) == kind(out_m), (data(out_f), data(out_m))
    assert data(out_f) == _renamed(data(out_m), body(ids, never), body(ids, same))
    assert headers_f.keys() == headers_m.keys()
    for name in headers_f.keys() - {"ce_id", "ce_causationid"}:
        assert headers_f[name] == headers_m[name], name

"""A record must learn nothing of a tenant whose state it may not read: one keyed for
another tenant than it names (refused `tenant_mismatch`), or naming an id no tenant has
("acme:x": every table key is "<tenant>:<...>", so its key "k" is acme's "x:k"; refused
`unknown_tenant`). The rules that run before those checks (a card security code's, the
attribute size limit's, an internal error's dead letter) read the named tenant's state
only for a record that passes them (review findings: each answer told whether that
tenant ran a request, and the bug path replayed acme's customer export)."""

from __future__ import annotations

import json
import time
from typing import Any

from paystream.agents.pipeline import Inbound
from paystream.client import build_command
from paystream.settings import CloudEventsMode
from paystream.streams.codec import encode_event
from tests.agents.harness import Harness, data, kind, outcome_of

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def _probe(harness: Harness, key: bytes, tenantid: str, idem: str) -> str:
    """A record keyed ``key`` naming ``tenantid``, its trace state holding a card
    security code, under the victim's idempotency key and request: the answer's reason."""
    cmd = build_command(
        "customer.create", tenantid, {"email": "v@example.com"},
        idempotency_key=idem, traceparent=TP, tracestate="cvc=737",
    )  # fmt: skip
    _, out = await harness.send_event(cmd, key=key, offset=900)
    assert out is not None
    return data(out)["reason"]


async def test_mismatched_record_learns_nothing_of_the_named_tenant(harness: Harness) -> None:
    """A record keyed for acme that names globex is refused tenant_mismatch before it is
    read against globex's state; its answer must not depend on what globex ran."""
    acme = harness.add_tenant()
    globex = harness.add_tenant()
    # globex runs a request under its own idempotency key.
    ran = build_command(
        "customer.create", globex, {"email": "v@example.com"}, idempotency_key="order-42"
    )
    _, out = await harness.send_event(ran, offset=1)
    assert out is not None and kind(out) == "customer.created", out
    # acme's producer probes globex's key: one that globex ran, one that it did not.
    ran_it = await _probe(harness, acme.encode(), globex, "order-42")
    never = await _probe(harness, acme.encode(), globex, "order-43")
    assert ran_it == never, (ran_it, never)


async def test_colon_tenant_learns_nothing_of_the_prefix_tenant(harness: Harness) -> None:
    """tenantid (and key) "acme:x", no tenant's id, read as a table key prefix is acme's
    namespace: idempotency key "k" is acme's key "x:k". Its answer must not depend on it."""
    acme = harness.add_tenant()
    ran = build_command("customer.create", acme, {"email": "v@example.com"}, idempotency_key="x:k")
    _, out = await harness.send_event(ran, offset=1)
    assert out is not None and kind(out) == "customer.created", out
    odd = f"{acme}:x"
    ran_it = await _probe(harness, odd.encode(), odd, "k")
    never = await _probe(harness, odd.encode(), odd, "k2")
    assert ran_it == never, (ran_it, never)


async def test_a_bug_on_a_colon_tenant_record_gives_nothing_of_the_prefix_tenant(
    harness: Harness, monkeypatch: Any
) -> None:
    """An internal error's dead letter answers a request let through before from its
    record: "acme:export" under key "cus1" read acme's record of key "export:cus1" and
    replayed acme's export (email, name) as its answer (the class of
    test_tenant_key_space.py, on the bug path)."""
    acme = harness.add_tenant()
    customer = {"customer_id": "cus1", "email": "alice@example.com", "name": "Alice"}
    created = build_command("customer.create", acme, customer, idempotency_key="order:1")
    _, out = await harness.send_event(created, offset=10)
    assert out is not None and kind(out) == "customer.created"
    export = build_command(
        "customer.export", acme, {"customer_id": "cus1"}, idempotency_key="export:cus1"
    )
    _, out = await harness.send_event(export, offset=11)
    assert out is not None and kind(out) == "customer.exported"

    async def _raise(*args: Any) -> Any:
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(harness.processor, "_process", _raise)
    odd = f"{acme}:export"
    probe = build_command("customer.export", odd, {"customer_id": "cus1"}, idempotency_key="cus1")
    rec = encode_event(probe, odd.encode(), CloudEventsMode.BINARY)
    inbound = Inbound(rec.key, rec.value, dict(rec.headers), int(time.time() * 1000),
                      harness.settings.commands_topic, 0, 12)  # fmt: skip
    try:
        emits = await harness.processor.process(inbound)
    except RuntimeError:
        emits = harness.processor.dead_letter_bug(inbound)
    leaked = outcome_of(harness.settings, emits)
    assert leaked is None or "alice" not in str(leaked.get_data()).lower(), (
        kind(leaked),
        leaked.get_extension("tenantid"),
        leaked.get_data(),
    )


async def test_an_oversized_colon_tenant_record_learns_nothing_of_the_prefix_tenant(
    harness: Harness,
) -> None:
    """test_hostile_records.py's check (the attribute limit reads the idempotency table
    only for a record keyed by its tenant) with key == tenantid == "acme:order": its
    key "1" is acme's "order:1", so the answer told whether acme ran command id ord-1."""
    acme = harness.add_tenant()
    ran = build_command(
        "customer.create", acme, {"email": "b@example.com"},
        command_id="ord-1", idempotency_key="order:1",
    )  # fmt: skip
    _, out = await harness.send_event(ran, offset=20)
    assert out is not None and kind(out) == "customer.created"
    odd = f"{acme}:order"
    seen = {}
    for i, cid in enumerate(("ord-1", "ord-2")):
        body = {
            "specversion": "1.0", "id": cid, "type": "com.paystream.command.customer.create",
            "source": "/x", "tenantid": odd, "idempotencykey": "1",
            "datacontenttype": "application/json", "data": {"email": "b@example.com"},
            "traceparent": "x" * 17_000,
        }  # fmt: skip
        headers = {"content-type": b"application/cloudevents+json"}
        inbound = Inbound(
            odd.encode(), json.dumps(body).encode(), headers, int(time.time() * 1000),
            harness.settings.commands_topic, 0, 30 + i,
        )  # fmt: skip
        emits = await harness.raw(inbound)
        seen[cid] = sorted(e.topic for e in emits)
    assert seen["ord-1"] == seen["ord-2"], seen


async def test_an_overlong_id_naming_another_tenant_is_not_answered_from_its_state(
    harness: Harness,
) -> None:
    """A command id over 255 characters is refused before the tenant checks, answered
    again only from a request of its own: read for the tenant a record keyed for another
    names, a record at a reused offset (the commands topic made again within the window)
    got acme's customer export."""
    h = harness
    acme, globex = h.add_tenant(), h.add_tenant()
    customer = {"customer_id": "cus1", "email": "alice@example.com", "name": "Alice"}
    made = build_command("customer.create", acme, customer, idempotency_key="order:1")
    _, out = await h.send_event(made, offset=10)
    assert out is not None and kind(out) == "customer.created"
    export = build_command(
        "customer.export", acme, {"customer_id": "cus1"}, idempotency_key="export:cus1"
    )
    _, out = await h.send_event(export, offset=11)
    assert out is not None and kind(out) == "customer.exported"
    probe = build_command(
        "customer.export", acme, {"customer_id": "cus1"}, idempotency_key="export:cus1"
    )
    probe.get_attributes()["id"] = "x" * 300
    _, leaked = await h.send_event(probe, key=globex.encode(), offset=11)
    assert leaked is not None and data(leaked)["reason"] == "validation_error", data(leaked)
    assert "alice" not in str(leaked.get_data()).lower()

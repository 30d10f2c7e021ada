"""The command pipeline against dict tables and the real simulator (real Redis)."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import types
import typing
from dataclasses import replace
from enum import StrEnum
from typing import Any

import orjson
import pytest
from prometheus_client import generate_latest

from paystream.agents import handlers
from paystream.agents import pipeline as pipeline_module
from paystream.agents.inbound import record_time
from paystream.agents.pipeline import Emit, Inbound
from paystream.client import build_command
from paystream.gateways.simulator import SimulatorGateway
from paystream.settings import CloudEventsMode
from paystream.streams.codec import encode_event
from paystream.streams.commands import COMMANDS
from paystream.streams.outcomes import outcome_id
from paystream.tables.records import APPLIED_MEMORY, shed_applied, trim_applied
from paystream.tenancy.models import Tenant
from tests.agents.conftest import running_harness
from tests.agents.harness import Harness, data, kind, outcome_of

pytestmark = pytest.mark.asyncio


async def _customer_with_card(
    h: Harness, tenant: str, token: str = "pm_card_visa"
) -> tuple[str, str]:
    cus = await h.send("customer.create", tenant, {"email": "a@example.com", "name": "Ada"})
    assert kind(cus) == "customer.created", data(cus)
    cid = data(cus)["entity_id"]
    pm = await h.send("payment_method.attach", tenant, {"customer_id": cid, "token": token})
    assert kind(pm) == "payment_method.attached", data(pm)
    return cid, data(pm)["entity_id"]


async def _effects(h: Harness, tenant: str) -> list[object]:
    gateway = h.pool.get(Tenant.model_validate(h.tenants[tenant]))
    assert isinstance(gateway, SimulatorGateway)
    return list(await gateway.effects())


# ---- happy paths for every command type --------------------------------------------


async def test_customer_lifecycle(harness: Harness) -> None:
    t = harness.add_tenant()
    created = await harness.send("customer.create", t, {"customer_id": "cus_1", "email": "x@y.io"})
    assert kind(created) == "customer.created"
    assert data(created)["object"]["provider_customer_id"].startswith("cus_")
    updated = await harness.send("customer.update", t, {"customer_id": "cus_1", "name": "New"})
    assert kind(updated) == "customer.updated"
    assert data(updated)["object"]["name"] == "New"
    assert data(updated)["version"] == 2
    deleted = await harness.send("customer.delete", t, {"customer_id": "cus_1"})
    assert kind(deleted) == "customer.deleted"
    again = await harness.send("customer.update", t, {"customer_id": "cus_1", "name": "Z"})
    assert data(again)["reason"] == "not_found"


async def test_payment_method_attach_detach_keeps_only_token_metadata(harness: Harness) -> None:
    t = harness.add_tenant()
    _, pmid = await _customer_with_card(harness, t)
    pm = harness.tables.payment_methods[f"{t}:{pmid}"]
    assert pm["last4"] == "4242" and pm["brand"] == "visa" and pm["fingerprint"]
    detached = await harness.send("payment_method.detach", t, {"payment_method_id": pmid})
    assert kind(detached) == "payment_method.detached"
    twice = await harness.send("payment_method.detach", t, {"payment_method_id": pmid})
    assert data(twice)["reason"] == "invalid_state"


async def test_auto_capture_payment_succeeds(harness: Harness) -> None:
    t = harness.add_tenant()
    cid, pmid = await _customer_with_card(harness, t)
    out = await harness.send(
        "payment.create",
        t,
        {"amount": 1999, "currency": "usd", "customer_id": cid, "payment_method_id": pmid},
    )
    assert kind(out) == "payment.succeeded"
    obj = data(out)["object"]
    assert obj["amount"] == 1999 and obj["currency"] == "USD" and obj["amount_captured"] == 1999
    assert out.get_extension("causationid") and out.get_extension("tenantid") == t
    assert out.get_source() == f"/paystream/tenants/{t}/payment"


async def test_manual_capture_partial_then_refunds_to_the_limit(harness: Harness) -> None:
    t = harness.add_tenant()
    auth = await harness.send(
        "payment.create",
        t,
        {
            "amount": 5000,
            "currency": "EUR",
            "payment_method_token": "pm_card_visa",
            "capture": "manual",
        },
    )
    assert kind(auth) == "payment.authorized"
    pid = data(auth)["entity_id"]
    cap = await harness.send("payment.capture", t, {"payment_id": pid, "amount": 4000})
    assert kind(cap) == "payment.succeeded" and data(cap)["object"]["amount_captured"] == 4000
    second = await harness.send("payment.capture", t, {"payment_id": pid})
    assert data(second)["reason"] == "invalid_state"
    r1 = await harness.send("refund.create", t, {"payment_id": pid, "amount": 2500})
    assert kind(r1) == "refund.succeeded"
    assert data(r1)["related"][0]["object"]["amount_refunded"] == 2500
    over = await harness.send("refund.create", t, {"payment_id": pid, "amount": 1501})
    assert data(over)["reason"] == "invalid_state"
    rest = await harness.send("refund.create", t, {"payment_id": pid})
    assert kind(rest) == "refund.succeeded" and data(rest)["object"]["amount"] == 1500
    none_left = await harness.send("refund.create", t, {"payment_id": pid, "amount": 1})
    assert data(none_left)["reason"] == "invalid_state"


async def test_cancel_then_capture_is_invalid_state(harness: Harness) -> None:
    t = harness.add_tenant()
    auth = await harness.send(
        "payment.create",
        t,
        {
            "amount": 700,
            "currency": "USD",
            "payment_method_token": "pm_card_visa",
            "capture": "manual",
        },
    )
    pid = data(auth)["entity_id"]
    canceled = await harness.send("payment.cancel", t, {"payment_id": pid})
    assert kind(canceled) == "payment.canceled"
    cap = await harness.send("payment.capture", t, {"payment_id": pid})
    assert data(cap)["reason"] == "invalid_state"
    refund = await harness.send("refund.create", t, {"payment_id": pid})
    assert data(refund)["reason"] == "invalid_state"


async def test_zero_decimal_currency(harness: Harness) -> None:
    t = harness.add_tenant()
    out = await harness.send(
        "payment.create",
        t,
        {"amount": 500, "currency": "JPY", "payment_method_token": "pm_card_visa"},
    )
    assert kind(out) == "payment.succeeded"
    assert data(out)["object"]["amount"] == 500 and data(out)["object"]["currency"] == "JPY"


@pytest.mark.parametrize(
    ("token", "code"),
    [
        ("pm_card_chargeCustomerFail", "card_declined"),
    ],
)
async def test_decline_at_charge_is_payment_failed(harness: Harness, token: str, code: str) -> None:
    t = harness.add_tenant()
    cid, pmid = await _customer_with_card(harness, t, token)
    out = await harness.send(
        "payment.create",
        t,
        {"amount": 100, "currency": "USD", "customer_id": cid, "payment_method_id": pmid},
    )
    assert kind(out) == "payment.failed"
    assert data(out)["error"]["code"] == code
    assert data(out)["error"]["retryable"] is False


@pytest.mark.parametrize(
    ("token", "code"),
    [
        ("pm_card_chargeDeclined", "card_declined"),
        ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds"),
        ("pm_card_chargeDeclinedExpiredCard", "expired_card"),
        ("pm_card_chargeDeclinedIncorrectCvc", "incorrect_cvc"),
    ],
)
async def test_declining_cards(harness: Harness, token: str, code: str) -> None:
    t = harness.add_tenant()
    out = await harness.send(
        "payment.create", t, {"amount": 100, "currency": "USD", "payment_method_token": token}
    )
    assert kind(out) == "payment.failed"
    assert data(out)["error"]["code"] == code
    assert harness.tables.payments[f"{t}:{data(out)['entity_id']}"]["status"] == "failed"


async def test_attach_of_declining_card_fails(harness: Harness) -> None:
    t = harness.add_tenant()
    cus = await harness.send("customer.create", t, {})
    out = await harness.send(
        "payment_method.attach",
        t,
        {"customer_id": data(cus)["entity_id"], "token": "pm_card_chargeDeclinedExpiredCard"},
    )
    assert kind(out) == "payment_method.attach_failed"
    assert data(out)["error"]["code"] == "expired_card"


async def test_requires_action_surfaces_next_action(harness: Harness) -> None:
    t = harness.add_tenant()
    out = await harness.send(
        "payment.create",
        t,
        {
            "amount": 100,
            "currency": "USD",
            "payment_method_token": "pm_card_authenticationRequired",
        },
    )
    assert kind(out) == "payment.requires_action"
    assert data(out)["object"]["next_action"]


async def test_dispute_evidence_and_accept(harness: Harness) -> None:
    t = harness.add_tenant()
    pay = await harness.send(
        "payment.create",
        t,
        {"amount": 900, "currency": "USD", "payment_method_token": "pm_card_createDispute"},
    )
    assert kind(pay) == "payment.succeeded"
    dispute_id = data(pay)["object"]["dispute_id"]
    assert dispute_id and data(pay)["related"][0]["entity_type"] == "dispute"
    ev = await harness.send(
        "dispute.submit_evidence",
        t,
        {"dispute_id": dispute_id, "evidence": {"customer_name": "Ada"}},
    )
    assert kind(ev) == "dispute.evidence_submitted"
    # evidence submitted → under review: cannot accept any more
    acc = await harness.send("dispute.accept", t, {"dispute_id": dispute_id})
    assert data(acc)["reason"] == "invalid_state"

    pay2 = await harness.send(
        "payment.create",
        t,
        {"amount": 300, "currency": "USD", "payment_method_token": "pm_card_createDispute"},
    )
    accepted = await harness.send(
        "dispute.accept", t, {"dispute_id": data(pay2)["object"]["dispute_id"]}
    )
    assert kind(accepted) == "dispute.closed"
    assert data(accepted)["object"]["status"] == "lost"


# ---- rejections ----------------------------------------------------------------------


async def test_validation_error_lists_fields_without_values(harness: Harness) -> None:
    t = harness.add_tenant()
    out = await harness.send(
        "payment.create",
        t,
        {"amount": 12.5, "currency": "usd", "payment_method_token": "pm_card_visa"},
    )
    assert kind(out) == "command.rejected"
    body = data(out)
    assert body["reason"] == "validation_error"
    assert any(e["loc"] == "amount" for e in body["errors"])
    assert "12.5" not in json.dumps(body)


@pytest.mark.parametrize(
    ("command_type", "payload", "said"),
    [
        (
            "subscription.create",
            {
                "customer_id": "c1",
                "payment_method_id": "m1",
                "amount": 100,
                "currency": "USD",
                "interval": "month",
                "interval_count": 13,
            },
            "a billing period is at most one year: interval_count is at most 12 for interval month",
        ),
        (
            "tax.calculate",
            {
                "currency": "USD",
                "line_items": [{"amount": 1, "reference": "a"}, {"amount": 2, "reference": "a"}],
            },
            "each line item's reference is unique in the calculation",
        ),
    ],
)
async def test_a_validator_s_refusal_is_in_its_own_words(
    harness: Harness, command_type: str, payload: dict[str, Any], said: str
) -> None:
    """A model validator's ValueError is listed as it says it, without pydantic's
    "Value error, " before it, still of type value_error."""
    out = await harness.send(command_type, harness.add_tenant(), payload)
    assert kind(out) == "command.rejected", data(out)
    assert data(out)["reason"] == "validation_error"
    assert data(out)["errors"] == [{"loc": "", "msg": said, "type": "value_error"}]


@pytest.mark.parametrize(
    "bad",
    [
        {"amount": -1, "currency": "USD", "payment_method_token": "pm_card_visa"},
        {"amount": 100, "currency": "XXX", "payment_method_token": "pm_card_visa"},
        {"amount": True, "currency": "USD", "payment_method_token": "pm_card_visa"},
        {"amount": "100", "currency": "USD", "payment_method_token": "pm_card_visa"},
        {"amount": 100, "currency": "USD"},
        {"amount": 100, "currency": "USD", "payment_method_token": "pm_card_visa", "surprise": 1},
        {"amount": 10**15, "currency": "USD", "payment_method_token": "pm_card_visa"},
        {"amount": 100, "currency": "USD", "payment_method_token": "x" * 300},
        {
            "amount": 100,
            "currency": "USD",
            "payment_method_token": "pm_card_visa",
            "payment_id": "../../etc",
        },
    ],
)
async def test_hostile_payment_data_is_rejected(harness: Harness, bad: dict[str, object]) -> None:
    t = harness.add_tenant()
    out = await harness.send("payment.create", t, bad)
    assert data(out)["reason"] == "validation_error"


@pytest.mark.parametrize(
    "payload",
    [
        {"customer_id": "c1", "token": "4242424242424242"},
        {"customer_id": "c1", "token": "pm_card_visa", "payment_method_id": "x"},
    ],
)
async def test_card_numbers_are_refused_and_never_echoed(
    harness: Harness, payload: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # the worker logs at INFO (and DEBUG when asked)
    t = harness.add_tenant()
    pan = "4000 0566 5566 5556"
    data_with_pan = (
        {**payload, "token": payload["token"]}
        if "4242" in payload["token"]
        else {**payload, "metadata_note": pan}
    )
    emits, out = await harness.send_event(build_command("payment_method.attach", t, data_with_pan))
    assert out is not None and data(out)["reason"] == "card_data_forbidden"
    blob = b"".join(e.record.value + b"".join(v for _, v in e.record.headers) for e in emits)
    for digits in ("4242424242424242", "4000056655665556", "4000 0566 5566 5556"):
        assert digits.encode() not in blob
        assert digits not in caplog.text


async def test_unknown_tenant_suspended_tenant_and_unknown_command(harness: Harness) -> None:
    out = await harness.send("customer.create", "nobody-here", {})
    assert data(out)["reason"] == "unknown_tenant"
    t = harness.add_tenant(status="suspended")
    out = await harness.send("customer.create", t, {})
    assert data(out)["reason"] == "tenant_suspended"
    t2 = harness.add_tenant()
    out = await harness.send("com.paystream.command.payment.teleport", t2, {})
    assert data(out)["reason"] == "unknown_command"
    out = await harness.send("com.example.other", t2, {})
    assert data(out)["reason"] == "unsupported"


async def test_unsupported_capability_answers_unsupported(harness: Harness) -> None:
    t = harness.add_tenant(gateway_options={"capabilities": ["customers", "payments"]})
    cus = await harness.send("customer.create", t, {})
    out = await harness.send(
        "payment_method.attach", t, {"customer_id": data(cus)["entity_id"], "token": "pm_card_visa"}
    )
    assert data(out)["reason"] == "unsupported"


async def test_cross_tenant_access_looks_exactly_like_not_found(harness: Harness) -> None:
    a, b = harness.add_tenant(), harness.add_tenant()
    pay = await harness.send(
        "payment.create",
        a,
        {
            "amount": 100,
            "currency": "USD",
            "payment_method_token": "pm_card_visa",
            "payment_id": "pay_shared",
        },
    )
    assert kind(pay) == "payment.succeeded"
    foreign = await harness.send("refund.create", b, {"payment_id": "pay_shared"})
    missing = await harness.send("refund.create", b, {"payment_id": "pay_never"})
    assert data(foreign)["reason"] == data(missing)["reason"] == "not_found"
    assert data(foreign)["message"].replace("pay_shared", "X") == data(missing)["message"].replace(
        "pay_never", "X"
    )
    # a record keyed for tenant a but claiming tenant b is refused outright
    _, out = await harness.send_event(
        build_command("refund.create", b, {"payment_id": "pay_shared"}), key=a.encode()
    )
    assert out is not None and data(out)["reason"] == "tenant_mismatch"
    assert harness.tables.payments[f"{a}:pay_shared"]["amount_refunded"] == 0


# ---- idempotency -------------------------------------------------------------------


async def test_redelivery_replays_the_stored_outcome_without_a_second_effect(
    harness: Harness,
) -> None:
    t = harness.add_tenant()
    cmd = build_command(
        "payment.create",
        t,
        {"amount": 4200, "currency": "USD", "payment_method_token": "pm_card_visa"},
    )
    emits1, first = await harness.send_event(cmd, timestamp_ms=1_700_000_000_000)
    emits2, second = await harness.send_event(cmd, timestamp_ms=1_700_000_000_000)
    assert first is not None and second is not None
    assert emits1[0].record == emits2[0].record  # byte-identical
    assert first.get_id() == outcome_id(t, cmd.get_id(), "payment.succeeded")
    # Redelivered (harness records carry no source: not known to be the same record),
    # the dashboard's row says it was sent again (it showed a second identical row).
    assert emits1[0].summary is not None and emits2[0].summary is not None
    assert (emits1[0].summary["resent"], emits2[0].summary["resent"]) == (False, True)
    assert {**emits2[0].summary, "resent": False} == emits1[0].summary
    # The very record (same partition and offset) redelivered after a crash is not
    # marked: its first answer may never have left the worker that crashed.
    crash = build_command("customer.create", t, {})
    emits3, _ = await harness.send_event(crash, offset=7)
    emits4, _ = await harness.send_event(crash, offset=7)
    assert emits3[0].record == emits4[0].record
    assert [e.summary["resent"] for e in (*emits3, *emits4) if e.summary] == [False, False]
    charges = [e for e in await _effects(harness, t) if e.kind in ("charge", "capture")]
    assert len(charges) == 1


async def test_same_key_new_command_id_returns_the_original_outcome(harness: Harness) -> None:
    t = harness.add_tenant()
    body = {"amount": 100, "currency": "USD", "payment_method_token": "pm_card_visa"}
    first = await harness.send("payment.create", t, body, idempotency_key="order-77")
    again = await harness.send("payment.create", t, body, idempotency_key="order-77")
    assert again.get_id() == first.get_id() and data(again) == data(first)
    conflict = await harness.send(
        "payment.create", t, {**body, "amount": 101}, idempotency_key="order-77"
    )
    assert data(conflict)["reason"] == "idempotency_conflict"


async def test_a_retry_is_answered_by_the_first_event_with_its_own_id_in_a_header(
    harness: Harness,
) -> None:
    """Its sender waits by its own command id; the event is the very one first emitted
    (its causation id, time and traceparent are the first command's), byte for byte."""
    t = harness.add_tenant()
    body = {"amount": 100, "currency": "USD", "payment_method_token": "pm_card_visa"}
    first_cmd = build_command(
        "payment.create",
        t,
        body,
        idempotency_key="order-78",
        traceparent=f"00-{'a' * 32}-{'b' * 16}-01",
    )
    retry_cmd = build_command(
        "payment.create",
        t,
        body,
        idempotency_key="order-78",
        traceparent=f"00-{'c' * 32}-{'d' * 16}-01",
    )
    emits1, first = await harness.send_event(first_cmd, timestamp_ms=1_700_000_000_000)
    emits2, again = await harness.send_event(retry_cmd, timestamp_ms=1_700_000_001_000)
    assert first is not None and again is not None
    headers1, headers2 = dict(emits1[0].record.headers), dict(emits2[0].record.headers)
    assert "paystream-answers" not in headers1
    assert headers2.pop("paystream-answers") == retry_cmd.get_id().encode()
    assert again.get_extension("causationid") == first_cmd.get_id()
    assert (headers1, emits1[0].record.value) == (headers2, emits2[0].record.value)
    # Redelivered, the retry's record is answered byte for byte the same.
    emits3, _ = await harness.send_event(retry_cmd, timestamp_ms=1_700_000_001_000)
    assert emits3[0].record == emits2[0].record


async def test_entity_remembers_applied_command_when_idempotency_record_was_lost(
    harness: Harness,
) -> None:
    """Faust may persist the entity's changelog but not the idempotency table's."""
    t = harness.add_tenant()
    auth = await harness.send(
        "payment.create",
        t,
        {
            "amount": 900,
            "currency": "USD",
            "payment_method_token": "pm_card_visa",
            "capture": "manual",
        },
    )
    pid = data(auth)["entity_id"]
    cap_cmd = build_command("payment.capture", t, {"payment_id": pid})
    emits1, _ = await harness.send_event(cap_cmd, timestamp_ms=1_700_000_000_000)
    del harness.idempotency[f"{t}:{cap_cmd.get_id()}"]
    emits2, replay = await harness.send_event(cap_cmd, timestamp_ms=1_700_000_000_000)
    assert replay is not None and kind(replay) == "payment.succeeded"
    assert emits1[0].record == emits2[0].record
    assert harness.tables.payments[f"{t}:{pid}"]["version"] == 2


async def test_idempotency_record_repairs_a_lost_entity_write(harness: Harness) -> None:
    t = harness.add_tenant()
    cmd = build_command("customer.create", t, {"customer_id": "cus_r", "email": "r@x.io"})
    await harness.send_event(cmd)
    del harness.tables.customers[f"{t}:cus_r"]
    _, replay = await harness.send_event(cmd)
    assert replay is not None and kind(replay) == "customer.created"
    assert harness.tables.customers[f"{t}:cus_r"]["email"] == "r@x.io"


async def test_idempotency_keys_expire(harness: Harness) -> None:
    t = harness.add_tenant()
    body = {"customer_id": "cus_e"}
    await harness.send("customer.create", t, body, idempotency_key="k1")
    for record in harness.idempotency.values():
        record["expires_at"] = time.time() - 1
    again = await harness.send("customer.create", t, body, idempotency_key="k1")
    assert data(again)["reason"] == "invalid_state"  # treated as new: the customer exists


async def test_a_card_number_spelled_with_json_escapes_is_refused(harness: Harness) -> None:
    """The pipeline's quick byte-level look defers to the parsed scan when escapes could
    hide digits: ``\\u0034242...`` parses to a card number."""
    t = harness.add_tenant()
    event = build_command("payment_method.attach", t, {"customer_id": "c1", "token": "x"})
    rec = encode_event(event, t.encode(), CloudEventsMode.BINARY)
    value = b'{"customer_id": "c1", "token": "\\u0034242424242424242"}'
    emits = await harness.raw(
        Inbound(key=rec.key, value=value, headers=dict(rec.headers), timestamp_ms=0, topic="c")
    )
    out = outcome_of(harness.settings, emits)
    assert out is not None and data(out)["reason"] == "card_data_forbidden"


PAN = "4111111111111111"


def _binary(key: bytes, value: bytes = b"{}", **headers: bytes) -> Inbound:
    base = {
        "ce_specversion": b"1.0",
        "ce_id": b"c1",
        "ce_type": b"com.paystream.command.payment.create",
        "ce_source": b"/x",
        "ce_tenantid": key,
        "content-type": b"application/json",
    }
    return Inbound(
        key=key, value=value, headers={**base, **headers}, timestamp_ms=0, topic="c", offset=3
    )


def _customer_create(tenant: str, **headers: bytes) -> Inbound:
    """A binary-mode customer.create of ``tenant`` as consumed (headers override)."""
    return _binary(
        tenant.encode(),
        json.dumps({"email": "a@example.com"}).encode(),
        ce_type=b"com.paystream.command.customer.create",
        **headers,
    )


def _leaks(emits: list[Emit], pan: str = PAN) -> list[str]:
    """Where ``pan`` shows in what the pipeline emitted: records and dashboard summaries."""
    found = []
    for e in emits:
        rec = e.record
        blob = (rec.key or b"") + rec.value + b"".join(k.encode() + v for k, v in rec.headers)
        if pan.encode() in blob:
            found.append(f"{e.topic} record")
        if pan in json.dumps(e.summary):
            found.append(f"{e.topic} summary")
    return found


@pytest.mark.parametrize(
    "where", ["command id", "tenant id and key", "tenant id only", "type", "float ext"]
)
async def test_a_card_number_in_any_attribute_or_header_is_refused_first_and_never_echoed(
    harness: Harness, where: str
) -> None:
    t = harness.add_tenant()
    rec = {
        "command id": _binary(t.encode(), ce_id=f"order-{PAN}".encode()),
        "tenant id and key": _binary(PAN.encode()),
        "tenant id only": _binary(t.encode(), ce_tenantid=PAN.encode()),
        "type": _binary(t.encode(), ce_type=f"com.paystream.command.{PAN}".encode()),
        "float ext": _binary(t.encode(), ce_amountx=f"{PAN}.0".encode()),
    }[where]
    emits = await harness.raw(rec)
    out = outcome_of(harness.settings, emits)
    assert out is not None and data(out)["reason"] == "card_data_forbidden"
    assert _leaks(emits) == []
    assert PAN.encode() not in generate_latest()


async def test_headers_outside_cloudevents_are_neither_read_nor_kept(harness: Harness) -> None:
    """Tracing ids are long decimal numbers, a tenth of them Luhn-valid: they must not get
    commands refused as card data, and no header that is not read may be kept."""
    t = harness.add_tenant(gateway_options={"fail_first": {"*": 50}})  # parks the command
    cmd = build_command(
        "payment.create",
        t,
        {"amount": 100, "currency": "USD", "payment_method_token": "pm_card_visa"},
    )
    rec = encode_event(cmd, t.encode(), CloudEventsMode.BINARY)
    headers = {
        **dict(rec.headers),
        "x-datadog-trace-id": b"4111111111111111",  # Luhn-valid
        "x-note": f"card {PAN}".encode(),
    }
    emits = await harness.raw(
        Inbound(key=rec.key, value=rec.value, headers=headers, timestamp_ms=0, topic="c")
    )
    [parked] = [e for e in emits if e.topic == harness.settings.retry_topic]
    kept = dict(parked.record.headers)
    assert kept["ce_id"] == cmd.get_id().encode()
    assert not any(name.startswith("x-") for name in kept)
    assert _leaks(emits) == []


async def test_header_names_are_case_insensitive_for_the_check_and_the_copies(
    harness: Harness,
) -> None:
    t = harness.add_tenant(gateway_options={"fail_first": {"*": 50}})  # parks the command
    upper = {
        k.upper(): v for k, v in _binary(t.encode(), ce_id=f"o-{PAN}".encode()).headers.items()
    }
    emits = await harness.raw(
        Inbound(key=t.encode(), value=b"{}", headers=upper, timestamp_ms=0, topic="c")
    )
    out = outcome_of(harness.settings, emits)
    assert out is not None and data(out)["reason"] == "card_data_forbidden"
    assert _leaks(emits) == []
    cmd = build_command(
        "payment.create",
        t,
        {"amount": 100, "currency": "USD", "payment_method_token": "pm_card_visa"},
    )
    rec = encode_event(cmd, t.encode(), CloudEventsMode.BINARY)
    emits = await harness.raw(
        Inbound(
            key=rec.key,
            value=rec.value,
            headers={k.upper(): v for k, v in rec.headers},
            timestamp_ms=0,
            topic="c",
        )
    )
    parked = [e for e in emits if e.topic == harness.settings.retry_topic]
    assert len(parked) == 1, [(e.topic, e.record.value) for e in emits]
    assert dict(parked[0].record.headers)["CE_ID"] == cmd.get_id().encode()  # replayable


async def test_an_oversized_command_with_json_escapes_but_no_card_is_kept(
    harness: Harness,
) -> None:
    t = harness.add_tenant()
    big = {"description": "line1\nline2 caf\u00e9 " + "x" * harness.settings.command_max_bytes}
    value = json.dumps(big).encode()  # json.dumps escapes: a backslash in the bytes
    emits = await harness.raw(_binary(t.encode(), value))
    [dlq] = [e for e in emits if e.topic == harness.settings.dlq_topic]
    assert dlq.record.value == value
    assert "paystream-dlq-redacted" not in dict(dlq.record.headers)
    out = outcome_of(harness.settings, emits)
    assert out is not None and data(out)["reason"] == "payload_too_large"


async def test_a_card_number_in_an_oversized_command_is_not_kept_in_the_dead_letter(
    harness: Harness,
) -> None:
    t = harness.add_tenant()
    big = {"description": f"card {PAN} " + "x" * harness.settings.command_max_bytes}
    emits = await harness.raw(_binary(t.encode(), json.dumps(big).encode()))
    [dlq] = [e for e in emits if e.topic == harness.settings.dlq_topic]
    headers = dict(dlq.record.headers)
    # (Its key, the tenant id, kept: `dlq list --tenant` finds it; review h70e.)
    assert dlq.record.value == b"" and dlq.record.key == t.encode()
    assert headers["paystream-dlq-reason"] == b"payload_too_large"
    assert headers["paystream-dlq-redacted"] == b"card_number"
    assert set(headers) <= {
        "paystream-dlq-reason",
        "paystream-dlq-detail",
        "paystream-dlq-redacted",
        "paystream-dlq-answered",
        "paystream-source",
    }
    assert headers["paystream-dlq-answered"] == b"card_data_forbidden"
    out = outcome_of(harness.settings, emits)
    assert out is not None and data(out)["reason"] == "card_data_forbidden"
    assert _leaks(emits) == []


@pytest.mark.parametrize(
    "value",
    [
        # structured, not a CloudEvent (no source), card number in data
        json.dumps({"specversion": "1.0", "id": "c1", "type": "t", "data": {"c": PAN}}),
        # not JSON at all, the digits spelled with a JSON escape
        '{"note": "\\u0034111111111111111", ',
        # structured, not a CloudEvent, the card number written as a float
        '{"specversion": "1.0", "id": "c1", "type": "t", "data": {"c": 4.111111111111111e15}}',
        # not JSON, groups split by escaped slashes (PHP's json_encode writes "/" so)
        '{"note": "4111\\/1111\\/1111\\/1111", ',
    ],
)
async def test_a_card_number_in_a_record_that_is_not_a_cloudevent_is_not_kept(
    harness: Harness, value: str
) -> None:
    emits = await harness.raw(
        Inbound(key=b"acme", value=value.encode(), headers={}, timestamp_ms=0, topic="c")
    )
    [dlq] = [e for e in emits if e.topic == harness.settings.dlq_topic]
    assert dlq.record.value == b""
    assert dict(dlq.record.headers)["paystream-dlq-reason"] == b"not_a_cloudevent"
    assert _leaks(emits) == []


async def test_hex_ids_are_not_taken_for_numbers_with_an_exponent(harness: Harness) -> None:
    """ "…adbc4282e013" and "28e70c83…" hold digit-e-digit runs that, read as numbers,
    pass the Luhn check: a dead letter holding such ids kept its bytes before the
    exponent check, and must still."""
    ids = ["b0294918-5f7a-4a1e-9c3d-adbc4282e013", "28e70c83-1c2d-4e5f-8a9b-0c1d2e3f4a5b"]
    value = json.dumps({"specversion": "1.0", "id": "c1", "type": "t", "data": {"ids": ids}})
    emits = await harness.raw(
        Inbound(key=b"acme", value=value.encode(), headers={}, timestamp_ms=0, topic="c")
    )
    [dlq] = [e for e in emits if e.topic == harness.settings.dlq_topic]
    assert dlq.record.value == value.encode()


async def test_a_card_number_with_escaped_slashes_in_an_oversized_command_is_not_kept(
    harness: Harness,
) -> None:
    t = harness.add_tenant()
    pad = "x" * harness.settings.command_max_bytes
    value = b'{"note": "4111\\/1111\\/1111\\/1111", "pad": "' + pad.encode() + b'"}'
    emits = await harness.raw(_binary(t.encode(), value))
    [dlq] = [e for e in emits if e.topic == harness.settings.dlq_topic]
    assert dlq.record.value == b""
    assert dict(dlq.record.headers)["paystream-dlq-redacted"] == b"card_number"


@pytest.mark.parametrize("escaped", [False, True])
async def test_a_command_nested_a_thousand_levels_deep_is_answered_not_fatal(
    harness: Harness, escaped: bool
) -> None:
    """The card scan walks the data with a stack: recursion would raise, and the record,
    never committed, would stop every worker that took the partition over."""
    t = harness.add_tenant()
    leaf = b'"a\\nb"' if escaped else b'"a"'
    value = b'{"metadata": ' + b"[" * 1000 + leaf + b"]" * 1000 + b"}"
    emits = await harness.raw(_binary(t.encode(), value))
    out = outcome_of(harness.settings, emits)
    assert out is not None and kind(out) == "command.rejected"
    assert data(out)["reason"] in {"validation_error", "internal_error"}


async def test_a_card_number_in_a_decoding_error_is_redacted(harness: Harness) -> None:
    t = harness.add_tenant()
    # an invalid extension name: the SDK's error message quotes it
    emits = await harness.raw(_binary(t.encode(), **{f"ce_bad-{PAN}": b"x"}))
    assert _leaks(emits) == []
    [dlq] = [e for e in emits if e.topic == harness.settings.dlq_topic]
    assert dlq.record.value == b""


async def test_made_up_tenants_and_types_share_one_metric_label(harness: Harness) -> None:
    made_up = [f"nobody-{n}" for n in range(3)]
    for tenant in made_up:
        out = await harness.send("customer.create", tenant, {})
        assert data(out)["reason"] == "unknown_tenant"
    t = harness.add_tenant()
    await harness.send("com.paystream.command.made.up", t, {})
    exposition = generate_latest().decode()
    assert not any(f'tenant="{tenant}"' in exposition for tenant in made_up)
    assert 'tenant="(unregistered)"' in exposition
    assert f'{{command="unknown",outcome="command.rejected",tenant="{t}"}}' in exposition


# ---- transport-level garbage -------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [b"not json at all", b"{}", b'{"specversion":"1.0","id":"x"}', b"\xff\xfe\x00garbage", b""],
)
async def test_non_cloudevents_go_to_the_dead_letter_topic(harness: Harness, value: bytes) -> None:
    emits = await harness.raw(
        Inbound(
            key=b"acme", value=value, headers={}, timestamp_ms=0, topic="c", partition=1, offset=9
        )
    )
    dlq = [e for e in emits if e.topic == harness.settings.dlq_topic]
    assert len(dlq) == 1 and dlq[0].record.value == value
    assert dict(dlq[0].record.headers)["paystream-dlq-reason"] == b"not_a_cloudevent"


async def test_oversized_command_is_rejected_and_dead_lettered(harness: Harness) -> None:
    t = harness.add_tenant()
    big = build_command("customer.create", t, {"description": "x" * 100_000})
    emits, out = await harness.send_event(big)
    assert out is not None and data(out)["reason"] == "payload_too_large"
    assert [e.topic for e in emits].count(harness.settings.dlq_topic) == 1


async def test_structured_mode_is_accepted_and_answered(harness: Harness) -> None:
    t = harness.add_tenant()
    out = await harness.send(
        "customer.create", t, {"email": "s@x.io"}, mode=CloudEventsMode.STRUCTURED
    )
    assert kind(out) == "customer.created"


async def test_traceparent_is_propagated(harness: Harness) -> None:
    """The outcome continues the command's trace: the same trace id and flags, the span
    id of the worker's span for the command (derived from the command, tracing on or
    off). A traceparent that is not W3C trace context is ignored, as W3C says: copied
    onto the outcome, it carried whatever a sender put there ("cvc=737") into outcomes
    and stored records (review finding)."""
    t = harness.add_tenant()
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    out = await harness.send("customer.create", t, {}, traceparent=tp)
    carried = str(out.get_extension("traceparent"))
    version, trace_id, span_id, flags = carried.split("-")
    assert (version, trace_id, flags) == ("00", "4bf92f3577b34da6a3ce929d0e0e4736", "01")
    assert span_id not in ("00f067aa0ba902b7", "0" * 16)
    for odd in ("not-a-traceparent", "cvc=737", "00-cvc-737", f"00-{'0' * 32}-{'1' * 16}-01"):
        out = await harness.send("customer.create", t, {}, traceparent=odd)
        assert kind(out) == "customer.created", odd
        assert out.get_extension("traceparent") is None, odd


async def test_tracestate_is_passed_on_with_the_traceparent(harness: Harness) -> None:
    """W3C Trace Context: vendors' trace state travels with the trace, hop to hop. The
    command's goes onto its outcome as it came, only when valid and with a valid
    traceparent; a retry under another id gets the first outcome, trace state and all."""
    t = harness.add_tenant()
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    ts = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    out = await harness.send("customer.create", t, {}, traceparent=tp, tracestate=ts)
    assert out.get_extension("tracestate") == ts
    for traceparent, tracestate in (
        (tp, "not a tracestate"),
        (tp, ",".join(f"k{i}=v" for i in range(33))),  # over 32 members
        ("not-a-traceparent", ts),  # no valid parent: no trace state
    ):
        odd = await harness.send(
            "customer.create", t, {}, traceparent=traceparent, tracestate=tracestate
        )
        assert odd.get_extension("tracestate") is None, tracestate
    first = await harness.send(
        "customer.create", t, {"customer_id": "c1"}, idempotency_key="k1", traceparent=tp,
        tracestate=ts,
    )  # fmt: skip
    retry = await harness.send(
        "customer.create", t, {"customer_id": "c1"}, idempotency_key="k1",
        traceparent="00-11111111111111111111111111111111-2222222222222222-01",
        tracestate="other=1",
    )  # fmt: skip
    assert retry.get_id() == first.get_id()
    assert (retry.get_extension("traceparent"), retry.get_extension("tracestate")) == (
        first.get_extension("traceparent"),
        ts,
    )
    # Over W3C's 512 characters: members over 128 dropped, then from the end.
    long_ts = ",".join([f"big=x{'y' * 200}"] + [f"m{i}=v{i:08d}" for i in range(31)])
    cut = await harness.send("customer.create", t, {}, traceparent=tp, tracestate=long_ts)
    passed = str(cut.get_extension("tracestate"))
    assert (
        len(passed) <= 512
        and passed.startswith("m0=v00000000,m1=v00000001")
        and "big=" not in passed
    )
    # A member naming a card security code: refused, as in any other attribute (it would
    # be passed on with the outcome and stored for replays).
    refused = await harness.send("customer.create", t, {}, traceparent=tp, tracestate="cvc=737")
    assert data(refused)["reason"] == "card_data_forbidden", data(refused)
    assert "737" not in json.dumps(data(refused))


# ---- transient failures ----------------------------------------------------------------


async def test_transient_failures_are_retried_with_the_same_key(harness: Harness) -> None:
    t = harness.add_tenant(gateway_options={"fail_first": {"*": 2}})
    out = await harness.send(
        "payment.create",
        t,
        {"amount": 100, "currency": "USD", "payment_method_token": "pm_card_visa"},
    )
    assert kind(out) == "payment.succeeded"


async def test_exhausted_retries_park_the_command(harness: Harness) -> None:
    t = harness.add_tenant(gateway_options={"fail_first": {"*": 50}})
    cmd = build_command(
        "payment.create",
        t,
        {"amount": 100, "currency": "USD", "payment_method_token": "pm_card_visa"},
    )
    emits, out = await harness.send_event(cmd)
    assert out is None
    parked = [e for e in emits if e.topic == harness.settings.retry_topic]
    assert len(parked) == 1 and dict(parked[0].record.headers)["ce_id"] == cmd.get_id().encode()
    assert outcome_of(harness.settings, emits) is None


async def test_numeric_looking_ids_are_not_mistaken_for_card_numbers(harness: Harness) -> None:
    """A UUID whose groups happen to be all digits must not trip the card-number guard."""
    t = harness.add_tenant()
    out = await harness.send(
        "customer.create", t, {}, command_id="58231946-0423-4012-8123-412345678901"
    )
    assert kind(out) == "customer.created"


# ---- privacy -----------------------------------------------------------------------


async def test_export_returns_everything_held_on_the_customer_and_nothing_else(
    harness: Harness,
) -> None:
    t, other = harness.add_tenant(), harness.add_tenant()
    cid, pmid = await _customer_with_card(harness, t)
    pay = await harness.send(
        "payment.create",
        t,
        {"amount": 800, "currency": "USD", "customer_id": cid, "payment_method_id": pmid},
    )
    await harness.send("refund.create", t, {"payment_id": data(pay)["entity_id"], "amount": 100})
    await _customer_with_card(harness, t)  # someone else of the same tenant
    await harness.send("customer.create", other, {"customer_id": cid})  # same id, other tenant
    out = await harness.send("customer.export", t, {"customer_id": cid})
    assert kind(out) == "customer.exported"
    export = data(out)["export"]
    assert export["customer"]["email"] == "a@example.com"
    assert [m["id"] for m in export["payment_methods"]] == [pmid]
    assert [p["id"] for p in export["payments"]] == [data(pay)["entity_id"]]
    assert [r["amount"] for r in export["refunds"]] == [100]
    assert all(
        row["tenant_id"] == t for rows in export.values() if isinstance(rows, list) for row in rows
    )


async def test_an_export_too_large_for_one_record_is_cut_and_says_so(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker refuses a record over its message size (1 MB by default), failing the
    whole batch on every redelivery: the export's rows share a byte budget, and it gives
    the full counts of what it left out."""
    t = harness.add_tenant()
    cid, pmid = await _customer_with_card(harness, t)
    for _ in range(3):
        await harness.send(
            "payment.create",
            t,
            {"amount": 800, "currency": "USD", "customer_id": cid, "payment_method_id": pmid},
        )

    def size(table: dict[str, dict[str, object]], key: str) -> int:
        row = table[key].items()
        return len(orjson.dumps({k: v for k, v in row if k not in ("applied", "entity_type")}))

    payments = sorted(k for k in harness.tables.payments if k.startswith(f"{t}:"))
    budget = size(harness.tables.payment_methods, f"{t}:{pmid}")
    budget += sum(size(harness.tables.payments, k) for k in payments[:2])
    monkeypatch.setattr(handlers, "EXPORT_MAX_BYTES", budget)
    export = data(await harness.send("customer.export", t, {"customer_id": cid}))["export"]
    assert len(export["payments"]) == 2 and export["truncated"] == {"payments": 3}


async def test_erase_scrubs_personal_data_but_keeps_money(harness: Harness) -> None:
    t = harness.add_tenant()
    cid, pmid = await _customer_with_card(harness, t)
    pay = await harness.send(
        "payment.create",
        t,
        {"amount": 800, "currency": "USD", "customer_id": cid, "payment_method_id": pmid},
    )
    out = await harness.send("customer.erase", t, {"customer_id": cid})
    assert kind(out) == "customer.erased"
    stored = harness.tables.customers[f"{t}:{cid}"]
    assert stored["email"] is None and stored["name"] is None and stored["erased"] is True
    assert "a@example.com" not in json.dumps(stored)
    assert harness.tables.payments[f"{t}:{data(pay)['entity_id']}"]["amount"] == 800
    again = await harness.send("customer.erase", t, {"customer_id": cid})
    assert data(again)["reason"] == "invalid_state"
    gone = await harness.send("customer.update", t, {"customer_id": cid, "name": "back"})
    assert data(gone)["reason"] == "not_found"
    assert "a@example.com" not in json.dumps(harness.idempotency)
    assert "Ada" not in json.dumps(harness.idempotency)


async def test_expired_idempotency_records_are_purged(harness: Harness) -> None:
    t, other = harness.add_tenant(), harness.add_tenant()
    for i in range(5):
        await harness.send("customer.create", t, {"customer_id": f"c{i}"})
    await harness.send("customer.create", other, {"customer_id": "c0"})
    ttl = harness.settings.idempotency_ttl_seconds
    mine = [k for k in harness.idempotency if k.startswith(f"{t}:")]
    assert len(mine) == 5
    assert harness.processor.purge_expired(t, time.time()) == 0  # nothing expired yet
    assert harness.processor.purge_expired(t, time.time() + ttl + 1, limit=3) == 3
    assert harness.processor.purge_expired(t, time.time() + ttl + 1) == 2
    assert not [k for k in harness.idempotency if k.startswith(f"{t}:")]
    assert [k for k in harness.idempotency if k.startswith(f"{other}:")], "other tenant untouched"


async def test_remembered_records_queue_for_expiry_under_their_tenant(harness: Harness) -> None:
    """Each write queues (expires_at, key) under the key's part before its first ":" (what
    ``key.split(":", 1)[0]`` gives; the whole key when it has none), in write order, the
    tenant's queue made on its first write and kept."""
    processor = harness.processor
    keys = ["ta:k1", "tb:k:with:colons", "ta:k2", "ta:", "nocolon", ":empty-tenant", "ta:k1"]
    for n, key in enumerate(keys):
        processor._remember(key, {"expires_at": 1000.0 + n})
    expected: dict[str, list[tuple[float, str]]] = {}
    for n, key in enumerate(keys):
        expected.setdefault(key.split(":", 1)[0], []).append((1000.0 + n, key))
    assert {t: list(q) for t, q in processor._expiring.items()} == expected
    assert all(harness.idempotency[k]["expires_at"] for k in keys)


async def test_purge_finds_records_written_before_the_process_started(harness: Harness) -> None:
    t = harness.add_tenant()
    await harness.send("customer.create", t, {"customer_id": "old"})
    # a new processor over the same tables = a restarted worker with recovered tables
    fresh = type(harness.processor)(
        harness.settings, harness.tables, harness.idempotency, harness.tenants, harness.pool
    )
    ttl = harness.settings.idempotency_ttl_seconds
    assert fresh.purge_expired(t, time.time() + ttl + 1) == 1


async def test_purge_finds_records_recovered_for_a_tenant_that_already_ran_here(
    harness: Harness,
) -> None:
    """A tenant's partition arrives in a rebalance: its recovered records sit in the table
    while its first command here already queued a newer one. Both expire, in order.
    (The rebalance asks for a fresh scan; no purge runs before its recovery ends.)"""
    t = harness.add_tenant()
    fresh = type(harness.processor)(
        harness.settings, harness.tables, harness.idempotency, harness.tenants, harness.pool
    )
    fresh.purge_expired("someone-else", time.time())  # the first full scan is done
    await harness.send("customer.create", t, {"customer_id": "recovered"})  # (old processor)
    fresh.rescan_expiry()  # the rebalance hook
    harness.processor = fresh
    await harness.send("customer.create", t, {"customer_id": "new"})
    ttl = harness.settings.idempotency_ttl_seconds
    assert fresh.purge_expired(t, time.time() + ttl + 1) == 2
    assert not [k for k in harness.idempotency if k.startswith(f"{t}:")]


async def test_purge_finds_records_recovered_when_a_partition_comes_back(
    harness: Harness,
) -> None:
    """This worker ran the tenant, lost its partition, then got it back: records another
    worker wrote meanwhile are recovered into the table. The rebalance asks for a rescan."""
    t = harness.add_tenant()
    await harness.send("customer.create", t, {"customer_id": "mine"})
    ttl = harness.settings.idempotency_ttl_seconds
    harness.processor.purge_expired(t, time.time())  # seeded: the tenant is known here
    other_worker = type(harness.processor)(
        harness.settings, harness.tables, harness.idempotency, harness.tenants, harness.pool
    )
    mine = harness.processor
    harness.processor = other_worker
    await harness.send("customer.create", t, {"customer_id": "theirs"})
    mine.rescan_expiry()  # the rebalance hook, when the partition came back
    assert mine.purge_expired(t, time.time() + ttl + 1) == 2


@pytest.mark.parametrize(
    ("sent_at", "accepted"),
    [(b"2026-01-01T00:00:00+05:30", True), (b"2026-01-01T00:00:00+05:30:15", False)],
)
async def test_a_command_time_must_have_an_rfc3339_offset(
    harness: Harness, sent_at: bytes, accepted: bool
) -> None:
    """Python's parser takes an offset with seconds; RFC 3339 does not, and neither do the
    stored idempotency records: every retry under the key used to fail as a bug."""
    t = harness.add_tenant()
    customer = json.dumps({"email": "a@example.com"}).encode()
    for command_id in (b"c-time-1", b"c-time-2"):  # the second: a retry under the same key
        rec = _binary(
            t.encode(),
            customer,
            ce_type=b"com.paystream.command.customer.create",
            ce_id=command_id,
            ce_idempotencykey=b"k-time",
            ce_time=sent_at,
        )
        out = outcome_of(harness.settings, await harness.raw(rec))
        assert out is not None
        if accepted:
            assert kind(out) == "customer.created"
        else:
            assert data(out)["reason"] == "validation_error"
            assert "offset" in data(out)["message"]


# ---- hostile records found in review -------------------------------------------------


@pytest.mark.parametrize("timestamp_ms", [2**62, 253402300800000, -(2**62)])
async def test_a_record_timestamp_no_datetime_holds_is_still_answered(
    harness: Harness, timestamp_ms: int
) -> None:
    """The producer sets the record's timestamp: one past year 9999 raised for the whole
    batch (and in the dead-letter fallback too), on every redelivery."""
    t = harness.add_tenant()
    rec = _customer_create(t)
    hostile = Inbound(**{**rec.__dict__, "timestamp_ms": timestamp_ms})
    emits = await harness.raw(hostile)
    out = outcome_of(harness.settings, emits)
    assert out is not None and kind(out) == "customer.created"
    assert harness.processor.dead_letter_bug(hostile)  # the fallback cannot raise either


@pytest.mark.parametrize("sent_at", [b"0001-01-01T00:00:00+01:00", b"9999-12-31T23:30:00-01:00"])
async def test_a_command_time_outside_utc_is_a_validation_error(
    harness: Harness, sent_at: bytes
) -> None:
    """Accepted, it reached the ledger, which cannot store it: the sink retried for ever."""
    t = harness.add_tenant()
    rec = _customer_create(t, ce_time=sent_at)
    out = outcome_of(harness.settings, await harness.raw(rec))
    assert out is not None and data(out)["reason"] == "validation_error"
    assert "out of range" in data(out)["message"]


async def test_a_command_without_time_gets_the_same_outcome_on_redelivery(
    harness: Harness,
) -> None:
    """The SDK fills a missing time with now: the outcome's time (and bytes) differed on
    every redelivery. It is the record's timestamp."""
    t = harness.add_tenant()
    rec = _customer_create(t)
    rec = Inbound(**{**rec.__dict__, "timestamp_ms": 1_600_000_000_000})
    first = [e.record for e in await harness.raw(rec) if e.topic == harness.settings.events_topic]
    # Worked out afresh, not replayed from what was stored (a crash lost it all).
    harness.idempotency.clear()
    harness.tables.customers.clear()
    again = [e.record for e in await harness.raw(rec) if e.topic == harness.settings.events_topic]
    assert first == again and len(first) == 1
    assert dict(first[0].headers)["ce_time"].startswith(b"2020-09-13T12:26:40")


@pytest.mark.parametrize("structured", [False, True])
async def test_a_command_without_id_is_dead_lettered_not_given_a_random_one(
    harness: Harness, structured: bool
) -> None:
    """The SDK made up a random id: each redelivery ran again under a new id (and a new
    idempotency key), charging again."""
    t = harness.add_tenant()
    body = {"amount": 1000, "currency": "USD", "payment_method_token": "pm_card_visa"}
    if structured:
        rec = _structured(t, id=None, type="com.paystream.command.payment.create", data=body)
    else:
        rec = _binary(t.encode(), json.dumps(body).encode())
        del rec.headers["ce_id"]  # type: ignore[attr-defined]
    for _ in range(2):
        emits = await harness.raw(rec)
        assert [e.topic for e in emits] == [harness.settings.dlq_topic]
        assert dict(emits[0].record.headers)["paystream-dlq-reason"] == b"not_a_cloudevent"
    assert await _effects(harness, t) == []


@pytest.mark.parametrize("value", [b"[]", b"0", b"false", b'"x"'])
async def test_data_that_is_not_an_object_is_a_validation_error(
    harness: Harness, value: bytes
) -> None:
    t = harness.add_tenant()
    rec = _binary(t.encode(), value, ce_type=b"com.paystream.command.customer.create")
    out = outcome_of(harness.settings, await harness.raw(rec))
    assert out is not None and data(out)["reason"] == "validation_error"
    assert harness.tables.customers == {}


async def test_a_card_number_under_a_repeated_key_is_refused_not_parked(harness: Harness) -> None:
    """The parsed scan saw only the last of two "description"s; the parked record (kept
    bytes and all) carried the card number to the retry topic."""
    t = harness.add_tenant(gateway_options={"fail_rate": 1.0})
    value = (
        b'{"amount":100,"currency":"USD","payment_method_token":"pm_card_visa",'
        b'"description":"4111 1111 1111 1111","description":"order 7"}'
    )
    emits = await harness.raw(_binary(t.encode(), value))
    out = outcome_of(harness.settings, emits)
    assert out is not None and data(out)["reason"] == "card_data_forbidden"
    assert _leaks(emits, "4111 1111 1111 1111") == []
    assert harness.settings.retry_topic not in [e.topic for e in emits]


def _sizes_fit(emits: list[Emit], limit: int = 1_000_000) -> bool:
    return all(
        len(e.record.value)
        + len(e.record.key or b"")
        + sum(len(k) + len(v) for k, v in e.record.headers)
        < limit
        for e in emits
    )


async def test_a_huge_key_and_tenant_header_are_dead_lettered_within_the_message_size(
    harness: Harness,
) -> None:
    """A 250 KB tenant id in the key and header (value small) made a 1.25 MB rejection the
    broker refused: the batch failed on every redelivery."""
    huge = ("t" * 250_000).encode()
    emits = await harness.raw(_binary(huge, b"{}", ce_tenantid=huge))
    assert [e.topic for e in emits] == [harness.settings.dlq_topic]  # no outcome echoing it
    assert dict(emits[0].record.headers)["paystream-dlq-reason"] == b"payload_too_large"
    assert _sizes_fit(emits)


async def test_a_record_too_large_to_produce_again_is_dead_lettered_without_its_bytes(
    harness: Harness,
) -> None:
    t = harness.add_tenant()
    rec = _binary(t.encode(), b'{"x": "' + b"p" * 990_000 + b'"}')
    emits = await harness.raw(rec)
    dead = [e for e in emits if e.topic == harness.settings.dlq_topic]
    assert len(dead) == 1 and dead[0].record.value == b""
    headers = dict(dead[0].record.headers)
    assert headers["paystream-dlq-dropped"] == b"too_large_to_keep"
    assert headers["paystream-source"] == b"c/-1/3"  # where to find it
    out = outcome_of(harness.settings, emits)
    assert out is not None and data(out)["reason"] == "payload_too_large"
    assert _sizes_fit(emits)


async def test_a_command_id_longer_than_an_idempotency_key_is_refused(harness: Harness) -> None:
    """Every outcome and every entity the command touches keeps its id: 200 KB ids made
    a customer's changelog record over 1 MB in three updates."""
    t = harness.add_tenant()
    long_id = ("i" * 256).encode()
    rec = _customer_create(t, ce_id=long_id)
    out = outcome_of(harness.settings, await harness.raw(rec))
    assert out is not None and data(out)["reason"] == "validation_error"
    assert data(out)["message"].startswith("id too long") and harness.tables.customers == {}
    # Cut short, the id could be another command's whole id: its sender would take this
    # answer for its own.
    digest = hashlib.sha256(long_id).hexdigest()
    assert out.get_extension("causationid") == f"sha256:{digest}"


def _structured(tenant: str, **envelope: object) -> Inbound:
    """A structured-mode command as consumed (attributes given as None are left out)."""
    body = {
        "specversion": "1.0",
        "id": "s1",
        "type": "com.paystream.command.customer.create",
        "source": "/x",
        "tenantid": tenant,
        "data": {},
        **envelope,
    }
    return Inbound(
        key=tenant.encode(),
        value=json.dumps({k: v for k, v in body.items() if v is not None}).encode(),
        headers={"content-type": b"application/cloudevents+json"},
        timestamp_ms=0,
        topic="c",
        offset=3,
    )


@pytest.mark.parametrize("case", ["structured_bad_time", "upper_case_headers"])
async def test_a_dead_lettered_command_that_names_itself_is_still_answered(
    harness: Harness, case: str
) -> None:
    """Dead-lettered records got a rejection only when lower-case ce_id/ce_tenantid
    headers named them: a structured command, or headers written CE_ID, got silence."""
    t = harness.add_tenant()
    if case == "structured_bad_time":
        rec = _structured(t, time="yesterday")
    else:
        rec = _binary(t.encode(), b"x" * 70_000)  # oversized
        rec = Inbound(**{**rec.__dict__, "headers": {k.upper(): v for k, v in rec.headers.items()}})
    emits = await harness.raw(rec)
    assert harness.settings.dlq_topic in [e.topic for e in emits]
    out = outcome_of(harness.settings, emits)
    assert out is not None and kind(out) == "command.rejected"
    assert out.get_extension("causationid") == ("s1" if case == "structured_bad_time" else "c1")


async def test_an_id_no_header_can_carry_is_dead_lettered_without_an_internal_error(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """JSON can spell a lone surrogate; the outcome's ce_id header could not encode it,
    and the command ended in the bug path (internal_error, a logged traceback)."""
    t = harness.add_tenant()
    rec = _structured(t)
    rec = Inbound(**{**rec.__dict__, "value": rec.value.replace(b'"s1"', b'"\\ud800"')})
    emits = await harness.raw(rec)
    assert [e.topic for e in emits] == [harness.settings.dlq_topic]
    assert dict(emits[0].record.headers)["paystream-dlq-reason"] == b"not_a_cloudevent"
    assert "Traceback" not in caplog.text


async def test_json_escaped_text_is_not_read_as_a_card_number(harness: Harness) -> None:
    """json.dumps escapes "№" as \\u2116: the raw text then shows "21161234567894",
    14 digits passing Luhn, and the command was refused as card data."""
    t = harness.add_tenant()
    value = json.dumps({"name": "Счёт №1234567894"}).encode()  # ASCII-only, escaped
    assert b"\\u2116" in value
    rec = _binary(t.encode(), value, ce_type=b"com.paystream.command.customer.create")
    out = outcome_of(harness.settings, await harness.raw(rec))
    assert out is not None and kind(out) == "customer.created"


async def test_long_ids_from_an_answered_record_keep_their_answer(harness: Harness) -> None:
    """A record an older version answered (no limit on id length then), redelivered
    after the upgrade, keeps its outcome rather than becoming a validation_error."""
    t = harness.add_tenant()
    rec = _customer_create(t, ce_id=b"i" * 300, ce_idempotencykey=b"k1")
    refused = outcome_of(harness.settings, await harness.raw(rec))
    assert refused is not None and data(refused)["message"].startswith("id too long")
    # What the older version stored for it: run it with the limit out of the way.
    limit = pipeline_module.ID_MAX_CHARS
    pipeline_module.ID_MAX_CHARS = 1000
    try:
        answered = outcome_of(harness.settings, await harness.raw(rec))
    finally:
        pipeline_module.ID_MAX_CHARS = limit
    assert answered is not None and kind(answered) == "customer.created"
    again = outcome_of(harness.settings, await harness.raw(rec))
    assert again is not None and again.get_id() == answered.get_id()


@pytest.mark.parametrize("structured", [False, True])
async def test_a_huge_tenantid_attribute_is_refused_before_it_is_echoed(
    harness: Harness, structured: bool
) -> None:
    """Rejections echo the tenant id about four times: a 250 KB one (in a structured
    body, under the raised command size limit) made an outcome over 1 MB."""
    huge = "t" * 250_000
    processor = harness.processor
    processor.settings = processor.settings.model_copy(update={"command_max_bytes": 256 * 1024})
    if structured:
        rec = _structured("short", tenantid=huge, type="com.paystream.command.nothing")
    else:
        rec = _binary(b"short", b"{}", ce_tenantid=huge.encode())
    emits = await harness.raw(rec)
    assert _sizes_fit(emits)
    outcomes = [e for e in emits if e.topic == harness.settings.events_topic]
    assert _sizes_fit(outcomes, 4 * 1024)
    out = outcome_of(harness.settings, emits)
    if structured:  # answered; in binary mode the header is over its own limit (DLQ)
        assert out is not None and data(out)["message"].startswith("tenantid too long")


async def test_large_headers_paystream_does_not_read_do_not_count(harness: Harness) -> None:
    t = harness.add_tenant()
    rec = _customer_create(t, baggage=b"b" * 100_000)
    out = outcome_of(harness.settings, await harness.raw(rec))
    assert out is not None and kind(out) == "customer.created"


async def test_a_card_security_code_in_metadata_is_refused_and_not_remembered(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """PCI DSS: never kept after authorisation, even encrypted. Metadata is the only place
    a client names keys; the corrected command under the same key then goes through."""
    caplog.set_level(logging.DEBUG)
    t = harness.add_tenant()
    body = {"email": "a@example.com", "metadata": {"order": "o-1", "card_cvc": "7373"}}
    emits, out = await harness.send_event(
        build_command("customer.create", t, body, idempotency_key="k1")
    )
    assert out is not None and data(out)["reason"] == "card_data_forbidden"
    assert "card_cvc" in data(out)["message"]
    blob = b"".join(e.record.value + b"".join(v for _, v in e.record.headers) for e in emits)
    # Not as a run of its own: inside a random hex id or a timestamp it is chance.
    alone = re.compile(r"(?<![0-9A-Fa-f])7373(?![0-9A-Fa-f])")
    assert alone.search(blob.decode("utf-8", "replace")) is None
    assert alone.search(caplog.text) is None
    fixed = {**body, "metadata": {"order": "o-1"}}
    out = await harness.send("customer.create", t, fixed, idempotency_key="k1")
    assert out.get_type() == "com.paystream.customer.created"


async def test_a_command_id_reused_once_its_records_expired_gets_other_event_ids(
    harness: Harness,
) -> None:
    """Outcome ids name the record that first produced them: every re-emission keeps
    them, and another request under a command id whose idempotency records expired gets
    its own (the same ids made two payments one event, and the ledger kept the first)."""
    t = harness.add_tenant()
    pay = {"amount": 1999, "currency": "USD", "payment_method_token": "pm_card_visa"}
    day1 = build_command("payment.create", t, {**pay, "payment_id": "p1"}, command_id="c-7")
    when = 1_700_000_000_000
    emits, first = await harness.send_event(day1, offset=10, timestamp_ms=when)
    again, redelivered = await harness.send_event(day1, offset=10, timestamp_ms=when)
    assert first is not None and redelivered is not None
    assert again[0].record == emits[0].record  # this very record: byte-identical
    _, resent = await harness.send_event(day1, offset=11)  # sent again: a replay
    assert resent is not None and resent.get_id() == first.get_id()
    assert first.get_id() != outcome_id(t, "c-7", "payment.succeeded")  # named by 0:10

    def window_passes() -> None:
        for key in [k for k in harness.idempotency if k.startswith(f"{t}:")]:
            del harness.idempotency[key]

    window_passes()
    # The same command once more: the payment remembers it, and its first ids.
    _, remembered = await harness.send_event(day1, offset=12)
    assert remembered is not None and remembered.get_id() == first.get_id()
    window_passes()
    # Another request under the same id: another event.
    day3 = build_command(
        "payment.create", t, {**pay, "payment_id": "p3", "amount": 5000}, command_id="c-7"
    )
    _, other = await harness.send_event(day3, offset=13)
    assert other is not None and other.get_type() == "com.paystream.payment.succeeded"
    assert other.get_id() != first.get_id()
    assert data(other)["entity_id"] == "p3"


async def test_customer_metadata_updates_merge_key_by_key_as_the_provider_does(
    harness: Harness,
) -> None:
    """Stripe merges metadata on update ("" removes a key): replacing the whole map here
    left paystream's record and the provider's apart."""
    t = harness.add_tenant()
    first = {"email": "a@example.com", "customer_id": "c1", "metadata": {"a": "1", "b": "2"}}
    await harness.send("customer.create", t, first)
    out = await harness.send(
        "customer.update", t, {"customer_id": "c1", "metadata": {"b": "", "c": "3"}}
    )
    assert data(out)["object"]["metadata"] == {"a": "1", "c": "3"}
    unchanged = await harness.send("customer.update", t, {"customer_id": "c1", "metadata": {}})
    assert data(unchanged)["object"]["metadata"] == {"a": "1", "c": "3"}
    gateway = harness.pool.get(Tenant.model_validate(harness.tenants[t]))
    assert isinstance(gateway, SimulatorGateway)
    at_provider = await gateway._store.read(data(out)["object"]["provider_customer_id"])
    assert at_provider is not None and at_provider["metadata"] == {"a": "1", "c": "3"}


async def test_a_security_code_anywhere_a_client_names_keys_is_refused(
    harness: Harness,
) -> None:
    t = harness.add_tenant()
    pay = await harness.send(
        "payment.create",
        t,
        {"amount": 900, "currency": "USD", "payment_method_token": "pm_card_createDispute"},
    )
    evidence = {"dispute_id": data(pay)["object"]["dispute_id"], "evidence": {"cvv2": "123"}}
    out = await harness.send("dispute.submit_evidence", t, evidence)
    assert data(out)["reason"] == "card_data_forbidden"
    # A key merely looking like one, with another kind of value, or another id: accepted.
    for metadata in ({"cid": "1042"}, {"cvc_policy": "required"}, {"order": "1234"}):
        ok = await harness.send("customer.create", t, {"metadata": metadata})
        assert kind(ok) == "customer.created", metadata


@pytest.mark.parametrize(
    ("key", "kept"),
    [
        (b"acme-1", True),
        (PAN.encode(), False),  # (a tenant id's characters, and a card number)
        (b"4111 1111 1111 1111", False),
        ("caf\u00e9".encode(), False),
        (b"x" * 64, False),
        (b"Acme", False),
        (None, False),
    ],
)
async def test_a_dead_letter_without_its_bytes_keeps_only_a_tenant_id_key(
    harness: Harness, key: bytes | None, kept: bool
) -> None:
    """Review h70e: a dead letter kept without its bytes (card data, or too large) kept no
    key at all, so `dlq list --tenant` could not find it (`tenant=?`). Its key is kept
    where it is a tenant id holding no card data, and nowhere else."""
    harness.add_tenant("acme-1")  # (registered: review h70g)
    big = {"description": f"card {PAN} " + "x" * harness.settings.command_max_bytes}
    rec = replace(_binary(b"acme-1", json.dumps(big).encode()), key=key)
    emits = await harness.raw(rec)
    [dlq] = [e for e in emits if e.topic == harness.settings.dlq_topic]
    assert dlq.record.value == b""
    assert dlq.record.key == (key if kept else None)
    assert not any(PAN.encode() in (e.record.key or b"") for e in emits)


async def test_a_dead_letter_holding_a_security_code_is_not_kept(harness: Harness) -> None:
    t = harness.add_tenant()
    rec = _structured(t, data={"metadata": {"card_cvc": "7373"}})
    rec = replace(rec, value=(rec.value or b"")[:-1])  # cut short: not a CloudEvent
    emits = await harness.raw(rec)
    [dead] = [e for e in emits if e.topic == harness.settings.dlq_topic]
    assert dead.record.value == b"" and dead.record.key == t.encode()  # (a tenant id)
    assert dict(dead.record.headers)["paystream-dlq-redacted"] == b"card_security_code"
    assert not any(b"7373" in e.record.value for e in emits)


@pytest.mark.parametrize(
    ("carried", "expected"),
    [(None, 5_000), (b"2000", 2_000), (b"9000", 5_000), (b"junk", 5_000)],
    ids=["first-park", "re-parked-after-replay", "a-later-claim-is-ignored", "unreadable"],
)  # (record times of 5 s after the epoch: a producer's future stamp is capped at now)
async def test_a_parked_command_says_when_it_was_first_run(
    harness: Harness, carried: bytes | None, expected: int
) -> None:
    """`dlq replay` holds back what is older than the provider's key window, counted from
    the first attempt: recorded by the worker (the broker's time of the command record),
    kept through replays, never made later by a header (the producer's `time` was used
    before: an old business time held back the whole retry partition)."""
    t = harness.add_tenant(gateway_options={"fail_first": {"*": 50}})  # parks the command
    cmd = build_command(
        "payment.create",
        t,
        {"amount": 100, "currency": "USD", "payment_method_token": "pm_card_visa"},
    )
    rec = encode_event(cmd, t.encode(), CloudEventsMode.BINARY)
    headers = dict(rec.headers)
    if carried is not None:
        headers[pipeline_module.FIRST_ATTEMPT_HEADER] = carried
    emits = await harness.raw(
        Inbound(key=rec.key, value=rec.value, headers=headers, timestamp_ms=5_000, topic="c")
    )
    [parked] = [e for e in emits if e.topic == harness.settings.retry_topic]
    first = dict(parked.record.headers)[pipeline_module.FIRST_ATTEMPT_HEADER]
    assert int(first) == expected


@pytest.mark.parametrize("mode", [CloudEventsMode.BINARY, CloudEventsMode.STRUCTURED])
async def test_security_code_rules_are_the_same_in_either_mode(
    harness: Harness, mode: CloudEventsMode
) -> None:
    """A bytes prefilter once let binary-mode commands by that structured mode refused
    (structured bodies always hold "specversion")."""
    t = harness.add_tenant()
    refused = await harness.send("customer.create", t, {"metadata": {"c_v_v": "123"}}, mode=mode)
    assert data(refused)["reason"] == "card_data_forbidden"
    for metadata in ({"amt_rcvd": "500"}, {"mcc_value": "5411"}):
        ok = await harness.send("customer.create", t, {"metadata": metadata}, mode=mode)
        assert kind(ok) == "customer.created", metadata


@pytest.mark.parametrize(
    "value",
    [
        b'{"metadata": {"cvv": "123", "cvv": "x"}}',  # repeated: parsed keeps the last
        b'{"data": "{\\"cvv\\": \\"123\\"}"}',  # JSON inside a string
    ],
    ids=["repeated-key", "json-in-a-string"],
)
async def test_dead_letters_holding_a_security_code_anywhere_are_not_kept(
    harness: Harness, value: bytes
) -> None:
    t = harness.add_tenant()
    not_a_cloudevent = Inbound(key=t.encode(), value=value, headers={}, timestamp_ms=0, topic="c")
    emits = await harness.raw(not_a_cloudevent)
    [dead] = [e for e in emits if e.topic == harness.settings.dlq_topic]
    assert dead.record.value == b"" and b"123" not in b"".join(v for _, v in dead.record.headers)


async def test_a_future_record_time_is_not_a_first_attempt(harness: Harness) -> None:
    """On a topic whose record times the producer sets, a stamp in the future would make
    a parked command look fresh for as long: the first attempt is never after now."""
    t = harness.add_tenant(gateway_options={"fail_first": {"*": 50}})  # parks the command
    cmd = build_command(
        "payment.create",
        t,
        {"amount": 100, "currency": "USD", "payment_method_token": "pm_card_visa"},
    )
    rec = encode_event(cmd, t.encode(), CloudEventsMode.BINARY)
    future = int(time.time() * 1000) + 86_400_000
    emits = await harness.raw(
        Inbound(key=rec.key, value=rec.value, headers=dict(rec.headers), timestamp_ms=future)
    )
    [parked] = [e for e in emits if e.topic == harness.settings.retry_topic]
    first = int(dict(parked.record.headers)[pipeline_module.FIRST_ATTEMPT_HEADER])
    assert first <= int(time.time() * 1000)


@pytest.mark.parametrize("committed", [10, -1])  # -1: a worker that just took it over
async def test_a_whole_batch_redelivered_is_not_applied_again_whatever_its_length(
    redis_url: str, committed: int
) -> None:
    """Entities remembered their last 16 commands: a batch (up to 500) touching one more
    often than that, redelivered after a crash that kept the entity's changelog write
    but lost the idempotency writes, applied its first commands again, and each rerun
    pushed out the next (17 updates applied twice; a capture answered invalid_state)."""
    async with running_harness(redis_url, committed=lambda partition: committed) as h:
        t = h.add_tenant()
        await h.send("customer.create", t, {"customer_id": "c1", "email": "a0@x.io"})
        batch = [
            build_command(
                "customer.update", t, {"customer_id": "c1", "email": f"a{n}@x.io"},
                command_id=f"upd-{n}",
            )
            for n in range(1, 21)
        ]  # fmt: skip
        first = [(await h.send_event(c, offset=10 + n))[0] for n, c in enumerate(batch)]
        record = h.tables.customers[f"{t}:c1"]
        # none committed (and the creating command is kept for good)
        assert record["version"] == 21 and len(record["applied"]) == 21
        for n in range(1, 21):
            del h.idempotency[f"{t}:upd-{n}"]  # the crash lost these writes
        again = [(await h.send_event(c, offset=10 + n))[0] for n, c in enumerate(batch)]
        assert [e[0].record for e in again] == [e[0].record for e in first]
        assert h.tables.customers[f"{t}:c1"]["version"] == 21


async def test_entities_forget_committed_commands_past_their_memory() -> None:
    applied = {f"c{n}": {"type": "t", "data": {}, "salt": f"0:{n}"} for n in range(30)}
    trim_applied(applied, lambda partition: 20)  # offsets 20-29 may still come again
    assert list(applied) == [f"c{n}" for n in range(14, 30)]  # 16 kept, the rest committed
    applied = {f"c{n}": {"type": "t", "data": {}, "salt": f"0:{n}"} for n in range(30)}
    trim_applied(applied, lambda partition: 5)
    assert list(applied) == [f"c{n}" for n in range(5, 30)]  # all uncommitted ones kept
    trim_applied(applied, lambda partition: -1)  # not known yet (a partition just taken)
    assert len(applied) == 25
    trim_applied(applied)  # no committed offsets at all: the count decides
    assert len(applied) == APPLIED_MEMORY
    # The command that made the entity is kept beyond the count (see test_let_through).
    applied = {f"c{n}": {"type": "t", "data": {}, "salt": f"0:{n}"} for n in range(30)}
    trim_applied(applied, lambda partition: 100, keep="c0")
    assert list(applied) == ["c0", *(f"c{n}" for n in range(14, 30))]


async def test_an_entity_too_large_for_the_broker_sheds_committed_outcomes_first() -> None:
    applied = {f"c{n}": {"type": "t", "data": {}, "salt": f"0:{n}"} for n in range(30)}
    record = {"id": "e", "applied": applied}
    shed = shed_applied(record, lambda partition: 20)
    assert shed is not None and list(shed["applied"]) == [f"c{n}" for n in range(20, 30)]
    made = shed_applied({**record, "created_by": "c0"}, lambda partition: 20)
    assert made is not None and list(made["applied"]) == ["c0", *(f"c{n}" for n in range(20, 30))]
    # Only uncommitted ones left: the older half goes (the last resort).
    again = shed_applied(shed, lambda partition: 20)
    assert again is not None and list(again["applied"]) == [f"c{n}" for n in range(25, 30)]


# ---- the request hash, written from a command model's fields ---------------------------

_PLAIN_FIELD_LEAVES: set[Any] = {str, int, bool, type(None)}


def _plain_field(annotation: Any) -> bool:
    """A field type orjson writes as ``model_dump(mode="json")`` does (the request hash
    is written from a validated command's fields)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _plain_field(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return all(_plain_field(arg) for arg in typing.get_args(annotation))
    if origin is typing.Literal:
        return all(type(arg) is str for arg in typing.get_args(annotation))
    if origin is dict:
        return all(
            _plain_field(arg) and arg is not type(None) for arg in typing.get_args(annotation)
        )
    if origin is list:  # (a list of ids: orjson writes it as the dump does)
        return all(
            _plain_field(arg) and arg is not type(None) for arg in typing.get_args(annotation)
        )
    if annotation in _PLAIN_FIELD_LEAVES:
        return True
    return isinstance(annotation, type) and issubclass(annotation, StrEnum)


@pytest.mark.parametrize("command_type", sorted(COMMANDS))
async def test_every_command_model_has_only_fields_its_hash_writes_as_dumped(
    command_type: str,
) -> None:
    model = COMMANDS[command_type]
    for name, field in model.model_fields.items():
        # (A model of nested lines is hashed from its dump: HASH_BY_DUMP.)
        assert model.HASH_BY_DUMP or _plain_field(field.rebuild_annotation()), (
            f"{model.__name__}.{name}"
        )
        assert field.alias is None and field.serialization_alias is None
    assert not model.model_computed_fields
    assert model.model_config.get("extra") == "forbid"


@pytest.mark.parametrize(
    ("command_type", "body"),
    [
        ("payment.create", {"amount": 1234, "currency": "usd", "payment_method_token": "pm_x"}),
        (
            "payment.create",
            {
                "payment_id": "p1",
                "amount": 5,
                "currency": " JPY ",
                "payment_method_id": "pm1",
                "customer_id": "c1",
                "capture": "manual",
                "description": ' order \u2603 "5" ',
                "statement_descriptor": "X",
                "return_url": "https://example.invalid/r?a=1",
                "metadata": {"z": "1", "a": "\u00e9", "m": " "},
            },
        ),
        ("payment.capture", {"payment_id": "p1"}),
        ("payment.capture", {"payment_id": "p1", "amount": 7}),
        ("payment.cancel", {"payment_id": "p1", "reason": "duplicate"}),
        ("refund.create", {"payment_id": "p1", "amount": 3, "metadata": {"b": "", "a": "x"}}),
        ("customer.create", {"email": "a@b.c", "name": "Zo\u00eb", "metadata": {"k": "v"}}),
        ("customer.update", {"customer_id": "c1", "metadata": None}),
        ("customer.erase", {"customer_id": "c1"}),
        ("payment_method.attach", {"customer_id": "c1", "token": "pm_card_visa"}),
        ("dispute.submit_evidence", {"dispute_id": "d1", "evidence": {"b": "2", "a": "1"}}),
        ("dispute.submit_evidence", {"dispute_id": "d1", "evidence": {"a": "1"}, "submit": False}),
        (
            "payment.create",
            {
                "amount": 5,
                "currency": "EUR",
                "payment_method_token": "pm_x",
                "tax_calculation_id": "taxcalc_1",
            },
        ),
        (
            "subscription.create",
            {
                "customer_id": "c",
                "payment_method_id": "p",
                "amount": 5,
                "currency": "EUR",
                "interval": "month",
                "tax_rate_ids": ["a", "b"],
            },
        ),
        (
            "tax.calculate",
            {
                "currency": "EUR",
                "line_items": [
                    {"amount": 5, "reference": "r", "tax_rate_ids": ["a"]},
                    {"amount": 7, "reference": "s"},
                ],
            },
        ),
        (
            "tax_rate.create",
            {"display_name": "VAT", "percentage": "20", "inclusive": True, "country": "FR"},
        ),
    ],
)
async def test_the_request_hash_of_a_model_is_that_of_its_dump(
    command_type: str, body: Any
) -> None:
    data = COMMANDS[command_type].model_validate(body)
    # (less the fields added since the command's first release while unset: the hash of
    # a request sent before them stays what it was)
    omitted = COMMANDS[command_type].HASH_OMITS_NONE
    dumped = {
        k: v for k, v in data.model_dump(mode="json").items() if not (k in omitted and v is None)
    }
    # (as it was computed: from the dump)
    expected = hashlib.sha256(
        orjson.dumps([command_type, dumped], option=orjson.OPT_SORT_KEYS)
    ).hexdigest()
    assert pipeline_module._request_hash(command_type, data) == expected
    assert pipeline_module._request_hash(command_type, dumped) == expected


async def test_a_payment_or_subscription_without_tax_keeps_its_request_hash() -> None:
    """payment.create's tax_calculation_id and subscription.create's tax_rate_ids, unset,
    are not in the hash: a command stored (parked, redelivered) before they existed is the
    same request after the upgrade, not an idempotency conflict with itself."""
    body = {"amount": 5, "currency": "EUR", "payment_method_token": "pm_card_visa"}
    before = {
        "payment_id": None, "amount": 5, "currency": "EUR", "customer_id": None,
        "payment_method_id": None, "payment_method_token": "pm_card_visa",
        "capture": "auto", "description": None, "statement_descriptor": None,
        "return_url": None, "metadata": {},
    }  # fmt: skip
    expected = hashlib.sha256(
        orjson.dumps(["payment.create", before], option=orjson.OPT_SORT_KEYS)
    ).hexdigest()
    data = COMMANDS["payment.create"].model_validate(body)
    assert pipeline_module._request_hash("payment.create", data) == expected
    assert pipeline_module._request_hash("payment.create", data.model_dump(mode="json")) == (
        expected
    )
    sub = {"customer_id": "c", "payment_method_id": "p", "amount": 5, "currency": "EUR",
           "interval": "month"}  # fmt: skip
    sub_before = {
        **sub, "subscription_id": None, "interval_count": 1, "trial_days": 0,
        "description": None, "metadata": {},
    }  # fmt: skip
    assert (
        pipeline_module._request_hash(
            "subscription.create", COMMANDS["subscription.create"].model_validate(sub)
        )
        == hashlib.sha256(
            orjson.dumps(["subscription.create", sub_before], option=orjson.OPT_SORT_KEYS)
        ).hexdigest()
    )


async def test_a_context_derives_the_ids_ids_derives() -> None:
    from paystream.agents.handlers import HandlerContext, Tables
    from paystream.ids import derived_id
    from paystream.streams.outcomes import CommandRef

    cmd = CommandRef(
        tenant_id="t1",
        command_id="c-\u00e9-1",
        command_type="payment.create",
        idempotency_key="k",
        time=record_time(0),
    )
    ctx = HandlerContext(cmd=cmd, gateway=None, tables=Tables({}, {}, {}, {}, {}))  # type: ignore[arg-type]
    for prefix in ("pay", "dp", "cus", "pm", "re", "pay", ""):
        assert ctx.derived_id(prefix) == derived_id(prefix, "t1", "c-\u00e9-1")


async def test_an_idle_tenants_expired_records_are_found_for_the_sweep(harness: Harness) -> None:
    """Review finding: the purge runs on a tenant's own commands only, so an idle (or
    removed) tenant's records, stored outcomes with customers' e-mail addresses among
    them, stayed for ever. The retention sweep asks the processor instead."""
    idle, busy = harness.add_tenant(), harness.add_tenant()
    await harness.send("customer.create", idle, {"email": "ada@example.com"})
    p = harness.processor
    ttl = harness.settings.idempotency_ttl_seconds
    # (The sweep gives expired records a day's grace: a command taken before one expired,
    # redelivered after a crash, is answered from it.)
    later = time.time() + ttl + 86_400
    keys = [k for k in harness.idempotency if k.startswith(f"{idle}:")]
    assert keys
    assert all(not p.idempotency_expired(k, harness.idempotency[k], time.time()) for k in keys)
    assert p.purge_expired(busy, later) == 0  # another tenant's traffic purges none of them
    for k in keys:  # as the sweep does
        assert p.idempotency_expired(k, harness.idempotency[k], later)
        del harness.idempotency[k]
    assert idle not in p._expiring  # (its queue went with its records)


@pytest.mark.parametrize("size", [70_000, 250_000])
async def test_an_oversized_structured_command_s_sender_is_answered(
    harness: Harness, size: int
) -> None:
    """Its id and tenant are in its body: read (up to the ceiling any limit may be set
    to), its sender is told, for good (review h59b: left waiting for ever)."""
    t = harness.add_tenant()
    big = build_command("customer.create", t, {"description": "x" * size}, command_id="big-1")
    emits, out = await harness.send_event(big, mode=CloudEventsMode.STRUCTURED)
    [dead] = [e for e in emits if e.topic == harness.settings.dlq_topic]
    assert out is not None and data(out)["reason"] == "payload_too_large"
    assert out.get_extension("causationid") == "big-1"
    assert dict(dead.record.headers)["paystream-dlq-answered"] == b"payload_too_large"


async def test_a_structured_command_past_the_ceiling_is_not_read_for_its_sender(
    harness: Harness,
) -> None:
    t = harness.add_tenant()
    big = build_command("customer.create", t, {"description": "x" * 300_000})
    emits, out = await harness.send_event(big, mode=CloudEventsMode.STRUCTURED)
    assert out is None and [e.topic for e in emits] == [harness.settings.dlq_topic]


async def test_a_park_says_what_the_provider_said(harness: Harness) -> None:
    """The code alone (`provider_unavailable`) told an operator nothing of why (review
    h59b): the park carries the gateway's message, which `dlq list` shows."""
    from paystream.dlq import ParkedRecord

    t = harness.add_tenant(gateway_options={"fail_rate": 1.0})
    data_ = {"amount": 700, "currency": "USD", "payment_method_token": "pm_card_visa"}
    emits, out = await harness.send_event(build_command("payment.create", t, data_))
    assert out is None
    [park] = [e for e in emits if e.topic == harness.settings.retry_topic]
    headers = dict(park.record.headers)
    assert headers["paystream-park-reason"] == b"provider_unavailable"
    detail = headers["paystream-park-detail"].decode()
    assert detail and len(detail) <= 500
    parked = ParkedRecord("r", 0, 0, park.record.key, park.record.value, park.record.headers, 0)
    assert parked.detail == detail


async def test_a_park_whose_provider_text_will_not_encode_is_parked_as_itself(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lone surrogate (a JSON error body's "\\ud800", which json.loads keeps) or a
    terminal control in the provider's message: the park keeps its reason (review h59e:
    the header's encode raised, and it was parked as internal_error)."""
    from paystream.gateways.errors import ErrorCode, GatewayError
    from paystream.gateways.simulator import gateway as sim_gateway

    def transient(self: Any, message: str) -> GatewayError:
        text = "upstream said \ud800 \x1b[2J"
        return GatewayError(ErrorCode.PROVIDER_UNAVAILABLE, text, provider="simulator")

    monkeypatch.setattr(sim_gateway.SimulatorGateway, "_transient", transient)
    t = harness.add_tenant(gateway_options={"fail_rate": 1.0})
    data_ = {"amount": 700, "currency": "USD", "payment_method_token": "pm_card_visa"}
    emits, _ = await harness.send_event(build_command("payment.create", t, data_))
    [park] = [e for e in emits if e.topic == harness.settings.retry_topic]
    headers = dict(park.record.headers)
    assert headers["paystream-park-reason"] == b"provider_unavailable"
    assert headers["paystream-park-detail"].endswith(b"upstream said ?  [2J")

"""Commands at the edges of the CloudEvents spec and of the command models, through the
real pipeline (review findings)."""

from __future__ import annotations

import base64
import json
import re
import time
from typing import Any

import pytest
from pydantic import ValidationError

from paystream.agents.pipeline import Inbound
from paystream.client import build_command
from paystream.settings import CloudEventsMode
from paystream.streams import codec
from paystream.streams.codec import _FORMAT, decode_record, encode_event
from paystream.streams.commands import DATA_NOT_AN_OBJECT, SubmitDisputeEvidence
from tests.agents.harness import Harness, data, kind, outcome_of


@pytest.mark.parametrize("ctype", [b"Application/JSON", b"application/JSON; charset=utf-8"])
async def test_a_content_type_in_capitals_is_json(harness: Harness, ctype: bytes) -> None:
    """Media types are case-insensitive (RFC 9110 8.3.1): the data was read as a string
    and the command refused ("data must be a JSON object")."""
    tenant = harness.add_tenant()
    cmd = build_command("customer.create", tenant, {"email": "a@example.com"})
    rec = encode_event(cmd, tenant.encode(), CloudEventsMode.BINARY)
    headers = {**dict(rec.headers), "content-type": ctype}
    emits = await harness.raw(
        Inbound(rec.key, rec.value, headers, int(time.time() * 1000), "c", -1, -1)
    )
    outcome = outcome_of(harness.settings, emits)
    assert outcome is not None and kind(outcome) == "customer.created", data(outcome)


async def test_metadata_is_kept_as_sent(harness: Harness) -> None:
    """Stripped, " a" and "a " were merged into "a" (two values lost), and " " became "",
    which removes the key on customer.update."""
    tenant = harness.add_tenant()
    spaced = {"a": "1", " a": "2", "a ": "3", "note": "vip"}
    created = await harness.send(
        "customer.create", tenant, {"customer_id": "c1", "metadata": spaced}
    )
    assert data(created)["object"]["metadata"] == spaced, data(created)
    updated = await harness.send(
        "customer.update", tenant, {"customer_id": "c1", "metadata": {"note": " "}}
    )
    assert data(updated)["object"]["metadata"]["note"] == " ", data(updated)


# RFC 3986 URI-reference characters (unreserved, reserved, and "%" of pct-encoding).
_URI_REFERENCE = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*")


@pytest.mark.parametrize("tenant", ["acme corp", "acme\nx", "acm\u00e9", 'a"b<c>'])
async def test_an_outcome_source_is_a_uri_reference_whatever_the_tenant_id(
    harness: Harness, tenant: str
) -> None:
    """CloudEvents 1.0: `source` is a URI-reference; a made-up tenant id (answered
    unknown_tenant) was written into it raw."""
    outcome = await harness.send("customer.create", tenant, {}, attributes={"tenantid": tenant})
    assert data(outcome).get("reason") == "unknown_tenant", data(outcome)
    assert _URI_REFERENCE.fullmatch(outcome.get_source()), repr(outcome.get_source())
    # The id itself is unchanged, unless it holds a control character, which no
    # CloudEvents string may: then the answer names no tenant.
    expected = "_unknown" if "\n" in tenant else tenant
    assert outcome.get_extension("tenantid") == expected


@pytest.mark.parametrize("flag", ["yes", "on", "1", 1, 0.0, "off"])
def test_the_evidence_submit_flag_is_a_json_boolean(flag: object) -> None:
    """Submitting evidence is irrevocable at the provider: true or false, nothing else."""
    with pytest.raises(ValidationError):
        SubmitDisputeEvidence.model_validate(
            {"dispute_id": "dp_1", "evidence": {"product_description": "x"}, "submit": flag}
        )


async def test_structured_data_in_base64_is_refused_saying_how_data_is_sent(
    harness: Harness,
) -> None:
    """The documents called `data_base64` a structured command's payload, and every such
    command was refused "data must be a JSON object" (review h61b): the documents and the
    refusal now say data is read as JSON in `data` only."""
    tenant = harness.add_tenant()
    body = {
        "specversion": "1.0", "id": "c-b64", "source": "/x", "tenantid": tenant,
        "type": "com.paystream.command.customer.create", "datacontenttype": "application/json",
        "data_base64": base64.b64encode(b'{"email": "a@example.com"}').decode(),
    }  # fmt: skip
    headers = {"content-type": b"application/cloudevents+json"}
    value = json.dumps(body).encode()
    taken = int(time.time() * 1000)
    topic = harness.settings.commands_topic
    emits = await harness.raw(Inbound(tenant.encode(), value, headers, taken, topic, -1, -1))
    outcome = outcome_of(harness.settings, emits)
    assert outcome is not None and kind(outcome) == "command.rejected"
    assert data(outcome)["reason"] == "validation_error"
    assert data(outcome)["message"] == DATA_NOT_AN_OBJECT


async def _structured_base64(harness: Harness, tenant: str, key: str, encoded: str) -> list[Any]:
    """What the pipeline emits for a structured customer.create whose data is ``encoded``
    under ``key`` as written in the JSON (a JSON escape may spell it)."""
    body = {
        "specversion": "1.0", "id": f"c-{key}-{encoded}", "source": "/x", "tenantid": tenant,
        "type": "com.paystream.command.customer.create", "@KEY@": encoded,
    }  # fmt: skip
    value = json.dumps(body).replace('"@KEY@"', f'"{key}"').encode()
    assert json.loads(value)["data_base64"] == encoded
    headers = {"content-type": b"application/cloudevents+json"}
    taken, topic = int(time.time() * 1000), harness.settings.commands_topic
    return await harness.raw(Inbound(tenant.encode(), value, headers, taken, topic, -1, -1))


@pytest.mark.parametrize(
    ("key", "encoded"),
    [
        ("data_base64", "!!"),
        ("data_base64", "e30 ="),
        ("data_base64", "===="),
        ("data\\u005fbase64", "!!"),
        ("\\u0064ata_base64", "!!"),
    ],
)
async def test_data_base64_that_is_no_base64_is_no_cloudevent(
    harness: Harness, key: str, encoded: str
) -> None:
    """The SDK's decoder drops what is not base64: "!!" was read as no data, and a
    customer.create ran on nothing (review h64b), where "abc" (bad padding) was
    dead-lettered; then under a key spelled with a JSON escape (review h64c). RFC 4648
    base64, as the JSON event format says data_base64 is."""
    tenant = harness.add_tenant()
    emits = await _structured_base64(harness, tenant, key, encoded)
    assert harness.settings.dlq_topic in [e.topic for e in emits], emits
    outcome = outcome_of(harness.settings, emits)
    assert outcome is not None and kind(outcome) == "command.rejected", data(outcome)
    assert not harness.tables.customers


async def test_empty_data_base64_is_refused_as_any_data_base64(harness: Harness) -> None:
    """Zero bytes, valid base64: refused as data_base64 of any length is (not read)."""
    tenant = harness.add_tenant()
    emits = await _structured_base64(harness, tenant, "data_base64", "")
    outcome = outcome_of(harness.settings, emits)
    assert outcome is not None and kind(outcome) == "command.rejected", data(outcome)
    assert data(outcome)["message"] == DATA_NOT_AN_OBJECT


_HUGE = "9" * 5000  # past the 4,300 digits Python turns into an int (CVE-2020-10735)


@pytest.mark.parametrize("structured", [False, True], ids=["binary", "structured"])
async def test_an_amount_of_thousands_of_digits_is_refused_as_an_amount(
    harness: Harness, structured: bool
) -> None:
    """An integer too long for Python to read made the whole payload unreadable: refused
    "data must be a JSON object" in binary mode, dead-lettered in structured mode (review
    h67c). It is now read as the too-large number it is, and refused at `amount`."""
    tenant = harness.add_tenant()
    text = '{"amount": ' + _HUGE + ', "currency": "usd"}'
    if structured:
        attributes = {
            "specversion": "1.0", "id": "c-huge", "source": "/x", "tenantid": tenant,
            "type": "com.paystream.command.payment.create", "datacontenttype": "application/json",
        }  # fmt: skip
        envelope = json.dumps(attributes)[:-1] + ', "data": ' + text + "}"
        headers = {"content-type": b"application/cloudevents+json"}
        inbound = Inbound(tenant.encode(), envelope.encode(), headers, 0, "c", -1, -1)
    else:
        cmd = build_command("payment.create", tenant, {"amount": 1, "currency": "usd"})
        rec = encode_event(cmd, tenant.encode(), CloudEventsMode.BINARY)
        inbound = Inbound(rec.key, text.encode(), dict(rec.headers), 0, "c", -1, -1)
    outcome = outcome_of(harness.settings, await harness.raw(inbound))
    assert outcome is not None and kind(outcome) == "command.rejected"
    assert data(outcome)["reason"] == "validation_error", data(outcome)
    assert [e["loc"] for e in data(outcome)["errors"]] == ["amount"], data(outcome)
    assert _HUGE[:50] not in json.dumps(data(outcome))  # (nor is it echoed)


# 13 integers of 4,300 digits each (Python reads them: the limit is 4,300).
_RUNS = ",".join(["1" * 4300] * 13)
_STRUCTURED = {"content-type": b"application/cloudevents+json"}


def _structured_text(tenant: str, data_text: str, command_id: str = "c-1") -> bytes:
    attributes = {
        "specversion": "1.0", "id": command_id, "source": "/x", "tenantid": tenant,
        "type": "com.paystream.command.customer.create", "datacontenttype": "application/json",
    }  # fmt: skip
    return (json.dumps(attributes)[:-1] + ', "data": ' + data_text + "}").encode()


@pytest.mark.parametrize("structured", [False, True], ids=["binary", "structured"])
def test_long_digit_runs_are_read_once_unless_one_is_too_long(
    monkeypatch: pytest.MonkeyPatch, structured: bool
) -> None:
    """The first reading of over-long integers scanned every command for a run of 4,301
    digits, a pattern tried at every digit of a run: 0.34 s for a 60 KB command of
    4,300-digit runs, on the loop every tenant shares (review h68k). They are read again
    only when the stdlib parser refused one."""
    calls: list[int] = []
    real = codec._json_loads
    monkeypatch.setattr(codec, "_json_loads", lambda text: calls.append(1) or real(text))
    binary = {
        "ce_specversion": b"1.0", "ce_id": b"c-2", "ce_source": b"/x",
        "ce_type": b"com.paystream.command.customer.create", "ce_tenantid": b"acme",
        "content-type": b"application/json",
    }  # fmt: skip
    for runs, expected in ((_RUNS, []), (_RUNS + ",1" + "0" * 4300, [1])):
        calls.clear()
        body = '{"email": "a@example.com", "x": [' + runs + "]}"
        if structured:
            decode_record(b"acme", _structured_text("acme", body), _STRUCTURED)
        else:
            decode_record(b"acme", body.encode(), binary)
        assert calls == expected


async def test_two_idempotency_keys_too_long_to_read_are_not_one_key(harness: Harness) -> None:
    """A structured idempotencykey written as a JSON integer of 5,000 digits read as inf,
    and every such key as "inf": two different keys answered as one request (review
    h68k). Such an event is unreadable, as it was before."""
    tenant = harness.add_tenant()
    outcomes = []
    for n, digit in enumerate("98"):
        value = _structured_text(tenant, '{"email": "a@example.com"}', command_id=f"c-{n}")
        key = b'"idempotencykey": ' + digit.encode() * 5000
        value = value.replace(b'"tenantid"', key + b', "tenantid"')
        inbound = Inbound(tenant.encode(), value, _STRUCTURED, int(time.time() * 1000), "c", -1, -1)
        outcomes.append(outcome_of(harness.settings, await harness.raw(inbound)))
    assert [kind(o) for o in outcomes if o is not None] == ["command.rejected"] * 2


# Dispute evidence keys differing only by the white space around them were merged, one
# value silently dropped before an irrevocable submission (review h68j; fixed for
# `metadata` before).
def test_evidence_is_never_silently_dropped() -> None:
    sent = {"uncategorized_text": "the refund policy we showed", "uncategorized_text ": "see above"}
    try:
        taken = SubmitDisputeEvidence.model_validate({"dispute_id": "dp_1", "evidence": sent})
    except ValidationError:
        return  # refused: the sender learns of it (acceptable)
    # Taken: every value sent must reach the provider.
    assert sorted(taken.evidence.values()) == sorted(sent.values()), taken.evidence


# A binary body that was not JSON and held an integer of over 4,300 digits raised out of
# read_data, dead-lettered as not a CloudEvent (review h68v).
_BIG = b"9" * 4301


def test_malformed_json_with_an_overlong_integer_is_read_as_any_malformed_body() -> None:
    for body in (b'{"amount":' + _BIG, b'{"a":[' + _BIG + b", x]}"):
        # (Either way a string, as b'{"amount":1' is: no exception.)
        assert isinstance(_FORMAT.read_data(body, "application/json"), str)
        assert _FORMAT.read_data(b'{"amount":1', "application/json") == '{"amount":1'

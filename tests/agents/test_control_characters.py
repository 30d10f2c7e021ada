"""Control characters (C0, DEL, C1) in a command's id, key or tenant: no CloudEvents
string may hold one, and the rejection echoed them into its headers (causationid,
tenantid, partitionkey), making an outcome downstream SDKs may refuse and a header that
splits a log line (review finding)."""

from __future__ import annotations

import hashlib
import itertools
import re
import time

import pytest

from paystream.agents.pipeline import Emit, Inbound
from paystream.client import InvalidCommand, build_command
from paystream.settings import CloudEventsMode
from paystream.streams.codec import encode_event
from tests.agents.harness import Harness, data, kind, outcome_of

_offsets = itertools.count(1)
_CONTROL_BYTES = re.compile(rb"[\x00-\x1f\x7f]|\xc2[\x80-\x9f]")
_PAY = {"amount": 5000, "currency": "USD", "payment_method_token": "pm_card_visa"}


def _rec(tenant: str, command_id: str, key: str | None = None, **headers: bytes) -> Inbound:
    event = build_command("payment.create", "t", _PAY, command_id="c", idempotency_key=None)
    rec = encode_event(event, tenant.encode(), CloudEventsMode.BINARY)
    merged = {
        **dict(rec.headers),
        "ce_tenantid": tenant.encode(),
        "ce_id": command_id.encode(),
        **({"ce_idempotencykey": key.encode()} if key is not None else {}),
        **headers,
    }
    return Inbound(
        rec.key, rec.value, merged, int(time.time() * 1000), "paystream.commands", 0,
        next(_offsets),
    )  # fmt: skip


def _header_bytes(emits: list[Emit]) -> list[bytes]:
    return [value for e in emits for _, value in e.record.headers]


@pytest.mark.asyncio
@pytest.mark.parametrize("command_id", ["c\n1", "c\x001", "c\x7f1", "c\x1f"])
async def test_an_id_with_a_control_character_is_refused_under_its_digest(
    harness: Harness, command_id: str
) -> None:
    t = harness.add_tenant()
    emits = await harness.raw(_rec(t, command_id))
    out = outcome_of(harness.settings, emits)
    assert out is not None and data(out)["reason"] == "validation_error"
    assert data(out)["message"] == "id holds a control character"
    digest = hashlib.sha256(command_id.encode()).hexdigest()
    assert out.get_extension("causationid") == f"sha256:{digest}"
    assert not [v for v in _header_bytes(emits) if _CONTROL_BYTES.search(v)]


@pytest.mark.asyncio
@pytest.mark.parametrize(("command_id", "key"), [("c\u00851", None), ("c1", "k\u0085")])
async def test_c1_characters_in_an_id_or_key_run_as_before(
    harness: Harness, command_id: str, key: str | None
) -> None:
    """Versions before took them: refused now, a retry of a command they ran (or parked)
    was answered `validation_error` while its charge stood (review finding)."""
    t = harness.add_tenant()
    out = outcome_of(harness.settings, await harness.raw(_rec(t, command_id, key)))
    assert out is not None and kind(out) == "payment.succeeded", data(out)


@pytest.mark.parametrize("tenant", ["t\nx", "t\u0085x", "t\x00"])
@pytest.mark.asyncio
async def test_a_tenant_with_a_control_character_is_answered_under_no_tenant(
    harness: Harness, tenant: str
) -> None:
    emits = await harness.raw(_rec(tenant, "c1"))
    out = outcome_of(harness.settings, emits)
    assert out is not None and data(out)["reason"] == "unknown_tenant"
    assert out.get_extension("tenantid") == "_unknown"
    assert not [v for v in _header_bytes(emits) if _CONTROL_BYTES.search(v)]


@pytest.mark.parametrize("where", ["tenant", "id", "key"])
def test_the_client_refuses_a_control_character(where: str) -> None:
    ids = {"tenant": "t1", "id": "c1", "key": "k1", where: "x\u0085"}
    with pytest.raises(InvalidCommand, match="control character"):
        build_command(
            "payment.create", ids["tenant"], _PAY, command_id=ids["id"], idempotency_key=ids["key"]
        )


@pytest.mark.parametrize(("name", "value"), [("id", "c\u00851"), ("tenantid", "t\nx")])
def test_the_client_refuses_a_hand_built_command_holding_one(name: str, value: str) -> None:
    """send() encodes a CloudEvent built by hand too: answered under the id's digest or
    no tenant, its sender's waiter never saw the answer (review finding)."""
    from paystream.client import encoded_for_sending
    from paystream.settings import load_settings

    event = build_command("payment.create", "t1", _PAY, command_id="c1")
    event.get_attributes()[name] = value
    with pytest.raises(InvalidCommand, match="control character"):
        encoded_for_sending(event, CloudEventsMode.BINARY, load_settings())


@pytest.mark.asyncio
async def test_a_key_naming_an_id_pointer_is_refused_not_dead_lettered(harness: Harness) -> None:
    """ "\x1fid:c1" is the table key of c1's id pointer: read as an idempotency record
    by the answered-before check, it failed validation, and the command went to the
    dead-letter topic as our bug (review finding)."""
    t = harness.add_tenant()
    first = outcome_of(harness.settings, await harness.raw(_rec(t, "c1", "k1")))
    assert first is not None and kind(first) == "payment.succeeded"
    emits = await harness.raw(_rec(t, "c2", "\x1fid:c1"))
    assert [e.topic for e in emits] == [harness.settings.events_topic]
    out = outcome_of(harness.settings, emits)
    assert out is not None and data(out)["reason"] == "validation_error"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "headers",
    [
        {"ce_type": b"com.paystream.command.nope\n"},  # an unknown type
        {"ce_tenantid": b"t\nx"},  # the record key says another tenant
        {"ce_time": b"not a time", "ce_id": b"c\n1"},  # no CloudEvent: dead-lettered
        {"ce_id": b"c\n1", "ce_tenantid": ("t" * 300).encode()},  # over-long tenant
    ],
    ids=["unknown type", "tenant mismatch", "not a cloudevent", "over-long tenant"],
)
async def test_no_rule_echoes_a_control_character_into_headers(
    harness: Harness, headers: dict[str, bytes]
) -> None:
    """Rules before the id and tenant checks answered with them as they came (review
    finding)."""
    t = harness.add_tenant()
    rec = _rec(t, "c1")
    rec.headers.update(headers)
    emits = await harness.raw(rec)
    out = outcome_of(harness.settings, emits)
    assert out is not None and data(out)["reason"] != "internal_error", data(out)
    events = [e for e in emits if e.topic == harness.settings.events_topic]
    assert not [v for v in _header_bytes(events) if _CONTROL_BYTES.search(v)]


def _with_code(rec: Inbound) -> Inbound:
    """``rec`` with a card security code in its data (refused before any id check)."""
    import json

    body = json.loads(rec.value)
    body["metadata"] = {"cvc": "737"}
    return Inbound(
        rec.key, json.dumps(body).encode(), rec.headers, rec.timestamp_ms, rec.topic, 0,
        rec.offset,
    )  # fmt: skip


@pytest.mark.asyncio
@pytest.mark.parametrize(("tenant_bad", "command_id"), [(False, "c\n1"), (True, "c1")])
async def test_a_kept_rejection_is_named_as_first_answered(
    harness: Harness, tenant_bad: bool, command_id: str
) -> None:
    """A card security code is refused before the id and tenant checks, and its answer
    kept for the record: redelivered, it was named by the raw id and tenant, another
    event with the control character back in its headers (review finding)."""
    t = "t\nx" if tenant_bad else harness.add_tenant()
    rec = _with_code(_rec(t, command_id))
    first = await harness.raw(rec)
    again = await harness.raw(rec)
    assert [e.record for e in first] == [e.record for e in again]
    assert not [v for v in _header_bytes(again) if _CONTROL_BYTES.search(v)]


@pytest.mark.asyncio
async def test_a_key_naming_an_id_pointer_is_never_read_as_a_record(harness: Harness) -> None:
    """Through the security-code gate, which reads the key's record before the control
    check, it failed validation all the same: a dead letter as our bug (review finding)."""
    t = harness.add_tenant()
    first = outcome_of(harness.settings, await harness.raw(_rec(t, "c1", "k1")))
    assert first is not None and kind(first) == "payment.succeeded"
    emits = await harness.raw(_with_code(_rec(t, "c2", "\x1fid:c1")))
    assert [e.topic for e in emits] == [harness.settings.events_topic]


@pytest.mark.asyncio
async def test_a_record_under_a_key_an_older_version_took_keeps_its_answer(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pointer-key guard skipped every key holding "\\x1f": a command an older version
    ran under such a key, redelivered, was refused while its charge stood (review)."""
    import re

    from paystream.agents import pipeline

    t = harness.add_tenant()
    rec = _rec(t, "c1", "k\x1fx")
    with monkeypatch.context() as older:
        older.setattr(pipeline, "_CONTROL", re.compile(r"(?!)"))  # took it
        first = outcome_of(harness.settings, await harness.raw(rec))
    assert first is not None and kind(first) == "payment.succeeded", data(first)
    again = outcome_of(harness.settings, await harness.raw(rec))  # redelivered
    assert again is not None and again.get_id() == first.get_id(), data(again)

"""CloudEvents ⇄ Kafka records in both content modes, and what is not a CloudEvent."""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import replace
from datetime import UTC, datetime

import orjson
import pytest
from dateutil.parser import isoparse
from hypothesis import given
from hypothesis import strategies as st

from paystream.client import build_command
from paystream.settings import CloudEventsMode
from paystream.streams.codec import UndecodableRecord, decode_record, encode_event
from paystream.streams.outcomes import (
    _NAMESPACE,
    CommandRef,
    build_outcome,
    encode_outcome,
    outcome_id,
)

CMD = CommandRef(
    "acme", "cmd-1", "payment.create", "cmd-1", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
)


@pytest.mark.parametrize("mode", list(CloudEventsMode))
def test_outcome_round_trips_in_both_modes(mode: CloudEventsMode) -> None:
    event = build_outcome(CMD, "payment.succeeded", {"entity_id": "pay_1", "object": {"amount": 5}})
    rec = encode_event(event, b"acme", mode)
    back = decode_record(rec.key, rec.value, dict(rec.headers))
    assert back.get_id() == outcome_id("acme", "cmd-1", "payment.succeeded")
    assert back.get_type() == "com.paystream.payment.succeeded"
    assert back.get_source() == "/paystream/tenants/acme/payment"
    assert back.get_extension("causationid") == "cmd-1"
    assert back.get_extension("partitionkey") == "acme"
    assert back.get_time() == CMD.time
    assert back.get_data() == {"entity_id": "pay_1", "object": {"amount": 5}}


def test_binary_mode_uses_ce_headers() -> None:
    rec = encode_event(build_outcome(CMD, "customer.created", {}), b"acme", CloudEventsMode.BINARY)
    headers = dict(rec.headers)
    assert headers["ce_type"] == b"com.paystream.customer.created"
    assert headers["content-type"] == b"application/json"
    assert headers["ce_tenantid"] == b"acme"


@given(st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=20), max_size=5))
def test_encoding_is_deterministic(data: dict[str, object]) -> None:
    for mode in CloudEventsMode:
        a = encode_event(build_outcome(CMD, "customer.updated", dict(data)), b"k", mode)
        b = encode_event(build_outcome(CMD, "customer.updated", dict(data)), b"k", mode)
        assert a == b


@pytest.mark.parametrize(
    ("value", "headers"),
    [
        (b"plain text", {}),
        (None, {}),
        (b"{}", {"content-type": b"application/cloudevents+json"}),
        (b'{"a": 1}', {"content-type": b"application/xml"}),
        (b"{}", {"ce_specversion": b"1.0"}),  # binary mode without the required attributes
    ],
)
def test_records_that_are_not_cloudevents_raise_undecodable(
    value: bytes | None, headers: dict[str, bytes]
) -> None:
    with pytest.raises(UndecodableRecord):
        decode_record(b"acme", value, headers)


def test_a_structured_record_carrying_ce_headers_is_read_as_structured() -> None:
    """The content type decides the mode (Kafka binding §3); a structured record may carry
    the ce_* headers too (§3.3.3). Read as binary, its whole body became the data and the
    command was dead-lettered ("missing required attribute 'id'")."""
    cmd = build_command("customer.create", "acme", {"email": "a@acme.example"})
    rec = encode_event(cmd, b"acme", CloudEventsMode.STRUCTURED)
    headers = {
        **dict(rec.headers),
        "ce_traceparent": b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01",
    }
    back = decode_record(rec.key, rec.value, headers)
    assert back.get_id() == cmd.get_id() and back.get_type() == cmd.get_type()
    assert back.get_data() == {"email": "a@acme.example"}
    upper = {"Content-Type": b"Application/CloudEvents+JSON", "ce_id": b"x"}
    assert decode_record(rec.key, rec.value, upper).get_id() == cmd.get_id()


@pytest.mark.parametrize(
    "twice",
    [{"CE_ID": b"second"}, {"CE_TRACEPARENT": b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01"}],
    ids=["id", "traceparent"],
)
def test_an_attribute_given_twice_in_two_cases_is_undecodable(twice: dict[str, bytes]) -> None:
    """The decoder keeps whichever spelling comes last, and a park writes its headers
    sorted: re-driven, the command ran as the other one (another id: a second charge).
    Review finding."""
    cmd = build_command(
        "customer.create", "acme", {}, traceparent="00-" + "3" * 32 + "-" + "4" * 16 + "-01"
    )
    rec = encode_event(cmd, b"acme", CloudEventsMode.BINARY)
    for headers in ({**dict(rec.headers), **twice}, {**twice, **dict(rec.headers)}):
        with pytest.raises(UndecodableRecord, match="given twice"):
            decode_record(rec.key, rec.value, headers)


def test_a_content_type_given_twice_is_undecodable_and_ignored_ce_headers_are_not() -> None:
    """The content type decides the mode: given twice, a park could flip it. The ce_*
    headers of a structured record are not read, so two spellings there decide nothing."""
    cmd = build_command("customer.create", "acme", {})
    rec = encode_event(cmd, b"acme", CloudEventsMode.STRUCTURED)
    both = {"content-type": b"application/cloudevents+json", "Content-Type": b"text/plain"}
    with pytest.raises(UndecodableRecord, match="given twice"):
        decode_record(rec.key, rec.value, both)
    ignored = {**dict(rec.headers), "ce_id": b"a", "CE_ID": b"b"}
    assert decode_record(rec.key, rec.value, ignored).get_id() == cmd.get_id()


def test_specversion_is_required_and_attributes_are_scalars() -> None:
    cmd = build_command("customer.create", "acme", {})
    binary = encode_event(cmd, b"acme", CloudEventsMode.BINARY)
    without = {k: v for k, v in binary.headers if k != "ce_specversion"}
    with pytest.raises(UndecodableRecord, match="specversion"):
        decode_record(binary.key, binary.value, without)
    structured = {"id": "c1", "source": "/x", "type": "com.paystream.command.customer.create",
                  "tenantid": "acme", "data": {}}  # fmt: skip
    ctype = {"content-type": b"application/cloudevents+json"}
    with pytest.raises(UndecodableRecord, match="specversion"):
        decode_record(b"acme", orjson.dumps(structured), ctype)
    nested = {**structured, "specversion": "1.0", "tenantid": {"a": 1}}
    with pytest.raises(UndecodableRecord, match="not a scalar"):
        decode_record(b"acme", orjson.dumps(nested), ctype)
    assert decode_record(b"acme", orjson.dumps({**structured, "specversion": "1.0"}), ctype)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_the_decoder(value: bytes) -> None:
    with contextlib.suppress(UndecodableRecord):
        decode_record(b"k", value, {})


@given(st.text(max_size=40), st.text(max_size=40), st.text(max_size=40))
def test_outcome_id_is_uuid5_of_the_command(tenant: str, command: str, outcome: str) -> None:
    name = f"{tenant}\x1f{command}\x1f{outcome}"
    assert outcome_id(tenant, command, outcome) == str(uuid.uuid5(_NAMESPACE, name))


@pytest.mark.parametrize(
    "text",
    [
        "2026-01-02T03:04:05Z",
        "2026-01-02T03:04:05.123Z",
        "2026-01-02T03:04:05.123456789Z",
        "2026-01-02T03:04:05+02:00",
        "2026-01-02T03:04:05.5-07:30",
        "2026-01-02t03:04:05z",
        "20260102T030405Z",
    ],
)
def test_command_time_parses_as_the_sdk_would(text: str) -> None:
    event = build_command("customer.create", "acme", {})
    rec = encode_event(event, b"acme", CloudEventsMode.BINARY)
    headers = {**dict(rec.headers), "ce_time": text.encode()}
    assert decode_record(rec.key, rec.value, headers).get_time() == isoparse(text)


@pytest.mark.parametrize("text", ["yesterday", "2026-13-02T03:04:05Z", ""])
def test_a_bad_command_time_is_undecodable(text: str) -> None:
    event = build_command("customer.create", "acme", {})
    rec = encode_event(event, b"acme", CloudEventsMode.BINARY)
    with pytest.raises(UndecodableRecord):
        decode_record(rec.key, rec.value, {**dict(rec.headers), "CE_Time": text.encode()})


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(
    tenant=st.text(min_size=1, max_size=12),
    command=st.text(min_size=1, max_size=20),
    outcome=st.sampled_from(["payment.succeeded", "refund.failed", "command.rejected"]),
    when=st.datetimes(timezones=st.timezones() | st.just(UTC)),
    traceparent=st.none() | st.text(min_size=1, max_size=60),
    entity_id=st.none() | st.text(max_size=16),
    data=st.dictionaries(st.text(max_size=8), _JSON_VALUES, max_size=4),
    mode=st.sampled_from(list(CloudEventsMode)),
)
def test_encode_outcome_writes_what_the_sdk_writes(
    tenant: str,
    command: str,
    outcome: str,
    when: datetime,
    traceparent: str | None,
    entity_id: str | None,
    data: dict[str, object],
    mode: CloudEventsMode,
) -> None:
    """The worker's direct header writer is byte-identical to building the SDK's event."""
    cmd = CommandRef(tenant, command, "payment.create", command, when, traceparent)
    if entity_id is not None:
        data = {**data, "entity_id": entity_id}
    expected = encode_event(build_outcome(cmd, outcome, data), tenant.encode(), mode)
    assert encode_outcome(cmd, outcome, data, mode) == expected


def test_an_outcome_names_its_command_partition_key_and_trace() -> None:
    """What downstream consumers route and trace by (mutation testing: the partition key
    and the trace state were asserted nowhere but end to end)."""
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    cmd = replace(CMD, traceparent=traceparent, tracestate="vendor=abc")
    out = build_outcome(cmd, "payment.succeeded", {"entity_id": "p1"})
    assert out.get_extension("causationid") == cmd.command_id
    assert out.get_extension("partitionkey") == cmd.tenant_id
    assert out.get_extension("tracestate") == "vendor=abc"
    assert str(out.get_extension("traceparent")).split("-")[1] == traceparent.split("-")[1]
    assert out.get_subject() == "p1"


def test_ce_datacontenttype_and_content_type_that_disagree_are_undecodable() -> None:
    """Both spell datacontenttype in binary mode and the last one won: `text/plain` then
    `ce_datacontenttype: application/json` read the data as JSON and charged; the park,
    its headers sorted, was re-driven with `text/plain` last, and refused after the
    charge (review finding). The same value twice decides nothing and passes."""
    cmd = build_command("payment.create", "acme", {"amount": 1})
    rec = encode_event(cmd, b"acme", CloudEventsMode.BINARY)
    base = {k: v for k, v in dict(rec.headers).items() if k != "content-type"}
    for headers in (
        {"content-type": b"text/plain", **base, "ce_datacontenttype": b"application/json"},
        {"ce_datacontenttype": b"application/json", **base, "content-type": b"text/plain"},
    ):
        for _ in range(2):  # (the second time through the names' remembered plan)
            with pytest.raises(UndecodableRecord, match="disagree"):
                decode_record(rec.key, rec.value, headers)
    same = {**base, "content-type": b"application/json", "ce_datacontenttype": b"application/json"}
    assert decode_record(rec.key, rec.value, same).get_data() == {"amount": 1}
    # Two spellings read the same way decide nothing either: refused, a producer that
    # adds a charset to one of them had its every command refused (review finding).
    for one, other in (
        (b"application/json; charset=utf-8", b"application/json"),
        (b"Application/JSON", b"application/vnd.acme+json"),
    ):
        for first, last in ((one, other), (other, one)):
            spelled = {"content-type": first, **base, "ce_datacontenttype": last}
            assert decode_record(rec.key, rec.value, spelled).get_data() == {"amount": 1}


@pytest.mark.parametrize("mode", list(CloudEventsMode))
def test_a_header_that_is_no_cloudevents_one_is_not_decoded(mode: CloudEventsMode) -> None:
    """The Kafka binding puts no rule on other headers: a producer's binary schema id
    made a valid command undecodable (every header was decoded as UTF-8; review finding)."""
    cmd = build_command("payment.create", "acme", {"amount": 1})
    rec = encode_event(cmd, b"acme", mode)
    headers = {**dict(rec.headers), "x-schema-id": b"\x00\x8f\x12"}
    for _ in range(2):
        event = decode_record(rec.key, rec.value, headers)
        assert (event.get_id(), event.get_data()) == (cmd.get_id(), {"amount": 1})


@pytest.mark.parametrize("attribute", ["subject", "time", "datacontenttype", "dataschema"])
def test_a_structured_attribute_given_as_null_is_absent(attribute: str) -> None:
    """JSON event format §2.2: null MUST be read as absent (its own examples write
    `"subject": null`, as Jackson does); the SDK refused the command (review finding)."""
    body = {"specversion": "1.0", "id": "c1", "source": "/x", "tenantid": "acme",
            "type": "com.paystream.command.payment.create", "data": {"amount": 1},
            attribute: None}  # fmt: skip
    event = decode_record(
        b"acme", orjson.dumps(body), {"content-type": b"application/cloudevents+json"}
    )
    assert attribute not in event.get_attributes() or attribute == "datacontenttype"
    assert event.get_data() == {"amount": 1}
    assert event.get_attributes().get("datacontenttype") in (None, "application/json")

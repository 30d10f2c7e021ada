"""decode_record's planned pass (header names worked out once per name set) against the
full pass, header by header, on varied and hostile records; kafka_record against the
dataclass's constructor."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paystream.client import build_command
from paystream.settings import CloudEventsMode
from paystream.streams import codec
from paystream.streams.codec import KafkaRecord, decode_record, encode_event, kafka_record

_BASE = dict(
    encode_event(
        build_command("payment.create", "acme", {"payment_id": "p1", "amount": 5}),
        b"acme",
        CloudEventsMode.BINARY,
    ).headers
)
_NAMES = st.sampled_from(
    [
        *_BASE,
        "CE_ID", "Ce_Type", "CE_TIME", "Content-Type", "CONTENT-TYPE", "ce_", "ce_data",
        "ce_x-y", "ce_idempotencykey", "ce_traceparent", "ce_tracestate", "traceparent",
        "paystream-request", "ce_subject", "ce_dataschema", "ce_time", "ce_ID", "x",
    ]
)  # fmt: skip
_VALUES = st.sampled_from(
    [
        b"", b"1.0", b"0.3", b"acme", b"/s", b"\xff\xfe", b"application/json",
        b"application/cloudevents+json", b"Application/JSON; charset=utf-8", b"text/plain",
        b"2026-01-02T03:04:05Z", b"2026-01-02T03:04:05", b"20260102T030405Z", b"yesterday",
        b"\xc3\xa9t\xc3\xa9", b"com.paystream.command.payment.create", "\udcff".encode(
            "utf-8", "surrogatepass"
        ),
    ]
) | st.binary(max_size=6)  # fmt: skip
_BODIES = st.sampled_from(
    [
        b'{"payment_id": "p1", "amount": 5}',
        b"{}",
        b"[1]",
        b"not json",
        b"",
        b'{"a": NaN}',
        orjson.dumps({"id": "c1", "source": "/x", "type": "t", "specversion": "1.0"}),
    ]
)


def _result(fn: Any, key: bytes | None, value: bytes | None, headers: Any) -> Any:
    try:
        event = fn(key, value, headers)
    except Exception as exc:
        return ("raised", type(exc).__name__, str(exc))
    return (
        type(event).__name__,
        list(event.get_attributes().items()),
        event.get_data(),
    )


@settings(max_examples=400)
@given(
    removed=st.sets(st.sampled_from(sorted(_BASE)), max_size=3),
    added=st.lists(st.tuples(_NAMES, _VALUES), max_size=4),
    value=st.none() | _BODIES,
    key=st.none() | st.sampled_from([b"acme", b"\xff"]),
    front=st.booleans(),
)
def test_decode_record_as_the_full_pass(
    removed: set[str],
    added: list[tuple[str, bytes]],
    value: bytes | None,
    key: bytes | None,
    front: bool,
) -> None:
    headers = {k: v for k, v in _BASE.items() if k not in removed}
    extra = dict(added)
    headers = {**extra, **headers} if front else {**headers, **extra}
    assert _result(decode_record, key, value, headers) == _result(
        codec._decode_record_full, key, value, headers
    )
    # Again (its names' plan remembered now), and as another mapping (the full pass).
    assert _result(decode_record, key, value, headers) == _result(
        codec._decode_record_full, key, value, headers
    )


def test_decode_record_with_odd_names_and_values() -> None:
    for headers in (
        {**_BASE, b"ce_id": b"x"},  # a name not a str
        {**_BASE, "ce_id": "text"},  # a value not bytes
        {**_BASE, "ce_tenantid": None},
        {**_BASE, "CE_ID": b"other"},  # one attribute twice
        {"content-type": b"application/json"},  # no ce_ header: structured
        {**_BASE, "content-type": b"application/cloudevents+json"},
        {**_BASE, "ce_time": b"\xff"},
        {f"h{n}": b"1" for n in range(40)},  # too many names to remember
        {**_BASE, "ce_" + "x" * 100: b"1"},  # too long a name to remember
    ):
        for key, value in ((b"acme", b"{}"), (None, None), (b"acme", b"[]")):
            got = _result(decode_record, key, value, headers)
            assert got == _result(codec._decode_record_full, key, value, headers)
            assert _result(decode_record, key, value, headers) == got


def test_plans_are_bounded_and_junk_cannot_keep_a_producers_own_out() -> None:
    for n in range(codec._PLANS_MAX + 10):
        decode_record(b"acme", b"{}", {**_BASE, f"x-{n}": b"1"})
    assert len(codec._PLANS) <= codec._PLANS_MAX
    decode_record(b"acme", b"{}", _BASE)
    assert tuple(_BASE) in codec._PLANS


def test_extension_names_seen_are_bounded_and_start_again_when_full() -> None:
    for n in range(codec._EXTENSION_NAMES_SEEN_MAX + 10):
        codec._see_extension_name(f"junk{n}")
    assert len(codec._EXTENSION_NAMES_SEEN) <= codec._EXTENSION_NAMES_SEEN_MAX
    codec._see_extension_name("tenantid")
    assert "tenantid" in codec._EXTENSION_NAMES_SEEN


def test_kafka_record_is_built_as_its_dataclass_allows() -> None:
    fields = dataclasses.fields(KafkaRecord)
    assert [f.name for f in fields] == ["key", "value", "headers"]
    assert all(f.init for f in fields)
    assert not hasattr(KafkaRecord, "__post_init__")
    assert not hasattr(KafkaRecord, "__slots__")
    assert KafkaRecord.__dataclass_params__.frozen  # type: ignore[attr-defined]


@given(
    st.none() | st.binary(max_size=8),
    st.binary(max_size=8),
    st.lists(st.tuples(st.text(max_size=5), st.binary(max_size=5)), max_size=4).map(tuple),
)
def test_kafka_record_is_the_dataclass_constructor(
    key: bytes | None, value: bytes, headers: tuple[tuple[str, bytes], ...]
) -> None:
    fast, full = kafka_record(key, value, headers), KafkaRecord(key, value, headers)
    assert type(fast) is KafkaRecord
    assert fast == full and hash(fast) == hash(full) and repr(fast) == repr(full)
    assert list(vars(fast).items()) == list(vars(full).items())
    assert dataclasses.replace(fast, headers=()) == dataclasses.replace(full, headers=())
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.value = b""  # type: ignore[misc]


@given(
    st.dictionaries(
        st.sampled_from(["tenantid", "partitionkey", "data", "time", "Tenantid", "a-b", "x\n"])
        | st.text(max_size=6),
        st.text(max_size=3) | st.none() | st.integers(),
        max_size=5,
    )
)
def test_extension_names_seen_before_are_judged_as_before(extra: dict[str, Any]) -> None:
    """_plainly_valid remembers the extension names it found good: its verdict is the
    same with them remembered as with nothing remembered (and none it refuses is kept)."""
    attributes: dict[str, Any] = {
        "id": "c1", "source": "/s", "type": "t", "specversion": "1.0", **extra,
    }  # fmt: skip
    warm = codec._plainly_valid(attributes)
    assert codec._plainly_valid(attributes) == warm
    remembered = set(codec._EXTENSION_NAMES_SEEN)
    try:
        codec._EXTENSION_NAMES_SEEN.clear()
        cold = codec._plainly_valid(attributes)
        codec._EXTENSION_NAMES_SEEN.clear()
    finally:
        codec._EXTENSION_NAMES_SEEN.update(remembered)
    assert warm == cold
    for name in codec._EXTENSION_NAMES_SEEN:
        assert codec._EXTENSION_NAME.fullmatch(name) and name not in codec._NOT_EXTENSIONS

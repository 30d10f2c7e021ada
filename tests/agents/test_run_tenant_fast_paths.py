"""The per-command glue's fast paths against their full forms, on varied and hostile
input: a consumed record's headers and Inbound (commands.py), and the event attributes
the pipeline reads straight from the SDK's dict and its check of a command's time
(pipeline.py)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from cloudevents.core.v1.event import CloudEvent
from hypothesis import given
from hypothesis import strategies as st

from paystream.agents import commands, inbound
from paystream.agents.pipeline import Emit, Inbound
from paystream.client import build_command
from paystream.settings import CloudEventsMode
from paystream.streams import codec
from paystream.streams.codec import KafkaRecord, UndecodableRecord, decode_record, encode_event

_NAMES = st.sampled_from(["ce_id", "CE_ID", "content-type", "traceparent", "x", ""]) | st.text(
    max_size=8
)
_VALUES = st.binary(max_size=8) | st.none() | st.just(b"")
_ODD = st.integers(0, 300) | st.text(max_size=4) | st.binary(max_size=3).map(bytearray)


class _Str(str):
    pass


class _Bytes(bytes):
    pass


def _outcome(fn: Any, raw: Any) -> tuple[str, Any]:
    try:
        return "ok", fn(raw)
    except Exception as exc:  # the same failure, whichever path raised it
        return type(exc).__name__, None


@given(
    st.lists(
        st.tuples(_NAMES | _ODD | st.builds(_Str, st.text(max_size=3)), _VALUES | _ODD)
        | st.tuples(_NAMES, _VALUES, _VALUES)  # not a pair
        | st.lists(st.one_of(_NAMES, _VALUES), min_size=0, max_size=3)
        | st.text(max_size=3),  # iterable into two characters, or not
        max_size=6,
    ),
    st.sampled_from(["list", "tuple", "dict", "gen"]),
)
def test_headers_as_the_full_path_makes_them(pairs: list[Any], shape: str) -> None:
    raw: Any
    if shape == "dict":
        try:
            raw = {
                k: v for k, v in pairs if isinstance(k, str | int | bytes)
            }  # (hashable names only)
        except (TypeError, ValueError):
            return
    elif shape == "tuple":
        raw = tuple(pairs)
    elif shape == "gen":
        raw = iter(pairs)  # (not re-iterable: the full path is taken whole)
        assert (
            _outcome(commands._headers, raw) == _outcome(commands._full_headers, iter(pairs))
            or not pairs
        )
        return
    else:
        raw = pairs
    fast, full = _outcome(commands._headers, raw), _outcome(commands._full_headers, raw)
    assert fast == full
    if fast[0] == "ok":
        assert list(fast[1].items()) == list(full[1].items())
        assert {type(v) for v in fast[1].values()} <= {bytes}


def test_headers_duplicates_subclasses_and_none() -> None:
    for raw in (
        [("a", "x"), ("a", b"y")],  # the full path refuses the hidden "x"
        [("a", b"x"), ("a", b"y")],
        [("a", None), ("b", b"")],
        [(_Str("a"), b"x")],
        [("a", _Bytes(b"x"))],
        [(b"a", b"x")],
        [("1", b"x"), (1, b"y")],
        {"a": None},
    ):
        assert _outcome(commands._headers, raw) == _outcome(commands._full_headers, raw)
        fast = _outcome(commands._headers, raw)[1]
        if fast is not None:
            assert [type(k) for k in fast] == [str] * len(fast)
            assert [type(v) for v in fast.values()] == [bytes] * len(fast)


def test_inbound_is_built_as_its_dataclass_allows() -> None:
    fields = dataclasses.fields(Inbound)
    assert [f.name for f in fields] == [
        "key", "value", "headers", "timestamp_ms", "topic", "partition", "offset",
    ]  # fmt: skip
    assert all(f.init for f in fields)
    assert not hasattr(Inbound, "__post_init__")
    assert not hasattr(Inbound, "__slots__")
    assert Inbound.__dataclass_params__.frozen  # type: ignore[attr-defined]


@given(
    st.none() | st.binary(max_size=10),
    st.none() | st.binary(max_size=10),
    st.dictionaries(st.text(max_size=5), st.binary(max_size=5), max_size=3),
    st.integers(-(2**63), 2**63),
    st.text(max_size=10),
    st.integers(-1, 2**31),
    st.integers(-1, 2**63),
)
def test_inbound_is_the_dataclass_constructor(
    key: bytes | None,
    value: bytes | None,
    headers: dict[str, bytes],
    timestamp_ms: int,
    topic: str,
    partition: int,
    offset: int,
) -> None:
    fast = commands._inbound(key, value, headers, timestamp_ms, topic, partition, offset)
    full = Inbound(
        key=key,
        value=value,
        headers=headers,
        timestamp_ms=timestamp_ms,
        topic=topic,
        partition=partition,
        offset=offset,
    )
    assert type(fast) is Inbound
    assert fast == full and repr(fast) == repr(full)
    assert list(vars(fast).items()) == list(vars(full).items())
    assert dataclasses.replace(fast, offset=1) == dataclasses.replace(full, offset=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.offset = 2  # type: ignore[misc]


def test_decoded_events_answer_the_getters_from_their_attributes() -> None:
    """_process_event reads an event's attributes from ``get_attributes()`` (the dict
    itself) instead of calling the getters: the events decode_record makes define none
    of their own, and the SDK's read that same dict."""
    for name in ("get_type", "get_id", "get_extension", "get_time", "get_attributes"):
        assert getattr(codec._Received, name) is getattr(CloudEvent, name), name
    event = build_command("customer.create", "acme", {"email": "a@b.c"})
    rec = encode_event(event, b"acme", CloudEventsMode.BINARY)
    cases: list[dict[str, bytes]] = [
        dict(rec.headers),
        {**dict(rec.headers), "ce_idempotencykey": b"k-1", "ce_traceparent": b"tp"},
        {**dict(rec.headers), "ce_tracestate": b"a=b", "ce_tenantid": b""},
        {k: v for k, v in dict(rec.headers).items() if k != "ce_time"},
    ]
    structured = orjson.dumps(
        {"id": "c1", "source": "/x", "type": "com.paystream.command.customer.create",
         "specversion": "1.0", "tenantid": "acme", "idempotencykey": "", "data": {}}
    )  # fmt: skip
    decoded = [decode_record(b"acme", rec.value, h) for h in cases]
    decoded.append(
        decode_record(b"acme", structured, {"content-type": b"application/cloudevents+json"})
    )
    for got in decoded:
        assert type(got) in (codec._Received, CloudEvent)
        attrs = got.get_attributes()
        assert attrs is got.get_attributes()  # the dict itself, not a copy
        assert attrs["type"] == got.get_type() and attrs["id"] == got.get_id()
        assert attrs.get("time") == got.get_time()
        for ext in ("tenantid", "idempotencykey", "traceparent", "tracestate", "nope"):
            assert attrs.get(ext) == got.get_extension(ext)
    with pytest.raises(UndecodableRecord):
        decode_record(b"acme", rec.value, {k: v for k, v in cases[0].items() if k != "ce_id"})


@given(
    st.datetimes(timezones=st.timezones() | st.just(UTC))
    | st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(1, 1, 2), timezones=st.just(UTC))
    | st.builds(
        lambda at, seconds: at.replace(tzinfo=timezone(timedelta(seconds=seconds))),
        st.sampled_from([datetime(1, 1, 1), datetime(9999, 12, 31, 23), datetime(2026, 1, 2)]),
        st.integers(-86399, 86399),
    )
)
def test_a_time_in_utc_is_answered_as_any_other(at: datetime) -> None:
    assert inbound.bad_time(at) == inbound.time_fault(at)
    if at.tzinfo is not None:
        utc = at.astimezone(UTC) if 1 < at.year < 9999 else at.replace(tzinfo=UTC)
        assert inbound.bad_time(utc) is None is inbound.time_fault(utc)


def test_emit_is_built_as_its_dataclass_allows() -> None:
    fields = dataclasses.fields(Emit)
    assert [f.name for f in fields] == ["topic", "record", "summary"]
    assert all(f.init for f in fields)
    assert not hasattr(Emit, "__post_init__")
    assert not hasattr(Emit, "__slots__")
    assert Emit.__dataclass_params__.frozen  # type: ignore[attr-defined]


@given(
    st.text(max_size=10),
    st.builds(
        KafkaRecord,
        st.none() | st.binary(max_size=4),
        st.binary(max_size=4),
        st.lists(st.tuples(st.text(max_size=3), st.binary(max_size=3))).map(tuple),
    ),
    st.none() | st.dictionaries(st.text(max_size=4), st.integers() | st.none(), max_size=3),
)
def test_emit_is_the_dataclass_constructor(
    topic: str, record: KafkaRecord, summary: dict[str, Any] | None
) -> None:
    fast, full = inbound.emit(topic, record, summary), Emit(topic, record, summary)
    assert type(fast) is Emit
    assert fast == full and repr(fast) == repr(full)
    assert list(vars(fast).items()) == list(vars(full).items())
    assert dataclasses.replace(fast, topic="t") == dataclasses.replace(full, topic="t")
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.topic = "other"  # type: ignore[misc]

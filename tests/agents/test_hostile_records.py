"""Records any producer on the commands topic can send, and what they must not do: stop
the worker (every worker, each in turn, as the record moves on), cost it a scan of its
tables per record, tell one tenant about another's commands, or go unanswered when they
name who sent them (review findings)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest

from paystream.agents.pipeline import Inbound
from paystream.client import build_command
from paystream.settings import CloudEventsMode
from paystream.streams.codec import encode_event
from tests.agents.harness import Harness, data, kind, outcome_of

pytestmark = pytest.mark.asyncio

_STRUCTURED = {"content-type": b"application/cloudevents+json"}


def _deep(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def _inbound(key: bytes, value: bytes, headers: dict[str, bytes], offset: int = 7) -> Inbound:
    return Inbound(key, value, headers, int(time.time() * 1000), "paystream.commands", 0, offset)


def _structured(tenant: str, **fields: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": "c1",
        "type": "com.paystream.command.customer.create",
        "source": "/x",
        "tenantid": tenant,
        "datacontenttype": "application/json",
        "data": {"email": "a@example.com"},
        **fields,
    }


@pytest.mark.parametrize("depth", [1025, 3000])
async def test_json_nested_past_the_parsers_depth_is_dead_lettered(
    harness: Harness, depth: int
) -> None:
    """Both parsers refuse it (orjson past 1,024 levels; the stdlib by RecursionError,
    which escaped the dead-letter path and its safety net: the worker exited)."""
    emits = await harness.raw(_inbound(b"acme", _deep(depth), {}))
    assert [e.topic for e in emits] == [harness.settings.dlq_topic]
    assert dict(emits[0].record.headers)["paystream-dlq-reason"] == b"not_a_cloudevent"


async def test_a_binary_command_nested_that_deep_is_a_validation_error(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """Not card data (it has no digits to hold any): kept for an operator to look at,
    and no error with a traceback logged for each such record."""
    t = harness.add_tenant()
    event = build_command("customer.create", t, {"email": "a@example.com"}, command_id="c1")
    rec = encode_event(event, t.encode(), CloudEventsMode.BINARY)
    with caplog.at_level(logging.ERROR):
        emits = await harness.raw(_inbound(rec.key or b"", _deep(1100), dict(rec.headers)))
    out = outcome_of(harness.settings, emits)
    assert out is not None and data(out)["reason"] == "validation_error", out and data(out)
    [dead] = [e.record for e in emits if e.topic == harness.settings.dlq_topic]
    assert dead.value == _deep(1100) and "paystream-dlq-redacted" not in dict(dead.headers)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_deep_record_with_a_trace_state_is_not_kept(harness: Harness) -> None:
    """Unsure of a trace state's members ("cvc=737") it cannot parse: not kept."""
    t = harness.add_tenant()
    value = b'{"tracestate":"cvc=737","a":' + _deep(1100) + b"}"
    emits = await harness.raw(_inbound(t.encode(), value, dict(_STRUCTURED)))
    [dead] = [e.record for e in emits if e.topic == harness.settings.dlq_topic]
    assert dead.value == b"" and b"737" not in b"".join(v for _, v in dead.headers)


async def test_the_safety_net_dead_letters_whatever_fails(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug of ours in the dead-letter path itself: the record still goes somewhere."""

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(harness.processor, "_dead_letter", broken)
    [dead] = harness.processor.dead_letter_bug(_inbound(b"acme", b"junk", {}))
    headers = dict(dead.record.headers)
    assert dead.topic == harness.settings.dlq_topic and dead.record.value == b""
    assert headers["paystream-dlq-dropped"] == b"not_scanned"
    assert headers["paystream-source"] == b"paystream.commands/0/7"


async def test_record_keys_of_no_tenant_cost_no_scan_and_are_not_kept(harness: Harness) -> None:
    t = harness.add_tenant()
    for i in range(50):
        harness.idempotency[f"{t}:k{i}"] = {"expires_at": time.time() + 86400}
    p = harness.processor
    p.purge_expired(t, time.time())  # the first full scan, as after start-up
    before = (dict(p._expiring), set(p._seeded))
    scans: list[str | None] = []
    seed = p._seed_expiry
    p._seed_expiry = lambda tenant: (scans.append(tenant), seed(tenant))[1]  # type: ignore[method-assign]
    for i in range(20):
        key = f"junk{i}-" + "x" * 1000
        await harness.raw(_inbound(key.encode(), b"not json", {}, offset=i))
        assert p.purge_expired(key, time.time()) == 0
    assert scans == [] and (dict(p._expiring), set(p._seeded)) == before
    # Nor a tenant registered since the scan: its records are queued as they are written
    # here, and partitions moving bring a fresh full scan (a scan of the whole table per
    # new tenant cost a second at 300,000 records; review finding).
    t2 = harness.add_tenant()
    p.purge_expired(t2, time.time())
    assert scans == []


async def test_a_record_naming_another_tenant_learns_nothing_of_its_commands(
    harness: Harness,
) -> None:
    """Keyed as tenant A, naming tenant B, with an oversized trace context: answered
    (tenant_mismatch) when B had run the command id, dead-lettered when not."""
    a, b = harness.add_tenant(), harness.add_tenant()
    ran = await harness.send("customer.create", b, {"email": "b@example.com"}, command_id="ord-1")
    assert kind(ran) == "customer.created"
    seen = {}
    for cid in ("ord-1", "ord-2"):
        body = _structured(b, id=cid, traceparent="x" * 17_000)
        emits = await harness.raw(_inbound(a.encode(), json.dumps(body).encode(), _STRUCTURED))
        seen[cid] = sorted(e.topic for e in emits)
    assert seen["ord-1"] == seen["ord-2"], seen


def _utf(encoding: str) -> Any:
    return lambda t: json.dumps(_structured(t, time="not a time")).encode(encoding)


@pytest.mark.parametrize(
    "value",
    [
        _utf("utf-16"),
        _utf("utf-32"),
        lambda t: json.dumps(_structured(t)).replace('"a@example.com"', "9" * 5000).encode(),
    ],
    ids=["utf-16", "utf-32", "5000-digit-number"],
)
async def test_a_structured_command_naming_its_sender_is_answered(
    harness: Harness, value: Any
) -> None:
    """It did not decode, but says who sent it and which command it is: its sender,
    waiting for an outcome, gets a rejection rather than silence."""
    t = harness.add_tenant()
    emits = await harness.raw(_inbound(t.encode(), value(t), _STRUCTURED))
    out = outcome_of(harness.settings, emits)
    assert out is not None and data(out)["reason"] == "validation_error", emits


@pytest.mark.parametrize("spelling", ["plain", "escaped-key", "utf-16", "utf-32"])
async def test_a_deep_record_with_a_trace_state_however_spelled_is_not_kept(
    harness: Harness, spelling: str
) -> None:
    t = harness.add_tenant()
    key = '"\\u0074racestate"' if spelling == "escaped-key" else '"tracestate"'
    deep = "[" * 5000 + "]" * 5000
    text = '{"specversion":"1.0","id":"c1",' + key + ':"cvc=737","a":' + deep + "}"
    value = text.encode(spelling if spelling.startswith("utf") else "utf-8")
    emits = await harness.raw(_inbound(t.encode(), value, dict(_STRUCTURED)))
    [dead] = [e.record for e in emits if e.topic == harness.settings.dlq_topic]
    assert dead.value == b"", spelling


async def test_a_structured_command_whose_id_is_a_number_is_not_answered_as_text(
    harness: Harness,
) -> None:
    """An id that is no JSON string names no command, on either parser's path (the
    stdlib's, taken for the 5,000-digit number, read it as the text "5")."""
    t = harness.add_tenant()
    body = json.dumps(_structured(t, id=5)).replace('"a@example.com"', "9" * 5000).encode()
    emits = await harness.raw(_inbound(t.encode(), body, _STRUCTURED))
    assert [e.topic for e in emits] == [harness.settings.dlq_topic]

"""Trace context that reads as a card number, and trace context's size (review findings).

A random trace id holds a Luhn-valid run of 13 to 19 digits about one time in 430, and
New Relic's trace-state member ends in a 13-digit millisecond timestamp that passes Luhn
one time in ten: such commands were refused `card_data_forbidden`. Now that trace context
is dropped instead (card_data.trace_context_without_cards), and the command runs.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from typing import Any

import pytest

from paystream.agents import pipeline
from paystream.agents.pipeline import Emit, Inbound
from paystream.client import build_command
from paystream.settings import CloudEventsMode
from paystream.streams.codec import encode_event
from paystream.streams.pan import contains_card_number
from tests.agents.conftest import running_harness
from tests.agents.harness import Harness, data, kind, outcome_of

pytestmark = pytest.mark.asyncio

# W3C-valid, as OpenTelemetry's random id generator drew it; its trace id holds a
# Luhn-valid run of 16 digits.
CARD_LIKE_TRACEPARENT = "00-459f039076e099f944d5017262279051-c812fed7cbc0981c-01"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
# New Relic's member: its last field a 13-digit millisecond timestamp, Luhn-valid here.
NEW_RELIC = "33@nr=0-0-33-5043-27ddd2d8890283b4-5569065a5b1313bd-1-1.23456-1764547200006"
_PAY = {"amount": 100, "currency": "USD", "payment_method_token": "pm_card_visa"}
_CARD_LIKE = re.compile(r"459f039076e099f9|1764547200006")


async def test_the_examples_read_as_card_numbers() -> None:
    assert contains_card_number(CARD_LIKE_TRACEPARENT) and contains_card_number(NEW_RELIC)
    assert not contains_card_number(TRACEPARENT)


def _blob(emits: list[Emit]) -> str:
    parts = []
    for e in emits:
        rec = e.record
        parts += [rec.key or b"", rec.value, *(k.encode() + v for k, v in rec.headers)]
    return b"".join(parts).decode("utf-8", "replace")


def _inbound(h: Harness, event: Any, mode: CloudEventsMode, offset: int) -> Inbound:
    tenant = str(event.get_extension("tenantid"))
    rec = encode_event(event, tenant.encode(), mode)
    return Inbound(
        rec.key, rec.value, dict(rec.headers), int(time.time() * 1000), h.settings.commands_topic,
        0, offset,
    )  # fmt: skip


@pytest.mark.parametrize("mode", list(CloudEventsMode))
async def test_a_traceparent_reading_as_a_card_number_is_dropped_not_the_payment(
    harness: Harness, mode: CloudEventsMode
) -> None:
    t = harness.add_tenant()
    event = build_command("payment.create", t, _PAY, traceparent=CARD_LIKE_TRACEPARENT)
    emits = await harness.raw(_inbound(harness, event, mode, 1))
    out = outcome_of(harness.settings, emits)
    assert out is not None and kind(out) == "payment.succeeded", out and data(out)
    assert out.get_extension("traceparent") is None  # the command's own trace, not carried
    assert not _CARD_LIKE.search(_blob(emits))
    stored = json.dumps([dict(harness.idempotency), dict(harness.tables.payments)])
    assert not _CARD_LIKE.search(stored)
    again = outcome_of(harness.settings, await harness.raw(_inbound(harness, event, mode, 1)))
    assert again is not None and again.get_id() == out.get_id()  # a redelivery: the same


@pytest.mark.parametrize("mode", list(CloudEventsMode))
async def test_a_trace_state_member_reading_as_a_card_number_is_dropped_not_the_payment(
    harness: Harness, mode: CloudEventsMode
) -> None:
    t = harness.add_tenant()
    state = f"{NEW_RELIC},rojo=00f067aa0ba902b7"
    event = build_command("payment.create", t, _PAY, traceparent=TRACEPARENT, tracestate=state)
    emits = await harness.raw(_inbound(harness, event, mode, 1))
    out = outcome_of(harness.settings, emits)
    assert out is not None and kind(out) == "payment.succeeded", out and data(out)
    assert str(out.get_extension("traceparent")).split("-")[1] == TRACEPARENT.split("-")[1]
    assert out.get_extension("tracestate") == "rojo=00f067aa0ba902b7"
    assert not _CARD_LIKE.search(_blob(emits))


async def test_a_park_keeps_no_trace_context_reading_as_a_card_number(redis_url: str) -> None:
    async with running_harness(redis_url) as h:
        t = h.add_tenant(gateway_options={"fail_first": {"*": 3}})
        state = f"{NEW_RELIC},rojo=00f067aa0ba902b7"
        for offset, traceparent in enumerate((CARD_LIKE_TRACEPARENT, TRACEPARENT), start=1):
            event = build_command(
                "customer.create", t, {}, traceparent=traceparent, tracestate=state
            )
            [park] = await h.raw(_inbound(h, event, CloudEventsMode.BINARY, offset))
            assert park.topic == h.settings.retry_topic
            headers = dict(park.record.headers)
            assert not _CARD_LIKE.search(_blob([park]))
            if traceparent == TRACEPARENT:
                assert headers["ce_traceparent"] == TRACEPARENT.encode()
                assert headers["ce_tracestate"] == b"rojo=00f067aa0ba902b7"
            else:  # no parent: no trace state passed on (W3C)
                assert "ce_traceparent" not in headers and "ce_tracestate" not in headers


async def test_a_structured_park_keeps_no_trace_context_reading_as_a_card_number(
    redis_url: str,
) -> None:
    """Its body is written again without it; re-driven, it is the same request."""
    async with running_harness(redis_url) as h:
        t = h.add_tenant(gateway_options={"fail_first": {"*": 3}})
        state = f"{NEW_RELIC},rojo=00f067aa0ba902b7"
        body = {"email": "a@example.com", "metadata": {"n": "1.50"}}
        event = build_command(
            "customer.create", t, body, traceparent=CARD_LIKE_TRACEPARENT, tracestate=state
        )
        [park] = await h.raw(_inbound(h, event, CloudEventsMode.STRUCTURED, 1))
        assert park.topic == h.settings.retry_topic
        assert not _CARD_LIKE.search(_blob([park]))
        parked = json.loads(park.record.value)
        assert "traceparent" not in parked and parked["data"] == body
        assert parked["id"] == event.get_id()
        h.add_tenant(t)  # the provider is well again: the re-drive runs
        redrive = Inbound(
            park.record.key, park.record.value, dict(park.record.headers),
            int(time.time() * 1000), h.settings.commands_topic, 0, 2,
        )  # fmt: skip
        out = outcome_of(h.settings, await h.raw(redrive))
        assert out is not None and kind(out) == "customer.created"
        assert out.get_extension("causationid") == event.get_id()


async def test_a_structured_commands_attributes_are_held_to_the_headers_limit(
    harness: Harness,
) -> None:
    """The 16 KiB limit counted binary-mode headers only: a structured command's 60 KB
    traceparent was copied into its outcome and every record it wrote."""
    t = harness.add_tenant()
    reasons = {}
    for offset, mode in enumerate(CloudEventsMode, start=1):
        event = build_command("customer.create", t, {}, traceparent="x" * 60_000)
        emits = await harness.raw(_inbound(harness, event, mode, offset))
        out = outcome_of(harness.settings, emits)
        assert out is not None and kind(out) == "command.rejected"
        reasons[mode] = data(out)["reason"]
        assert harness.settings.dlq_topic in [e.topic for e in emits]
        assert max(len(e.record.value) + sum(len(v) for _, v in e.record.headers)
                   for e in emits if e.topic != harness.settings.dlq_topic) < 16_384  # fmt: skip
    assert set(reasons.values()) == {"payload_too_large"}
    large = {"metadata": {f"k{i}": "v" * 490 for i in range(40)}}  # a 20 KB body
    fits = build_command("customer.create", t, large, traceparent=TRACEPARENT)
    out = outcome_of(
        harness.settings, await harness.raw(_inbound(harness, fits, CloudEventsMode.STRUCTURED, 9))
    )
    assert out is not None and kind(out) == "customer.created"  # a large body is not the limit


# Review of the exemption (the same session): what it must not hide.
CARD = "4111111111111111"
_W3C = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _attrs(tenant: str | None, cid: str, ctype: str = "payment.create") -> dict[str, str]:
    a = {
        "specversion": "1.0",
        "id": cid,
        "source": "test",
        "type": f"com.paystream.command.{ctype}",
    }
    return {**a, "tenantid": tenant} if tenant else a


def _binary(h: Harness, key: bytes, attrs: dict[str, str], value: bytes, offset: int) -> Inbound:
    headers = {f"ce_{k}": v.encode() for k, v in attrs.items()}
    headers["content-type"] = b"application/json"
    return Inbound(key, value, headers, int(time.time() * 1000), h.settings.commands_topic, 0,
                   offset)  # fmt: skip


def _structured(h: Harness, key: bytes, text: str, offset: int, **headers: bytes) -> Inbound:
    headers = {"content-type": b"application/cloudevents+json", **headers}
    return Inbound(key, text.encode(), headers, int(time.time() * 1000),
                   h.settings.commands_topic, 0, offset)  # fmt: skip


async def test_a_record_key_equal_to_the_traceparent_is_still_scanned(redis_url: str) -> None:
    async with running_harness(redis_url) as h:
        t = h.add_tenant(gateway_options={"fail_first": {"*": 3}})
        for offset, tenant in enumerate((None, t), start=1):  # no tenantid: the key is it
            attrs = {**_attrs(tenant, f"c-key-{offset}", "customer.create"), "traceparent": CARD}
            emits = await h.raw(_binary(h, CARD.encode(), attrs, b"{}", offset))
            assert CARD not in _blob(emits)


async def test_a_structured_commands_header_equal_to_its_tracestate_is_scanned(
    redis_url: str,
) -> None:
    """A kept ce_* header (not an attribute, in structured mode) equal to the body's
    tracestate was exempted with it, and parked."""
    async with running_harness(redis_url) as h:
        t = h.add_tenant(gateway_options={"fail_first": {"*": 3}})
        body = {**_attrs(t, "c-hdr-1", "customer.create"), "traceparent": _W3C,
                "tracestate": f"v={CARD}", "data": {}}  # fmt: skip
        rec = _structured(h, t.encode(), json.dumps(body), 1, ce_note=f"v={CARD}".encode())
        assert CARD not in _blob(await h.raw(rec))


@pytest.mark.parametrize("mode", list(CloudEventsMode))
async def test_a_card_number_given_twice_behind_the_trace_state_is_refused(
    redis_url: str, mode: CloudEventsMode
) -> None:
    """A key given twice parses to its last value: the earlier one, equal to the trace
    state, was seen only by the value's text scan, which the exemption blanked."""
    async with running_harness(redis_url) as h:
        t = h.add_tenant(gateway_options={"fail_first": {"*": 3}})
        state = f"v={CARD}"
        if mode is CloudEventsMode.BINARY:
            attrs = {**_attrs(t, "c-dup-2", "customer.create"), "traceparent": _W3C,
                     "tracestate": state}  # fmt: skip
            value = f'{{"description": "{state}", "description": "a customer"}}'.encode()
            rec = _binary(h, t.encode(), attrs, value, 1)
        else:
            head = json.dumps(_attrs(t, "c-dup-1", "customer.create"))[:-1]
            text = (head + f', "traceparent": "{_W3C}", "tracestate": "{state}"'
                    f', "data": {{"note": "{state}"}}, "data": {{}}}}')  # fmt: skip
            rec = _structured(h, t.encode(), text, 1)
        emits = await h.raw(rec)
        out = outcome_of(h.settings, emits)
        assert out is not None and data(out)["reason"] == "card_data_forbidden", out and data(out)
        assert CARD not in _blob(emits)


@pytest.mark.parametrize("where", ["attribute", "data", "escaped-data", "numeric-trace"])
async def test_a_card_number_beside_a_card_like_traceparent_is_refused(
    harness: Harness, where: str
) -> None:
    t = harness.add_tenant()
    base = {**_attrs(t, f"c-held-{where}"), "traceparent": CARD}
    if where == "attribute":
        text = json.dumps({**base, "note": CARD, "data": _PAY})
    elif where == "data":
        text = json.dumps({**base, "data": {**_PAY, "description": CARD}})
    elif where == "escaped-data":
        text = json.dumps({**base, "data": {**_PAY, "description": "x"}}).replace(
            '"x"', '"\\u0034111111111111111"'
        )
    else:
        text = json.dumps({**base, "data": _PAY}).replace(f'"{CARD}"', CARD)
    emits = await harness.raw(_structured(harness, t.encode(), text, 3))
    out = outcome_of(harness.settings, emits)
    assert out is not None and data(out)["reason"] == "card_data_forbidden", data(out)
    assert CARD not in _blob(emits)


def _before_the_structured_limit(m: pytest.MonkeyPatch) -> None:
    """The version before: no attribute limit for structured commands."""
    m.setattr(pipeline, "is_structured", lambda headers: False)


async def test_a_structured_command_answered_before_the_attribute_limit_keeps_its_answer(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redelivered after the upgrade (a crash before the commit), a payment the version
    before charged was rejected payload_too_large."""
    t = harness.add_tenant()
    event = build_command("payment.create", t, _PAY, traceparent="x" * 20_000)
    inbound = _inbound(harness, event, CloudEventsMode.STRUCTURED, 7)
    with monkeypatch.context() as m:
        _before_the_structured_limit(m)
        first = outcome_of(harness.settings, await harness.raw(inbound))
    assert first is not None and kind(first) == "payment.succeeded"
    again = outcome_of(harness.settings, await harness.raw(inbound))
    assert again is not None
    assert (kind(again), again.get_id()) == (kind(first), first.get_id()), data(again)


async def test_a_park_from_before_the_attribute_limit_is_re_driven_not_rejected(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parked by the version before (the provider may have charged), its re-drive was
    rejected payload_too_large and dead-lettered (never replayed)."""
    async with running_harness(redis_url) as h:
        t = h.add_tenant(gateway_options={"fail_first": {"*": 3}})
        event = build_command("payment.create", t, _PAY, traceparent="x" * 20_000)
        with monkeypatch.context() as m:
            _before_the_structured_limit(m)
            [park] = await h.raw(_inbound(h, event, CloudEventsMode.STRUCTURED, 7))
        assert park.topic == h.settings.retry_topic
        redrive = replace_record(h, park, 8)
        out = outcome_of(h.settings, await h.raw(redrive))
        assert out is not None and kind(out) == "payment.succeeded", data(out)


async def test_a_park_from_before_the_codec_change_gets_no_rejection(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ce_id and CE_ID, parked by the version before (which kept the last given): the
    provider may have charged, so its re-drive, now undecodable, is not answered."""
    decode = pipeline.decode_record

    def last_spelling_wins(key: Any, value: Any, headers: Any) -> Any:
        last = {name.lower(): (name, v) for name, v in headers.items()}
        return decode(key, value, dict(last.values()))

    async with running_harness(redis_url) as h:
        t = h.add_tenant(gateway_options={"fail_first": {"*": 3}})
        attrs = _attrs(t, "c-one", "payment.create")
        rec = _binary(h, t.encode(), attrs, json.dumps(_PAY).encode(), 1)
        rec = dataclasses.replace(rec, headers={**rec.headers, "CE_ID": b"c-two"})
        with monkeypatch.context() as m:
            m.setattr(pipeline, "decode_record", last_spelling_wins)
            [park] = await h.raw(rec)
        assert park.topic == h.settings.retry_topic
        emits = await h.raw(replace_record(h, park, 2))
        assert outcome_of(h.settings, emits) is None
        assert [e.topic for e in emits] == [h.settings.dlq_topic]


def replace_record(h: Harness, park: Emit, offset: int) -> Inbound:
    """``park`` re-driven by `dlq replay` (its headers as parked), read at ``offset``."""
    rec = park.record
    return Inbound(rec.key, rec.value, dict(rec.headers), int(time.time() * 1000),
                   h.settings.commands_topic, 0, offset)  # fmt: skip

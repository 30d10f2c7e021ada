"""What spans and outcomes may show of a hostile command (observability review): an
over-long tenant or type cut into a card number, a let-through command id holding a
card security code."""

from __future__ import annotations

import time

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from paystream.agents.card_data import safe_id
from paystream.client import build_command
from paystream.streams.pan import contains_card_number
from paystream.streams.tracecontext import command_span_id
from tests.agents.harness import Harness, data, kind
from tests.agents.test_card_data_hiding_places import _PAY, TRACEPARENT, _inbound, _shows_code
from tests.agents.test_replay_window import _KEY, _sealed
from tests.agents.test_tracing import _taken, _traced, traced  # noqa: F401

PAN = "4111111111111111"
# A 20-digit run is no card number; its first 16 digits, where a cut at 255 ends, are.
LONG = "x" * 239 + PAN + "0000"


async def test_an_over_long_tenant_cut_into_a_card_number_is_redacted(
    traced: tuple[Harness, InMemorySpanExporter],  # noqa: F811
) -> None:
    h, exporter = traced
    assert not contains_card_number(LONG) and contains_card_number(LONG[:255])
    event = build_command("customer.create", "t", {})
    event.get_attributes()["tenantid"] = LONG
    _, out = await h.send_event(event, offset=3)
    assert out is not None and kind(out) == "command.rejected"
    assert data(out)["reason"] == "validation_error"
    assert PAN not in str(out.get_attributes()) + str(data(out))
    assert PAN not in "\n".join(s.to_json() for s in _taken(exporter))


async def test_an_over_long_type_cut_into_a_card_number_is_redacted(
    traced: tuple[Harness, InMemorySpanExporter],  # noqa: F811
) -> None:
    h, exporter = traced
    t = h.add_tenant()
    event = build_command("customer.create", t, {})
    event.get_attributes()["type"] = "com.paystream.command." + LONG
    _, out = await h.send_event(event, offset=4)
    assert out is not None and kind(out) == "command.rejected"
    assert PAN not in str(out.get_attributes()) + str(data(out))
    assert PAN not in "\n".join(s.to_json() for s in _taken(exporter))


async def test_a_let_through_command_id_holding_a_code_is_not_traced(redis_url: str) -> None:
    """A payment re-driven past the provider's key window (its first attempt sealed a day
    ago) by an id holding a code: let through (refusing it could leave a charge
    unanswered) and parked again as stale. Its span names its id as its logs do, and
    keeps the span id its outcome's traceparent would name."""
    day_ago = int(time.time() * 1000) - 25 * 3_600_000
    code_id = '{"card_cvc":"737"}'
    async with _traced(redis_url, master_key=_KEY) as (h, exporter):
        t = h.add_tenant()
        event = build_command("payment.create", t, _PAY, command_id=code_id)
        rec = _inbound(event, 2, ce_traceparent=TRACEPARENT.encode())
        emits = await h.raw(_sealed(h, rec, day_ago))
        assert [e.topic for e in emits] == [h.settings.retry_topic]
        [command] = [s for s in _taken(exporter) if s.kind is SpanKind.CONSUMER]
    assert not _shows_code(command.to_json())
    assert command.attributes is not None
    assert command.attributes["messaging.message.id"] == safe_id(code_id)
    assert command.context is not None
    assert command.context.span_id == command_span_id(t, code_id, "0:2", TRACEPARENT)


async def test_a_field_name_cut_into_a_card_number_is_redacted(harness: Harness) -> None:
    """A validation error names the sender's field, cut to 100 characters: the cut made
    a card number of a 20-digit run the whole name held (review of the day's fixes)."""
    t = harness.add_tenant()
    name = "a" * 84 + PAN + "0000"
    assert not contains_card_number(name) and contains_card_number(name[:100])
    out = await harness.send("customer.create", t, {name: 1})
    assert kind(out) == "command.rejected" and data(out)["reason"] == "validation_error"
    assert PAN not in str(data(out))


async def test_an_unregistered_tenant_cut_into_a_card_number_is_redacted(harness: Harness) -> None:
    """The dashboard's activity names an unregistered tenant by 64 characters: the cut
    made a card number (review of the day's fixes)."""
    tenant = "a" * 48 + PAN + "0000"
    assert not contains_card_number(tenant) and contains_card_number(tenant[:64])
    emits = await harness.raw(_inbound(build_command("customer.create", tenant, {}), 7))
    summaries = [e.summary for e in emits if e.summary]
    assert summaries and PAN not in str(summaries)


async def test_a_park_keeps_no_traceparent_that_is_no_trace_context(harness: Harness) -> None:
    """Decoding ignores it (W3C), so nothing needs it on a re-drive; parked, "cvc=737"
    sat on the retry topic (review of the day's fixes)."""
    t = harness.add_tenant(gateway_options={"fail_rate": 1.0})
    event = build_command("payment.create", t, _PAY, command_id="c1")
    emits = await harness.raw(_inbound(event, 1, ce_traceparent=b"cvc=737"))
    [park] = [e for e in emits if e.topic == harness.settings.retry_topic]
    assert "ce_traceparent" not in dict(park.record.headers)
    good = await harness.raw(_inbound(event, 2, ce_traceparent=TRACEPARENT.encode()))
    [park] = [e for e in good if e.topic == harness.settings.retry_topic]
    assert dict(park.record.headers)["ce_traceparent"] == TRACEPARENT.encode()

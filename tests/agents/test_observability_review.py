"""What spans and outcomes may show of a hostile command (observability review): an
over-long tenant or type cut into a card number, a let-through command id holding a
card security code."""

from __future__ import annotations

import time
import weakref
from typing import Any

import pytest
from faust.streams import _current_event
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from paystream.agents.card_data import safe_id
from paystream.client import build_command
from paystream.streams.pan import contains_card_number
from paystream.streams.tracecontext import command_span_id
from paystream.tables.changelog import collect_changelog
from paystream.tables.retention import RetentionSweep
from tests.agents.harness import Harness, data, kind
from tests.agents.test_card_data_hiding_places import _PAY, TRACEPARENT, _inbound, _shows_code
from tests.agents.test_command_id_resent import _PAY as _PAY_RESENT
from tests.agents.test_command_id_resent import _c1_parked_under_k1, _effects, _legacy_pointer, _rec
from tests.agents.test_let_through import _answer
from tests.agents.test_replay_window import _KEY, _sealed
from tests.agents.test_table_access import SOURCE, _Event, _table
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


# ---- review of the idle tenants' sweep (2f2e77f) ----------------------------------------


def _real_table(h: Harness, name: str) -> Any:
    table, _ = _table(name)
    for k, v in h.idempotency.items():
        table.data.data[k] = v
        table.data._key_partition[k] = 0  # the tenant's partition
    return table


@pytest.mark.parametrize("current", [None, 2])
async def test_the_sweeps_judge_writes_on_the_keys_partition(
    harness: Harness, current: int | None
) -> None:
    """The judge may extend an expired legacy id pointer its parked request still needs:
    a write, which went to the current event's partition (none in process_batch after
    the tenants ran: the batch failed, the worker exited, again after every restart)."""
    t = await _c1_parked_under_k1(harness)
    # (Expired past the sweep's day of grace: a redelivered command, taken before it
    # expired, is judged as of then.)
    pointer = _legacy_pointer(harness, t, -2 * 86_400)
    harness.processor.rescan_expiry()
    table = _real_table(harness, f"idem-{current}")
    harness.processor.idempotency = table
    sweep = RetentionSweep([], 0, SOURCE, lambda: {0, 1, 2, 3})
    sweep.expiring.append((table, harness.processor.idempotency_expired))
    token = None if current is None else _current_event.set(weakref.ref(_Event(current)))
    try:
        with collect_changelog() as batch:
            sweep.step(time.time())
    finally:
        if token is not None:
            _current_event.reset(token)
    assert pointer in table  # kept, extended
    assert table.data._key_partition.get(pointer) == 0
    assert {r.partition for r in batch.records()} == {0}


async def test_a_scan_run_while_handing_over_is_run_again_after_the_recovery(
    harness: Harness,
) -> None:
    """A batch drained at a revocation may run the purge's first scan before the new
    assignment's recovery: a legacy id pointer of a request parked there, recovered
    after, went unseen, and the request sent under a new key charged again. The scan is
    asked for again once the recovery completes."""
    from paystream.agents import commands

    p = harness.processor
    t = await _c1_parked_under_k1(harness)
    _legacy_pointer(harness, t, 3600)
    saved = {k: v for k, v in harness.idempotency.items() if k.startswith(f"{t}:")}
    for k in saved:
        del harness.idempotency[k]  # t's partition is not this worker's yet
    p.rescan_expiry()  # the revocation
    p.purge_expired(harness.add_tenant(), time.time())  # the drained batch's purge
    harness.idempotency.update(saved)  # the recovery brings t's partition
    runner = commands.runner
    kept = runner._processor
    runner._processor = p
    try:
        await commands._rescan_after_recovery()
    finally:
        runner._processor = kept
    again = await _answer(harness, _rec(t, "payment.create", _PAY_RESENT, "c1", "k2"))
    assert kind(again) == "payment.succeeded"  # its first key's charge, answered
    # ... and the worker asks for it: Faust's signal, sent once the recovery is done.
    receivers = list(commands.app.on_rebalance_complete.iter_receivers(commands.app))
    assert commands._rescan_after_recovery in receivers
    assert await _effects(harness, t, "charge") == 1

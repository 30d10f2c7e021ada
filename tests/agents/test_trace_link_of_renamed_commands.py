"""The outcome's traceparent names the command span paystream exported, also for a
command rejected under a name other than the one it came with (a control character in
its tenant or id); and the span names it as the outcome does (review h60d: the span took
the raw names, so consumers of the outcome linked to a span never exported)."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from paystream.client import build_command
from tests.agents.harness import Harness
from tests.agents.test_card_data_hiding_places import TRACEPARENT
from tests.agents.test_tracing import _taken, traced  # noqa: F401


async def _traced_send(
    harness: tuple[Harness, InMemorySpanExporter],
    data: dict[str, Any],
    tenant: str,
    command_id: str,
) -> tuple[Any, Any]:
    """A command named ``tenant``/``command_id`` (with a producer's traceparent) and its
    outcome, and the consumer span the worker exported for it."""
    h, exporter = harness
    h.add_tenant("ok-tenant")
    event = build_command("customer.create", "ok-tenant", data, command_id="c0")
    attrs = event.get_attributes()
    attrs["id"], attrs["tenantid"], attrs["traceparent"] = command_id, tenant, TRACEPARENT
    _, out = await h.send_event(event, offset=5)
    assert out is not None
    [span] = [s for s in _taken(exporter) if s.kind is SpanKind.CONSUMER]
    assert span.context is not None
    return out, span


@pytest.mark.parametrize(
    ("tenant", "command_id"),
    [("ok-tenant", "c1"), ("ok-tenant", "id\x01with-control"), ("bad\x01tenant", "c1")],
    ids=["plain", "control-in-id", "control-in-tenant"],
)
async def test_outcome_traceparent_names_the_exported_span(
    traced: tuple[Harness, InMemorySpanExporter],  # noqa: F811
    tenant: str,
    command_id: str,
) -> None:
    out, span = await _traced_send(traced, {}, tenant, command_id)
    parent_of_consumers = str(out.get_extension("traceparent")).split("-")[2]
    assert parent_of_consumers == f"{span.context.span_id:016x}"


async def test_span_names_the_command_as_its_outcome_does(
    traced: tuple[Harness, InMemorySpanExporter],  # noqa: F811
) -> None:
    h, exporter = traced
    event = build_command("customer.create", "x", {}, command_id="c0")
    attrs = event.get_attributes()
    attrs["id"], attrs["tenantid"] = "id\x1b[2J", "bad\x1b[2Jtenant"
    _, out = await h.send_event(event, offset=6)
    assert out is not None
    [span] = [s for s in _taken(exporter) if s.kind is SpanKind.CONSUMER]
    a = dict(span.attributes or {})
    assert (a["paystream.tenant_id"], a["messaging.message.id"]) == (
        out.get_extension("tenantid"),
        out.get_extension("causationid") or out.get_data()["command_id"],
    )


# A command holding a card security code: its span begun by that gate (review h60e).
@pytest.mark.parametrize(
    ("tenant", "command_id"),
    [("ok-tenant", "id\x01with-control"), ("bad\x01tenant", "c1")],
    ids=["control-in-id", "control-in-tenant"],
)
async def test_a_security_code_rejection_links_to_its_exported_span(
    traced: tuple[Harness, InMemorySpanExporter],  # noqa: F811
    tenant: str,
    command_id: str,
) -> None:
    out, span = await _traced_send(traced, {"metadata": {"card_cvc": "737"}}, tenant, command_id)
    assert out.get_data()["reason"] == "card_data_forbidden"
    a = dict(span.attributes or {})
    # The span names the command as the outcome does (no raw control characters) ...
    assert (a["paystream.tenant_id"], a["messaging.message.id"]) == (
        out.get_extension("tenantid"),
        out.get_extension("causationid"),
    )
    # ... and the outcome's traceparent names that span.
    assert str(out.get_extension("traceparent")).split("-")[2] == f"{span.context.span_id:016x}"

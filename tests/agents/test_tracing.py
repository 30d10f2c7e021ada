"""OpenTelemetry tracing of commands against the real pipeline (simulator on Redis).

The SDK's InMemorySpanExporter receives each span as it ends (``tracing.configure``
with an exporter), so what a command's run exported is read right after it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from cloudevents.core.v1.event import CloudEvent
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from paystream import tracing
from paystream.agents.pipeline import Inbound
from paystream.client import build_command
from paystream.settings import CloudEventsMode, TraceExporter, load_settings
from paystream.streams.codec import encode_event
from paystream.streams.tracecontext import parse_traceparent
from tests.agents.conftest import running_harness
from tests.agents.harness import Harness, data, kind

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
PAN = "4111111111111111"


@pytest_asyncio.fixture
async def traced(redis_url: str) -> AsyncIterator[tuple[Harness, InMemorySpanExporter]]:
    async with _traced(redis_url) as pair:
        yield pair


class _traced:
    """A harness whose processor traces into an in-memory exporter."""

    def __init__(self, redis_url: str, **settings: Any) -> None:
        self._running = running_harness(redis_url, **settings)
        self.exporter = InMemorySpanExporter()

    async def __aenter__(self) -> tuple[Harness, InMemorySpanExporter]:
        h = await self._running.__aenter__()
        h.processor.tracing = tracing.configure(h.settings, exporter=self.exporter, install=False)
        assert h.processor.tracing is not None
        self._tracing = h.processor.tracing
        return h, self.exporter

    async def __aexit__(self, *exc: object) -> None:
        self._tracing.shutdown()
        await self._running.__aexit__(*exc)


def _with(event: CloudEvent, **extensions: str) -> CloudEvent:
    """``event`` with more CloudEvents extension attributes (``tracestate``)."""
    return CloudEvent({**event.get_attributes(), **extensions}, event.get_data())


def _taken(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    spans = list(exporter.get_finished_spans())
    exporter.clear()
    return spans


def _split(spans: list[ReadableSpan]) -> tuple[ReadableSpan, list[ReadableSpan]]:
    """The command span and its provider-call spans."""
    [command] = [s for s in spans if s.kind is SpanKind.CONSUMER]
    calls = [s for s in spans if s.kind is SpanKind.CLIENT]
    assert len(spans) == 1 + len(calls), [s.name for s in spans]
    return command, calls


def _attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def test_a_command_span_continues_the_producers_trace(
    traced: tuple[Harness, InMemorySpanExporter],
) -> None:
    h, exporter = traced
    t = h.add_tenant()
    cmd = _with(
        build_command("customer.create", t, {}, traceparent=TRACEPARENT),
        tracestate="vendor=opaque-1,other=x",
    )
    _, out = await h.send_event(cmd, offset=7)
    assert out is not None and kind(out) == "customer.created"
    command, [call] = _split(_taken(exporter))

    # The producer's span is the parent: same trace, remote parent, its trace state.
    assert command.name == "paystream.command customer.create"
    assert command.parent is not None and command.parent.is_remote
    assert f"{command.parent.span_id:016x}" == PARENT_ID
    assert f"{command.context.trace_id:032x}" == TRACE_ID
    assert command.context.trace_state.get("vendor") == "opaque-1"
    assert command.status.status_code is StatusCode.UNSET
    attrs = _attrs(command)
    assert attrs == {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": h.settings.commands_topic,
        "messaging.destination.partition.id": "0",
        "messaging.kafka.offset": 7,
        "messaging.consumer.group.name": h.settings.app_id,
        "messaging.message.body.size": len(
            encode_event(cmd, t.encode(), CloudEventsMode.BINARY).value
        ),
        "messaging.message.id": cmd.get_id(),
        "paystream.tenant_id": t,
        "paystream.command.type": "customer.create",
        "paystream.outcome.type": "customer.created",
    }

    # The provider call: a CLIENT child of the command span.
    assert call.name == "paystream.gateway create_customer"
    assert call.parent is not None and call.parent.span_id == command.context.span_id
    assert call.context.trace_id == command.context.trace_id
    assert _attrs(call) == {
        "paystream.gateway.provider": "simulator",
        "paystream.gateway.operation": "create_customer",
        "paystream.gateway.attempts": 1,
    }
    assert call.status.status_code is StatusCode.UNSET

    # The outcome continues the trace under the command span.
    assert out.get_extension("traceparent") == (f"00-{TRACE_ID}-{command.context.span_id:016x}-01")


async def test_a_decline_is_an_error_with_its_code(
    traced: tuple[Harness, InMemorySpanExporter],
) -> None:
    h, exporter = traced
    t = h.add_tenant()
    out = await h.send(
        "payment.create",
        t,
        {"amount": 100, "currency": "USD", "payment_method_token": "pm_card_chargeDeclined"},
        traceparent=TRACEPARENT,
    )
    assert kind(out) == "payment.failed"
    command, [call] = _split(_taken(exporter))
    assert command.name == "paystream.command payment.create"
    assert command.status.status_code is StatusCode.ERROR
    assert command.status.description == "card_declined"
    attrs = _attrs(command)
    assert attrs["paystream.outcome.type"] == "payment.failed"
    assert attrs["paystream.error.code"] == attrs["error.type"] == "card_declined"
    assert call.name == "paystream.gateway create_payment"
    assert call.status.status_code is StatusCode.ERROR
    assert call.status.description == "card_declined"
    assert _attrs(call)["paystream.gateway.error_code"] == "card_declined"
    assert _attrs(call)["paystream.gateway.attempts"] == 1


async def test_a_rejection_is_an_error_with_its_reason_and_calls_no_provider(
    traced: tuple[Harness, InMemorySpanExporter],
) -> None:
    h, exporter = traced
    t = h.add_tenant()
    out = await h.send(
        "payment.create",
        t,
        {"amount": -1, "currency": "USD", "payment_method_token": "pm_card_visa"},
        traceparent=TRACEPARENT,
    )
    assert data(out)["reason"] == "validation_error"
    command, calls = _split(_taken(exporter))
    assert calls == []
    assert command.status.status_code is StatusCode.ERROR
    assert command.status.description == "validation_error"
    attrs = _attrs(command)
    assert attrs["paystream.outcome.type"] == "command.rejected"
    assert attrs["paystream.rejection.reason"] == attrs["error.type"] == "validation_error"
    # A rejection that depends on state: the same.
    await h.send("payment.capture", t, {"payment_id": "nope"})
    command, calls = _split(_taken(exporter))
    assert calls == []
    assert command.status.description == "not_found"


async def test_a_parked_command_shows_its_attempts_and_why(redis_url: str) -> None:
    async with _traced(redis_url) as (h, exporter):
        t = h.add_tenant(gateway_options={"fail_first": {"*": 50}})
        cmd = build_command(
            "payment.create",
            t,
            {"amount": 100, "currency": "USD", "payment_method_token": "pm_card_visa"},
        )
        emits, out = await h.send_event(cmd, offset=3)
        assert out is None and [e.topic for e in emits] == [h.settings.retry_topic]
        command, [call] = _split(_taken(exporter))
    assert command.parent is None  # no traceparent: a trace of its own
    assert command.status.status_code is StatusCode.ERROR
    assert command.status.description == "provider_unavailable"
    assert _attrs(command)["paystream.parked.reason"] == "provider_unavailable"
    assert "paystream.outcome.type" not in _attrs(command)
    assert _attrs(call)["paystream.gateway.attempts"] == h.settings.gateway_max_attempts
    assert _attrs(call)["paystream.gateway.error_code"] == "provider_unavailable"


async def test_a_record_that_is_no_command_gets_a_root_span(
    traced: tuple[Harness, InMemorySpanExporter],
) -> None:
    h, exporter = traced
    await h.raw(Inbound(key=b"t", value=b"not json", headers={}, timestamp_ms=0, topic="c"))
    [span] = _taken(exporter)
    assert span.name == "paystream.command unknown"
    assert span.parent is None
    assert span.status.status_code is StatusCode.ERROR
    assert _attrs(span)["paystream.dead_letter.reason"] == "not_a_cloudevent"


async def test_no_personal_or_card_data_in_any_span(
    traced: tuple[Harness, InMemorySpanExporter],
) -> None:
    h, exporter = traced
    t = h.add_tenant()
    secrets = {
        "email": "jane.doe.tracing@example.com",
        "name": "Jane Tracing Doe",
        "description": "prefers-morning-calls",
        "metadata": "loyalty-gold-4471",
        "payment description": "birthday-present-for-ann",
        "payment metadata": "order-note-fragile",
    }
    cus = await h.send(
        "customer.create",
        t,
        {
            "email": secrets["email"],
            "name": secrets["name"],
            "description": secrets["description"],
            "metadata": {"tier": secrets["metadata"]},
        },
        traceparent=TRACEPARENT,
    )
    customer_id = data(cus)["entity_id"]
    await h.send(
        "customer.update",
        t,
        {"customer_id": customer_id, "email": secrets["email"], "name": secrets["name"]},
    )
    await h.send(
        "payment.create",
        t,
        {
            "amount": 100,
            "currency": "USD",
            "customer_id": customer_id,
            "payment_method_token": "pm_card_chargeDeclined",
            "description": secrets["payment description"],
            "metadata": {"note": secrets["payment metadata"]},
        },
    )
    # Rejections whose messages may echo what was sent; card data sent where it is refused.
    await h.send("customer.create", t, {"email": "not-an-email " + secrets["name"]})
    await h.send("customer.create", t, {"metadata": {"card": PAN}, "name": secrets["name"]})
    await h.send("customer.update", t, {"customer_id": "missing", "name": secrets["name"]})
    spans = _taken(exporter)
    assert len([s for s in spans if s.kind is SpanKind.CONSUMER]) == 6
    exported = "\n".join(s.to_json() for s in spans)
    for what, value in [*secrets.items(), ("card number", PAN)]:
        assert value not in exported, what


async def test_the_outcome_traceparent_is_the_same_on_redelivery_traced_or_not(
    redis_url: str,
) -> None:
    """Outcomes stay byte-identical: the command span's id derives from the command, so
    a redelivered record (or one run by a worker with tracing off) gives the same one."""
    async with _traced(redis_url) as (h, exporter):
        t = h.add_tenant()
        body = {"amount": 100, "currency": "USD", "payment_method_token": "pm_card_visa"}
        cmd = build_command("payment.create", t, body, traceparent=TRACEPARENT)
        first, out = await h.send_event(cmd, offset=11)
        assert out is not None and kind(out) == "payment.succeeded"
        command, _ = _split(_taken(exporter))
        again, _ = await h.send_event(cmd, offset=11)  # redelivered
        assert [e.record for e in again] == [e.record for e in first]
        redelivered = _taken(exporter)
        [replayed] = [s for s in redelivered if s.kind is SpanKind.CONSUMER]
        assert replayed.context.span_id == command.context.span_id
        assert not [s for s in redelivered if s.kind is SpanKind.CLIENT]  # answered again
        # A retry under another command id is answered with the first outcome, its
        # traceparent included.
        retry = build_command(
            "payment.create",
            t,
            body,
            idempotency_key=cmd.get_extension("idempotencykey") or cmd.get_id(),
            traceparent=f"00-{'c' * 32}-{'d' * 16}-01",
        )
        _, answered = await h.send_event(retry, offset=12)
        assert answered is not None
        assert answered.get_extension("traceparent") == out.get_extension("traceparent")
    parsed = parse_traceparent(str(out.get_extension("traceparent")))
    assert parsed is not None and parsed[1] == command.context.span_id

    # The same record on a worker with tracing off: the same traceparent.
    async with running_harness(redis_url) as plain:
        assert plain.processor.tracing is None
        plain.add_tenant(t)
        _, untraced = await plain.send_event(cmd, offset=11)
    assert untraced is not None
    assert untraced.get_extension("traceparent") == out.get_extension("traceparent")


async def test_sample_ratio_zero_records_nothing_without_a_sampled_parent(
    redis_url: str,
) -> None:
    async with _traced(redis_url, otel_sample_ratio=0.0) as (h, exporter):
        t = h.add_tenant()
        await h.send("customer.create", t, {})
        unsampled = f"00-{TRACE_ID}-{PARENT_ID}-00"
        out = await h.send("customer.create", t, {}, traceparent=unsampled)
        assert exporter.get_finished_spans() == ()
        # Still the same trace for the consumers, not sampled either.
        carried = str(out.get_extension("traceparent"))
        assert carried.startswith(f"00-{TRACE_ID}-") and carried.endswith("-00")
        # Parent-based: a producer's sampled trace is followed whatever the ratio.
        await h.send("customer.create", t, {}, traceparent=TRACEPARENT)
        command, [_] = _split(_taken(exporter))
        assert f"{command.context.trace_id:032x}" == TRACE_ID


async def test_exporter_none_installs_nothing(harness: Harness) -> None:
    settings = load_settings()
    assert settings.otel_exporter is TraceExporter.NONE
    assert tracing.configure(settings) is None
    assert tracing.active() is None
    assert harness.processor.tracing is None
    # Nothing of the SDK is even imported (a fresh interpreter: this one imported it).
    code = (
        "import sys; from paystream import tracing; from paystream.settings import "
        "load_settings; from opentelemetry import trace; "
        "assert tracing.configure(load_settings()) is None; "
        "assert tracing.active() is None; "
        "assert 'opentelemetry.sdk' not in sys.modules, 'SDK imported'; "
        "assert type(trace.get_tracer_provider()).__name__ == 'ProxyTracerProvider'"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(p for p in sys.path if p)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


async def test_console_exporter_writes_one_json_span_a_line(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with running_harness(redis_url, otel_exporter="console") as h:
        traced = tracing.configure(h.settings, install=False)
        assert traced is not None
        h.processor.tracing = traced
        t = h.add_tenant()
        await h.send("customer.create", t, {}, traceparent=TRACEPARENT)
        traced.shutdown()  # exports what the batch processor holds
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    names = {line["name"] for line in lines}
    assert names == {"paystream.command customer.create", "paystream.gateway create_customer"}
    assert all(line["context"]["trace_id"] == "0x" + TRACE_ID for line in lines)
    assert all(line["resource"]["attributes"]["service.name"] == "paystream" for line in lines)


def test_otlp_exporter_reads_the_standard_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector.invalid:4318")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "payments-eu")
    traced = tracing.configure(load_settings(otel_exporter="otlp"), install=False)
    assert traced is not None
    try:
        [processor] = traced.provider._active_span_processor._span_processors
        assert isinstance(processor, BatchSpanProcessor)
        exporter: Any = processor._batch_processor._exporter
        assert not isinstance(exporter, ConsoleSpanExporter)
        assert exporter._endpoint == "http://collector.invalid:4318/v1/traces"
        assert traced.provider.resource.attributes["service.name"] == "payments-eu"
    finally:
        traced.provider.shutdown()


async def test_a_structured_command_is_traced_too(
    traced: tuple[Harness, InMemorySpanExporter],
) -> None:
    h, exporter = traced
    t = h.add_tenant()
    cmd = build_command("customer.create", t, {}, traceparent=TRACEPARENT)
    _, out = await h.send_event(cmd, mode=CloudEventsMode.STRUCTURED)
    assert out is not None
    command, [_] = _split(_taken(exporter))
    assert command.parent is not None and f"{command.parent.span_id:016x}" == PARENT_ID
    assert out.get_extension("traceparent") == (f"00-{TRACE_ID}-{command.context.span_id:016x}-01")


def test_the_worker_installs_the_sdk_when_an_exporter_is_set() -> None:
    """worker.main's ``tracing.configure(settings)``: the process's tracer provider, and
    the tracing the command agent's processor takes (a fresh interpreter: global state)."""
    code = (
        "from paystream import tracing; from paystream.settings import load_settings; "
        "from opentelemetry import trace; from opentelemetry.sdk.trace import TracerProvider; "
        "t = tracing.configure(load_settings()); "
        "assert t is not None and tracing.active() is t; "
        "assert trace.get_tracer_provider() is t.provider; "
        "assert isinstance(t.provider, TracerProvider)"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": ":".join(p for p in sys.path if p),
        "PAYSTREAM_OTEL_EXPORTER": "console",
    }
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)

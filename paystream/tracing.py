"""OpenTelemetry tracing of the command pipeline (PAYSTREAM_OTEL_EXPORTER).

A span per command (``paystream.command <type>``, kind CONSUMER), the child of the
producer's span its ``traceparent`` (and ``tracestate``) names, with the messaging
semantic conventions' attributes (Kafka topic, partition, offset, consumer group, the
command id as message id) and paystream's (tenant, command type, outcome type, rejection
reason or error code); and a child span per provider call (``paystream.gateway
<operation>``, kind CLIENT: provider, operation, attempts, error code). A rejection, a
``*.failed`` outcome (a decline), a parked or dead-lettered command and a failed provider
call have status ERROR, described by their reason code.

What spans never hold: card data, secrets, and a customer's personal data (e-mails,
names, metadata values, descriptions, a provider's error message, which may echo what
was sent, and exception messages). Every attribute is an identifier paystream chose or
checked (a tenant or command id, a type) or a code from paystream's own vocabulary.

The outcome's ``traceparent`` is this command span's context, its span id derived from
the command record (streams/tracecontext.py) so that outcomes stay byte-identical on
redelivery; the span is given that id here (``_command_span_ids``).

Off (``none``, the default) nothing is set up: the worker builds no ``CommandTracing``,
and the pipeline's cost is an ``is None`` test per command and per provider call.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry import trace as trace_api
from opentelemetry.context import Context
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from paystream import __version__
from paystream.errors import ConfigurationError
from paystream.gateways.errors import GatewayError
from paystream.settings import Settings, TraceExporter
from paystream.streams.commands import COMMANDS
from paystream.streams.tracecontext import command_span_id, parse_traceparent, tracestate_members

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

    from paystream.agents.pipeline import Emit, Inbound
    from paystream.streams.outcomes import CommandRef

__all__ = ["CommandTrace", "CommandTracing", "active", "configure"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# The tracing the worker set up at start (None: off).
_active: CommandTracing | None = None

# The flags a span takes from its parent: sampled, random trace id.
_PARENT_FLAGS = 0x03


def active() -> CommandTracing | None:
    """The worker's command tracing, if ``configure`` set one up."""
    return _active


def configure(
    settings: Settings, *, exporter: SpanExporter | None = None, install: bool = True
) -> CommandTracing | None:
    """Set up the OpenTelemetry SDK for ``settings.otel_exporter``; None (nothing set up,
    nothing imported) for ``none``.

    ``exporter``: spans go there instead, each as it ends (tests: the SDK's
    InMemorySpanExporter). ``install``: also make it the process's tracer provider (the
    worker does, so that any other instrumentation joins the same traces) and what
    ``active()`` returns.
    """
    global _active
    if exporter is None and settings.otel_exporter is TraceExporter.NONE:
        return None
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SimpleSpanProcessor,
            SpanProcessor,
        )
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError as exc:  # pragma: no cover - the extra is part of the dev install
        raise ConfigurationError(
            f"PAYSTREAM_OTEL_EXPORTER={settings.otel_exporter.value} needs the OpenTelemetry "
            "SDK: pip install 'paystream[otel]'"
        ) from exc
    processor: SpanProcessor
    if exporter is not None:
        processor = SimpleSpanProcessor(exporter)
    else:
        processor = BatchSpanProcessor(_exporter(settings.otel_exporter))
    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over these defaults.
    detected = Resource.create()
    attributes = dict(detected.attributes)
    if str(attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):  # SDK's default
        attributes[SERVICE_NAME] = "paystream"
    attributes.setdefault(SERVICE_VERSION, __version__)
    ids = _command_span_ids()
    provider = TracerProvider(
        sampler=ParentBased(TraceIdRatioBased(settings.otel_sample_ratio)),
        resource=Resource(attributes, detected.schema_url),
        id_generator=ids,
    )
    provider.add_span_processor(processor)
    tracing = CommandTracing(settings, provider, ids)
    if install:
        trace_api.set_tracer_provider(provider)
        _active = tracing
        log.info(
            "tracing commands: exporter %s, sample ratio %s (parent-based)",
            "in-process" if exporter is not None else settings.otel_exporter.value,
            settings.otel_sample_ratio,
        )
    return tracing


def _exporter(kind: TraceExporter) -> SpanExporter:
    if kind is TraceExporter.CONSOLE:
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        # One JSON object a line (the SDK's default indents each over ~40 lines).
        return ConsoleSpanExporter(
            out=sys.stdout, formatter=lambda span: span.to_json(indent=None) + "\n"
        )
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:  # pragma: no cover - the extra is part of the dev install
        raise ConfigurationError(
            "PAYSTREAM_OTEL_EXPORTER=otlp needs the OTLP exporter: pip install 'paystream[otel]'"
        ) from exc
    return OTLPSpanExporter()  # reads the standard OTEL_EXPORTER_OTLP_* variables


def _command_span_ids() -> Any:
    """The SDK's random ids, but for a span whose id is chosen (``next_span_id``, taken
    by the one span started next: ``CommandTracing.start_span`` sets it around one
    synchronous ``start_span``). Defined here: the SDK is imported only when used."""
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class CommandSpanIds(RandomIdGenerator):
        next_span_id: int | None = None

        def generate_span_id(self) -> int:
            chosen, self.next_span_id = self.next_span_id, None
            return super().generate_span_id() if chosen is None else chosen

    return CommandSpanIds()


class CommandTracing:
    """The tracer of one worker's command pipeline (exists only when tracing is on)."""

    def __init__(self, settings: Settings, provider: TracerProvider, ids: Any) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("paystream", __version__)
        self._ids = ids
        self.events_topic = settings.events_topic
        self.retry_topic = settings.retry_topic
        self.dlq_topic = settings.dlq_topic
        self.consumer_group = settings.app_id

    def start(self, rec: Inbound) -> CommandTrace:
        """The trace of one command record, its span begun once the command is known."""
        return CommandTrace(self, rec)

    def start_span(
        self,
        name: str,
        context: Context,
        kind: SpanKind,
        attributes: dict[str, Any],
        *,
        start_time: int | None = None,
        span_id: int | None = None,
    ) -> Span:
        """A span, given ``span_id`` if not None (the SDK draws the others)."""
        self._ids.next_span_id = span_id
        try:
            return self.tracer.start_span(
                name,
                context=context,
                kind=kind,
                attributes=attributes,
                start_time=start_time,
                record_exception=False,
                set_status_on_exception=False,
            )
        finally:
            self._ids.next_span_id = None

    def shutdown(self) -> None:
        """Export what is buffered and stop (the SDK also does it at exit)."""
        self.provider.shutdown()


class CommandTrace:
    """The span of one command record: begun when its command is known (its parent and
    span id come from it), or at the end, without a parent, for a record that never
    became a command (not a CloudEvent, too large, holding card data)."""

    __slots__ = ("_context", "_rec", "_started", "_tracing", "span")

    def __init__(self, tracing: CommandTracing, rec: Inbound) -> None:
        self._tracing = tracing
        self._rec = rec
        self._started = time.time_ns()
        self.span: Span | None = None
        self._context: Context | None = None

    def begin(
        self, cmd: CommandRef, tracestate: object = None, message_id: str | None = None
    ) -> None:
        """Start the command's span: the child of the producer's span, given the span id
        the outcome's ``traceparent`` names (streams/tracecontext.py). ``message_id``:
        the command id as the span may show it, when not as it came."""
        if self.span is not None:
            return
        parsed = parse_traceparent(cmd.traceparent)
        span_id = None
        context = Context()  # not the current one: a command without a parent is a root
        if parsed is not None:
            trace_id, parent_id, flags = parsed
            parent = SpanContext(
                trace_id,
                parent_id,
                is_remote=True,
                trace_flags=TraceFlags(flags & _PARENT_FLAGS),
                trace_state=_trace_state(tracestate),
            )
            context = trace_api.set_span_in_context(NonRecordingSpan(parent), context)
            span_id = command_span_id(cmd.tenant_id, cmd.command_id, cmd.id_salt, cmd.traceparent)
        known = cmd.command_type in COMMANDS
        attributes = self._messaging()
        attributes["messaging.message.id"] = cmd.command_id if message_id is None else message_id
        attributes["paystream.tenant_id"] = cmd.tenant_id
        attributes["paystream.command.type"] = cmd.command_type if known else "unknown"
        self.span = self._tracing.start_span(
            f"paystream.command {cmd.command_type if known else 'unknown'}",
            context,
            SpanKind.CONSUMER,
            attributes,
            start_time=self._started,
            span_id=span_id,
        )
        self._context = trace_api.set_span_in_context(self.span, Context())

    def _messaging(self) -> dict[str, Any]:
        rec = self._rec
        attributes: dict[str, Any] = {
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": rec.topic,
            "messaging.consumer.group.name": self._tracing.consumer_group,
            "messaging.message.body.size": len(rec.value or b""),
        }
        if rec.partition >= 0:
            attributes["messaging.destination.partition.id"] = str(rec.partition)
        if rec.offset >= 0:
            attributes["messaging.kafka.offset"] = rec.offset
        return attributes

    async def provider_call(
        self,
        provider: str,
        operation: str,
        call: Callable[[Callable[[], Awaitable[T]]], Awaitable[T]],
        fn: Callable[[], Awaitable[T]],
    ) -> T:
        """``call(fn)`` (the tenant's retry policy around one provider request) in a
        CLIENT span: the provider, the operation, how many attempts, the error code."""
        parent, context = self.span, self._context
        if parent is None or context is None or not parent.is_recording():
            return await call(fn)
        span = self._tracing.start_span(
            f"paystream.gateway {operation}",
            context,
            SpanKind.CLIENT,
            {"paystream.gateway.provider": provider, "paystream.gateway.operation": operation},
        )
        attempts = 0

        async def attempt() -> T:
            nonlocal attempts
            attempts += 1
            return await fn()

        try:
            # Current while it runs: an instrumented HTTP client's spans are its children.
            with trace_api.use_span(span, record_exception=False, set_status_on_exception=False):
                return await call(attempt)
        except GatewayError as exc:
            _error(span, exc.code.value, **{"paystream.gateway.error_code": exc.code.value})
            raise
        except BaseException as exc:  # a rejection, a bug, a cancellation: by its kind
            _error(span, type(exc).__name__)
            raise
        finally:
            span.set_attribute("paystream.gateway.attempts", attempts)
            span.end()

    def finish(self, emits: Sequence[Emit]) -> None:
        """End the span with what the record came to: its outcome (type, and a rejection's
        reason or a failure's error code), or where it was parked or dead-lettered."""
        span = self._root_if_not_begun()
        tracing = self._tracing
        outcome = reason = parked = dead = None
        for e in emits:
            if e.topic == tracing.events_topic and e.summary is not None:
                outcome, reason = e.summary.get("outcome"), e.summary.get("reason")
            elif e.topic == tracing.retry_topic:
                parked = _header(e, "paystream-park-reason")
            elif e.topic == tracing.dlq_topic:
                dead = _header(e, "paystream-dlq-reason")
        if outcome is not None:
            span.set_attribute("paystream.outcome.type", str(outcome))
        if parked is not None:
            span.set_attribute("paystream.parked.reason", parked)
        if dead is not None:
            span.set_attribute("paystream.dead_letter.reason", dead)
        if outcome == "command.rejected":
            why = str(reason or "rejected")
            _error(span, why, **{"paystream.rejection.reason": why})
        elif outcome is not None and str(outcome).endswith("failed"):  # a decline
            why = str(reason or outcome)
            _error(span, why, **{"paystream.error.code": why})
        elif parked is not None:
            _error(span, parked)
        elif dead is not None:
            _error(span, dead)
        span.end()

    def failed(self, exc: BaseException) -> None:
        """End the span of a record whose processing raised (a bug of ours, answered by
        ``dead_letter_bug``; or a cancellation): by the exception's kind, not its text."""
        span = self._root_if_not_begun()
        _error(span, "internal_error", **{"paystream.exception.type": type(exc).__name__})
        span.end()

    def _root_if_not_begun(self) -> Span:
        if self.span is None:
            self.span = self._tracing.start_span(
                "paystream.command unknown",
                Context(),
                SpanKind.CONSUMER,
                self._messaging(),
                start_time=self._started,
            )
        return self.span


def _error(span: Span, code: str, **attributes: str) -> None:
    span.set_attribute("error.type", code)
    for name, value in attributes.items():
        span.set_attribute(name, value)
    span.set_status(Status(StatusCode.ERROR, code))


def _header(emit: Emit, name: str) -> str | None:
    for key, value in emit.record.headers:
        if key == name:
            return bytes(value).decode("utf-8", "replace")
    return None


def _trace_state(value: object) -> TraceState | None:
    """The command's ``tracestate`` if it is valid W3C trace state, else None (the SDK's
    own parser logs every malformed one, which a sender could repeat at will)."""
    members = tracestate_members(value)
    return None if members is None else TraceState(members)

"""The HTTP command ingress: ``POST /v1/commands`` (upstream services' other way in).

A request carries one command as a CloudEvent in either HTTP content mode: binary
(``ce-*`` headers, the data as the body) or structured (``application/cloudevents+json``).
What a worker would refuse without running it is refused here, before anything is
written: a body that is no CloudEvent, an unknown command type, data its model refuses,
and card data anywhere (400; a card number must never reach the topic). The rest is
produced to the commands topic, keyed by its tenant, exactly as a Kafka producer would
send it, and answered 202 once the broker has it. The pipeline then runs it as any
command (tenant rules, limits, idempotency, the provider) and its outcome goes out on
the events topic. With ``Prefer: wait=N`` (at most 30 s) the answer is that outcome
itself (200, a structured CloudEvent) if it comes within N seconds, else still 202.

A request is authenticated by ``Authorization: Bearer``: the platform's
PAYSTREAM_INGRESS_TOKEN (any tenant's commands, as a producer on the topic may send), or
one of the command's tenant's own keys (``paystream tenants api-key create``). Another
tenant's key, an unknown tenant, a revoked key: one answer (401), so that a key's holder
learns nothing about other tenants. An expired key is told it expired (401
``key_expired``), and a key restricted to some commands is refused others (403
``forbidden``): only the key's holder learns either. A tenant over its rate limit
(``commands_per_second``, ``burst``) is refused 429 with ``Retry-After`` before anything
is produced (per server: the command agent's limit is the exact one).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import orjson
from aiohttp.web import Request, Response

# aiohttp's own answer to ``Expect: 100-continue`` (the route's default), for a request
# that passes the checks made before the body.
from aiohttp.web_urldispatcher import _default_expect_handler
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.v1.event import CloudEvent
from pydantic import ValidationError

from paystream import metrics
from paystream.agents.card_data import kept_headers, trace_context_without_cards
from paystream.agents.inbound import bad_time
from paystream.client import (
    CommandTooLarge,
    InvalidCommand,
    check_no_card_data_in_record,
    encoded_for_sending,
    new_request_header,
)
from paystream.log_limits import ThrottledLog
from paystream.settings import ATTRIBUTES_MAX_BYTES, Settings
from paystream.streams.codec import (
    STRUCTURED_CONTENT_TYPE,
    KafkaRecord,
    UndecodableRecord,
    decode_record,
    is_json_media,
    is_structured,
)
from paystream.streams.commands import (
    COMMAND_PREFIX,
    COMMANDS,
    DATA_NOT_AN_OBJECT,
    validation_errors,
)
from paystream.streams.outcomes import REQUEST_HEADER
from paystream.streams.pan import redact_card_numbers
from paystream.streams.tracecontext import parse_traceparent, valid_tracestate
from paystream.tenancy.ingress_keys import IngressKey, key_id_of, matched_key
from paystream.tenancy.limits import TenantLimits
from paystream.tenancy.mirror import RegistryMirror
from paystream.tenancy.models import UNREGISTERED
from paystream.tenancy.token_bucket import TokenBucket
from paystream.web.bearer import bearer, matches
from paystream.web.bodies import BodyTooLarge, BodyTooSlow, BodyUnreadable, ClientGone, read_body
from paystream.web.outcome_waits import OutcomeWaits
from paystream.web.produce import NotProduced

__all__ = ["IDLE_READER_SECONDS", "CommandIngress", "Produce"]

# Produces a command record for a tenant once the broker acknowledges it; NotProduced
# otherwise. (The worker's goes through its Faust producer, the ingress process's
# through its own.)
Produce = Callable[[KafkaRecord, str], Awaitable[None]]

log = logging.getLogger(__name__)
_throttled = ThrottledLog(log)

MAX_WAIT_SECONDS = 30.0
# The outcome reader's start (the first wait's) within this, or the sender is answered 202.
READER_START_SECONDS = 5.0
# Waits a worker keeps at once; beyond, senders are answered 202 without waiting.
MAX_WAITING = 2000
# ... of which one tenant holds at most this many: its senders (or one that posts and
# hangs up, its waits held to their end) cannot take long-polling from every tenant.
MAX_WAITING_PER_TENANT = MAX_WAITING // 4
BODY_READ_SECONDS = 30.0
# A worker whose senders stopped waiting stops reading the events topic for them.
IDLE_READER_SECONDS = 300.0
# Validation errors listed in a 400 (the rest counted), as a rejection outcome lists them.
ERRORS_SHOWN = 10
_BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
_TRACEPARENT_00 = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
# RFC 7240: "wait=<delta-seconds>" among the Prefer header's preferences.
# (ASCII digits only: `\d` takes any script's; any length, capped once read.)
_WAIT = re.compile(r"(?:^|[;,])\s*wait\s*=\s*\"?([0-9]+)\"?\s*(?=[;,]|$)", re.IGNORECASE)


class _Refused(Exception):
    """A request answered with an error: (status, result label, error code, message)."""

    def __init__(self, status: int, result: str, error: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.result, self.error, self.extra = status, result, error, extra
        self.tenant: str | None = None  # whose key it is, once known (the metric's label)


class CommandIngress:
    """``POST /v1/commands`` over what it needs: the tenant registry (for tenant keys), a
    way to produce, and the outcome reader for waiting senders. The worker serves it
    beside its views (web/ingress_route.py); ``paystream ingress`` alone
    (web/ingress_server.py)."""

    def __init__(
        self, settings: Settings, registry: RegistryMirror, produce: Produce, waits: OutcomeWaits
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.produce = produce
        self.waits = waits
        self._waiting: Counter[str] = Counter()  # waits held per tenant
        self._buckets: dict[str, TokenBucket] = {}  # rate-limited tenants' (_paced)

    async def handle(self, request: Request) -> Response:
        """One command, produced to the commands topic for its tenant."""
        registry, settings = self.registry, self.settings
        tenant_label = UNREGISTERED
        try:
            credential, platform, holder = self._before_body(request)
            held_by = None if holder is None else registry.tenants.get(holder)
            if holder is not None and held_by is not None:
                tenant_label = holder  # (its key matched: counted as the tenant's)
                # Paced before the body is read, for every request its key sends: one
                # refused as sent is work too (review h67k: a tenant paced at 1/s had
                # any number of 64 KiB bodies parsed and scanned, ~50 ms each).
                self._paced(holder, held_by.limits)
            body = await _body(request, settings.command_max_bytes)
            event = _decoded(request, body)
            tenant = event.get_extension("tenantid")
            if not isinstance(tenant, str) or not tenant:
                raise _invalid("the event names no tenant (the `tenantid` extension)")
            key: tuple[str, IngressKey] | None = None  # (its id, the key)
            if not platform:
                found = registry.tenants.get(tenant)
                held = {} if found is None else found.ingress_keys
                matched = matched_key(held, credential or "")
                if matched is None:
                    raise _unauthorized()
                # (Expired while its body was read: told so, as before the body.)
                _refuse_if_expired(*matched, tenant)
                key = matched
                if tenant in registry.unreadable:
                    # Its newest record (a newer paystream's) may have revoked the key:
                    # what this process holds is older. Fail closed; a peer may answer.
                    # (Asked after the key matched: another tenant's key learns nothing.)
                    raise _unavailable("this server cannot read the tenant's newest record")
            found = registry.tenants.get(tenant)
            if found is not None:
                tenant_label = tenant
            named = str(event.get_type())
            command = named[len(COMMAND_PREFIX) :] if named.startswith(COMMAND_PREFIX) else ""
            if key is not None and command in COMMANDS:
                # Before its data is judged (a known command's name is safe to repeat):
                # a command the key may not send is forbidden whatever its data (h71d).
                _refuse_unless_allowed(*key, command)
            rec, command_id = _command_record(_with_trace_context(event, request), settings)
            if found is not None and platform:  # (a tenant's key: paced before its body)
                self._paced(tenant, found.limits)
            return await self._produced(request, tenant, command_id, event, rec, tenant_label)
        except _Refused as refused:
            return _refusal(refused, tenant_label)

    def _paced(self, tenant: str, limits: TenantLimits, *, take: bool = True) -> None:
        """The tenant's rate limit, as a flood guard before the topic: refused 429 over
        it. Per server, on arrival times: with several servers up to that many times the
        rate gets through, and the command agent's own limit (on the broker's times,
        exact) answers the excess ``rate_limited``; this keeps one tenant's flood off
        the topic and the workers' cores. Nothing is produced, so it is no answer: the
        same command (same id) is sent again later."""
        rate = limits.commands_per_second
        if rate is None:
            self._buckets.pop(tenant, None)
            return
        burst = limits.burst or rate
        bucket = self._buckets.get(tenant)
        if bucket is None or (bucket.rate, bucket.burst) != (rate, burst):
            changed = TokenBucket(rate, burst)
            if bucket is not None:  # (a limit changed: what was spent stays spent)
                changed.tokens = min(changed.capacity, bucket.tokens)
                changed.at_ms = bucket.at_ms
            bucket = self._buckets[tenant] = changed
        now_ms = time.monotonic_ns() // 1_000_000
        wait_ms = bucket.wait_ms(now_ms)
        if wait_ms:
            raise _Refused(
                429,
                "rate_limited",
                "rate_limited",
                f"tenant over its rate limit of {rate} commands/s (burst {burst}); "
                f"send it again after {wait_ms} ms",
                retry_after_ms=wait_ms,
            )
        if take:  # (not on an ``Expect: 100-continue``: its request takes it after)
            bucket.take(now_ms)

    async def expect(self, request: Request) -> Response | None:
        """``Expect: 100-continue``: a request refused before its body would be is
        answered so before the client sends the body (up to the largest command, for
        nothing); any other goes on as aiohttp's default has it (``100 Continue``)."""
        label = UNREGISTERED
        try:
            _, _, holder = self._before_body(request)
            held_by = None if holder is None else self.registry.tenants.get(holder)
            if holder is not None and held_by is not None:
                # Over its rate, told before it sends the body (review h67n): the bucket
                # is only looked at, its request spends the token once it comes.
                label = holder
                self._paced(holder, held_by.limits, take=False)
        except _Refused as refused:
            answer = _refusal(refused, label)
            # Not kept alive: the client sends no body now. (aiohttp still reads what
            # comes for a while before closing: a client that sends it anyway is not reset.)
            answer.force_close()
            return answer
        await _default_expect_handler(request)
        return None

    def _before_body(self, request: Request) -> tuple[str | None, bool, str | None]:
        """(the credential, whether it is the platform token, the tenant whose key it is),
        or the refusal that needs no body: no key, or one no tenant holds (a made-up key,
        or a real key id with a made-up secret, costs no parsing), an expired key (401
        ``key_expired``); a declared length over the largest command."""
        credential = bearer(request.headers)
        platform = matches(credential, self.settings.ingress_token)
        holder = None
        if not platform:
            if credential is None or key_id_of(credential) is None:
                raise _unauthorized()
            if not self.registry.ready.is_set():
                raise _unavailable("the tenant registry is loading")
            found = self.registry.ingress_key_of(credential)
            if found is None:
                raise _unauthorized()
            holder, key_id, key = found
            _refuse_if_expired(key_id, key, holder)
        if (request.content_length or 0) > self.settings.command_max_bytes:
            raise _too_large(self.settings.command_max_bytes)
        return credential, platform, holder

    async def _produced(
        self,
        request: Request,
        tenant: str,
        command_id: str,
        event: CloudEvent,
        rec: KafkaRecord,
        tenant_label: str,
    ) -> Response:
        """Produce the command; the 202 or, waited for, its outcome."""
        wait = _preferred_wait(request.headers.get("Prefer", ""))
        deadline = asyncio.get_running_loop().time() + (wait or 0)
        waiter: asyncio.Future[CloudEvent] | None = None
        try:
            if wait is not None and self._waiting[tenant] < MAX_WAITING_PER_TENANT:
                # Held before the reader is awaited (its start takes up to 5 s): counted
                # after, every request meanwhile passed the check (review finding).
                self._waiting[tenant] += 1
                try:
                    waiter, rec = await self._awaiting(tenant, command_id, rec, wait)
                finally:
                    if waiter is None:
                        self._release(tenant)
            try:
                await self.produce(rec, tenant)
            except NotProduced as exc:
                if not exc.maybe_taken:
                    # Not on the topic: its token is not spent (review h59f: the prompt
                    # resend a 503 asks for was refused 429). One maybe taken keeps it.
                    bucket = self._buckets.get(tenant)
                    if bucket is not None:
                        bucket.give_back()
                    raise _unavailable(
                        "the command was not taken: no connection to the brokers yet"
                    ) from None
                raise _unavailable(
                    "the broker did not acknowledge the command: it may or may not have "
                    "been taken; send it again with the same id"
                ) from None
            if waiter is not None:
                try:
                    outcome = await _outcome_while_connected(waiter, deadline, request)
                except TimeoutError:
                    pass  # (it comes on the topic; or the sender hung up)
                except Exception as exc:  # the reader failed: the command is taken all the same
                    if not self.waits.closed:  # (stopping: every waiter is let go, as meant)
                        _throttled.warning(
                            ("wait",), "ingress: an outcome wait failed (%s)", type(exc).__name__
                        )
                else:
                    metrics.INGRESS.labels(tenant_label, "answered").inc()
                    message = ce_http.to_structured_event(outcome)
                    return Response(
                        body=message.body,
                        content_type=STRUCTURED_CONTENT_TYPE,
                        headers={"Preference-Applied": f"wait={wait:g}"},
                    )
        finally:
            if waiter is not None:
                waiter.cancel()  # (a no-op once answered; forgets it if the handler is cancelled)
                self._release(tenant)
        metrics.INGRESS.labels(tenant_label, "accepted").inc()
        accepted = {
            "accepted": True,
            "tenant": tenant,
            "command_id": command_id,
            "idempotency_key": str(event.get_extension("idempotencykey") or command_id),
        }
        return _json(accepted, status=202)

    def _release(self, tenant: str) -> None:
        """One of the tenant's waits is over."""
        self._waiting[tenant] -= 1
        if not self._waiting[tenant]:
            del self._waiting[tenant]

    async def _awaiting(
        self, tenant: str, command_id: str, rec: KafkaRecord, wait: float
    ) -> tuple[asyncio.Future[CloudEvent] | None, KafkaRecord]:
        """A future for the command's outcome and the record marked for it (its own
        request header, echoed on its outcome), or no future: the reader cannot be had in
        time (its start is bounded by the wait), or as many senders wait as it lets."""
        reader = await self.waits.reader(within=min(wait, READER_START_SECONDS))
        if reader is None or reader.awaited >= MAX_WAITING:
            return None, rec
        request_header = new_request_header()
        # Awaited before it is produced: its outcome may come at once.
        waiter = reader.expect(tenant, command_id, request=request_header)
        headers = (*rec.headers, (REQUEST_HEADER, request_header.encode()))
        return waiter, KafkaRecord(rec.key, rec.value, headers)


# While a sender waits, whether it is still connected is looked at this often: one that
# hung up is let go, its place among the waits freed, not held to the end of its wait.
# (Cheaper than aiohttp's handler cancellation, a task and a watch on every request.)
CONNECTION_CHECK_SECONDS = 1.0


async def _outcome_while_connected(
    waiter: asyncio.Future[CloudEvent], deadline: float, request: Request
) -> CloudEvent:
    """The outcome by ``deadline`` (loop time); TimeoutError past it, or once the
    sender's connection is gone."""
    loop = asyncio.get_running_loop()
    while (left := deadline - loop.time()) > 0:
        try:
            # (shielded: a check's timeout must not cancel the waiter itself)
            return await asyncio.wait_for(
                asyncio.shield(waiter), min(left, CONNECTION_CHECK_SECONDS)
            )
        except TimeoutError:
            transport = request.transport
            if transport is None or transport.is_closing():
                break
    raise TimeoutError


def _json(value: dict[str, Any], *, status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(
        body=orjson.dumps(value),
        content_type="application/json",
        charset="utf-8",
        status=status,
        headers=headers,
    )


def _refusal(refused: _Refused, tenant_label: str) -> Response:
    metrics.INGRESS.labels(refused.tenant or tenant_label, refused.result).inc()
    body = {"error": refused.error, "message": str(refused), **refused.extra}
    headers = {"Retry-After": "1"} if refused.status == 503 else None
    if refused.status == 429:  # (whole seconds, rounded up)
        headers = {"Retry-After": str(-(-int(refused.extra["retry_after_ms"]) // 1000))}
    if refused.status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="paystream"'}
    return _json(body, status=refused.status, headers=headers)


def _too_large(limit: int) -> _Refused:
    return _Refused(413, "too_large", "payload_too_large", f"a command is at most {limit} bytes")


def _unauthorized() -> _Refused:
    return _Refused(
        401,
        "unauthorized",
        "unauthorized",
        "a valid key for the command's tenant is required (Authorization: Bearer <key>)",
    )


def _refuse_if_expired(key_id: str, key: IngressKey, tenant: str) -> None:
    """An expired key is told so: its holder (the secret matched) learns only of it.
    Counted as its tenant's ``key_expired``: a service still on a rolled key shows."""
    if key.expires_at is not None and key.expired(datetime.now(UTC)):
        refused = _Refused(
            401,
            "key_expired",
            "key_expired",
            f"key {key_id} expired at {key.expires_at.isoformat()}: use its successor "
            "(`paystream tenants api-key roll|create`)",
            expired_at=key.expires_at.isoformat(),
        )
        refused.tenant = tenant
        # Which key (and, by its label, which service) is still sent: the metric names
        # only the tenant, and once the key is revoked its refusals count as made-up keys.
        _throttled.warning(
            ("key_expired", tenant, key_id),
            "tenant %s's key %s (label %r), expired at %s, is still being sent",
            tenant, key_id, key.label, key.expires_at.isoformat(),
        )  # fmt: skip
        raise refused


def _refuse_unless_allowed(key_id: str, key: IngressKey, command: str) -> None:
    if not key.allows(command):
        raise _Refused(
            403,
            "forbidden",
            "forbidden",
            # (Its id named: a sender may not know which key its settings hold.)
            f"key {key_id} may not send {command} (it may send: {', '.join(key.commands or ())})",
            allowed=list(key.commands or ()),
        )


def _invalid(message: str, **extra: Any) -> _Refused:
    return _Refused(400, "invalid", "validation_error", message, **extra)


def _named(header: str) -> str:
    """A header's name as a refusal quotes it: read before the card-data scan has run, a
    name holding a card number is not repeated (nor, being unbounded, a long one)."""
    # Redacted whole (a cut could leave part of a number), then cut and redacted again
    # (a cut can make one of a longer run of digits).
    shown = redact_card_numbers(header)
    if len(shown) > _NAME_SHOWN:
        shown = redact_card_numbers(shown[:_NAME_SHOWN]) + "..."
    return repr(shown)


_NAME_SHOWN = 64


def _unavailable(message: str) -> _Refused:
    return _Refused(503, "unavailable", "unavailable", f"{message}; retry")


async def _body(request: Request, limit: int) -> bytes:
    """The body, refused 413 past ``limit``, the largest command a worker takes (read in
    chunks: never more than that is buffered, whatever the request says of its length)."""
    try:
        return await read_body(request, limit, BODY_READ_SECONDS)
    except BodyTooLarge:
        raise _too_large(limit) from None
    except BodyTooSlow:
        raise _Refused(
            408, "invalid", "request_timeout", f"the body took over {BODY_READ_SECONDS:g} s"
        ) from None
    except BodyUnreadable:
        raise _invalid("the body could not be read as sent (its encoding)") from None
    except ClientGone:
        raise _Refused(400, "invalid", "validation_error", "the client went away") from None


def _decoded(request: Request, body: bytes) -> CloudEvent:
    """The request's CloudEvent, read as a worker reads a Kafka record (the same decoder,
    so both ways in take the same events): HTTP's ``ce-`` headers, percent-decoded, are
    Kafka's ``ce_`` ones."""
    ctype = request.headers.get("Content-Type", "")
    media = ctype.split(";")[0].strip().lower()
    if media == _BATCH_CONTENT_TYPE:
        raise _Refused(
            415, "unsupported_media_type", "unsupported_media_type",
            "one command a request: batched mode is not taken (send each, concurrently)",
        )  # fmt: skip
    headers: dict[str, bytes] = {}
    given = request.headers  # (a multidict: names may repeat)
    names = {name.lower() for name in given if name.lower().startswith("ce-")}
    for name in sorted(names):
        values = given.getall(name)
        if len(values) > 1:
            raise _invalid(f"header {_named(name)} given more than once")
        try:
            # (HTTP binding §3.1.3.2: values are percent-encoded UTF-8.)
            headers["ce_" + name[3:]] = unquote(values[0], errors="strict").encode("utf-8")
        except (UnicodeDecodeError, UnicodeEncodeError):
            raise _invalid(f"header {_named(name)} is not percent-encoded UTF-8") from None
    if not headers and media != STRUCTURED_CONTENT_TYPE:
        raise _Refused(
            415, "unsupported_media_type", "unsupported_media_type",
            f"a CloudEvent: binary mode (ce-* headers) or {STRUCTURED_CONTENT_TYPE}",
        )  # fmt: skip
    if ctype:
        headers["content-type"] = ctype.encode("utf-8", "replace")
    try:
        event = decode_record(None, body, headers)
    except UndecodableRecord as exc:
        # (The decoder's words may quote what was sent: never a card number.)
        # Cut, then redacted again: a cut can leave a card number of a longer digit run.
        said = redact_card_numbers(redact_card_numbers(str(exc))[:300])
        raise _invalid(f"not a CloudEvent: {said}") from None
    try:
        # The worker's scans of a record as received, here of the request as received:
        # what the parser drops (a JSON key given twice, a media type's parameters) is
        # never produced, but a Kafka producer's such record is refused card data too.
        check_no_card_data_in_record(event, KafkaRecord(None, body, tuple(headers.items())))
    except InvalidCommand as exc:
        raise _invalid(str(exc)) from None
    return event


def _with_trace_context(event: CloudEvent, request: Request) -> CloudEvent:
    """The event with the request's W3C trace context (its ``traceparent`` header), when
    the event carries none of its own: the command's trace continues the caller's."""
    if event.get_extension("traceparent") is not None:
        return event
    traceparent = request.headers.get("traceparent", "")
    if _TRACEPARENT_00.fullmatch(traceparent) is None or parse_traceparent(traceparent) is None:
        return event  # (only W3C's version 00: its whole text is known, and ASCII)
    attributes = {**event.get_attributes(), "traceparent": traceparent}
    tracestate = valid_tracestate(traceparent, request.headers.get("tracestate"))
    if tracestate is not None and tracestate.isascii():
        attributes["tracestate"] = tracestate
    return CloudEvent(attributes, event.get_data())


def _without_card_trace(event: CloudEvent) -> CloudEvent:
    """The event without trace context that reads as a card number (dropped, as the
    worker drops it, not refused: a random trace id reads as one one time in 430). The
    scans before producing leave trace context to the worker, and here paystream is the
    producer: such a value must not reach the topic."""
    traceparent = event.get_extension("traceparent")
    tracestate = event.get_extension("tracestate")
    kept = trace_context_without_cards(traceparent, tracestate)
    if kept == (traceparent, tracestate):
        return event
    attributes = dict(event.get_attributes())
    for name, value in zip(("traceparent", "tracestate"), kept, strict=True):
        attributes.pop(name, None)
        if value is not None:
            attributes[name] = value
    return CloudEvent(attributes, event.get_data())


# The CloudEvents envelope types (structured, batched): no command's data is one.
_ENVELOPE_MEDIA = "application/cloudevents"


def _command_record(event: CloudEvent, settings: Settings) -> tuple[KafkaRecord, str]:
    """The command's Kafka record and id; refused as a worker would refuse it unrun."""
    command_type = str(event.get_type())
    name = command_type.removeprefix(COMMAND_PREFIX)
    known = f"known: {', '.join(sorted(COMMANDS))}"
    # (The worker's reasons: a paystream type naming no command is unknown_command, as
    # the outcome a producer on the topic gets says; review finding: both were unsupported.)
    if not command_type.startswith(COMMAND_PREFIX):
        raise _Refused(
            400, "invalid", "unsupported",
            f"not a paystream command type (`{COMMAND_PREFIX}<domain>.<verb>`; {known})",
        )  # fmt: skip
    if name not in COMMANDS:
        # (The type not repeated: read before the card scan, it may be a card number.)
        raise _Refused(
            400, "invalid", "unknown_command", f"`type` names no paystream command ({known})"
        )  # fmt: skip
    data = event.get_data()
    if data is not None and not isinstance(data, dict):  # (as the worker says)
        # (`"data": ""` and `"data_base64": ""` too: taken for no data, answered 202 and
        # run on nothing, where the worker refuses them from the topic; review h64c.)
        raise _invalid(DATA_NOT_AN_OBJECT)
    media = str(event.get_attributes().get("datacontenttype") or "application/json")
    if media.lower().startswith(_ENVELOPE_MEDIA):
        # The envelope's type, not the data's. In binary mode, the record's content-type,
        # it made a worker read the data as the whole event and dead-letter it after a
        # 202 (review h64b); refused in either mode, so the API answers one way.
        raise _invalid(
            f"datacontenttype {media[:100]!r} names a CloudEvent, not the command's data: "
            "leave it out or say application/json"
        )
    if isinstance(data, dict) and not is_json_media(media):
        # Produced as it says, the worker would read the object as text and refuse it:
        # refused here, before the topic (review finding: answered 202). The worker's
        # own test: " application/json" and "image/x+json" were taken here (review h64b).
        raise _invalid(f"datacontenttype {media[:100]!r}: data must be JSON")
    at = event.get_time()
    if isinstance(at, datetime) and (fault := bad_time(at)) is not None:
        # (As the worker refuses it unrun: 0001-01-01T00:00:00+01:00 was answered 202,
        # then rejected from the topic; review h61b.)
        raise _invalid(f"time: {fault}")
    key = event.get_extension("idempotencykey")
    if key is not None and not isinstance(key, str):
        # A number or a boolean is produced as its text ("0", "False") in binary mode and
        # kept as it is in structured mode, where the worker reads a falsy one as none:
        # one request keyed two ways (review finding).
        raise _invalid("idempotencykey must be a string")
    try:
        # Card data anywhere, ids a worker would answer under another name.
        rec = encoded_for_sending(_without_card_trace(event), settings.cloudevents_mode, settings)
    except CommandTooLarge as exc:  # (structured mode: as encoded, escapes and all)
        raise _Refused(413, "too_large", "payload_too_large", str(exc)) from None
    except InvalidCommand as exc:
        raise _invalid(str(exc)) from None
    except UnicodeEncodeError:  # (an attribute no Kafka header can carry)
        raise _invalid("an attribute is not valid Unicode") from None
    except RecursionError:
        # Binary-mode data nested past what the encoders take (orjson reads 1,024 levels
        # and writes 255; the standard library's fallback then ran out of stack): a 500
        # and a traceback per request before (review h60h). No command nests so deep.
        raise _invalid("data nested too deeply") from None
    # The key and CloudEvents attributes have a limit of their own at the worker (outcomes
    # and stored records echo them): over it, refused here rather than answered
    # payload_too_large from the topic.
    kept = kept_headers(dict(rec.headers))
    attributes = len(rec.key or b"") + sum(map(len, kept)) + sum(map(len, kept.values()))
    if is_structured(kept):
        attributes = sum(len(k) + len(str(v)) for k, v in event.get_attributes().items())
    if attributes > ATTRIBUTES_MAX_BYTES:
        raise _Refused(
            413, "too_large", "payload_too_large",
            f"the command's attributes are {attributes} bytes: at most {ATTRIBUTES_MAX_BYTES}",
        )  # fmt: skip
    try:
        COMMANDS[name].model_validate(data or {})
    except ValidationError as exc:
        errors = validation_errors(exc)
        raise _invalid(
            f"invalid {name} data", errors=errors[:ERRORS_SHOWN], error_count=len(errors)
        ) from None
    return rec, str(event.get_id())


def _preferred_wait(prefer: str) -> float | None:
    """Seconds to wait for the outcome (RFC 7240 ``Prefer: wait=N``, capped), or None."""
    found = _WAIT.search(prefer)
    if found is None:
        return None
    seconds = min(float(found.group(1)), MAX_WAIT_SECONDS)
    return seconds or None

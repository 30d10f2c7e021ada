"""Async Python client: send a command as a CloudEvent and await its outcome by causation id."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError, KafkaTimeoutError
from cloudevents.core.v1.event import CloudEvent

from paystream.agents.card_data import (
    event_holds_card,
    kept_headers,
    raw_may_hold_card,
    security_code_outside_data,
)
from paystream.errors import ConfigurationError, PaystreamError, described
from paystream.settings import CloudEventsMode, Settings
from paystream.streams import record_batches
from paystream.streams.admin import bootstrap_servers, topic_partitions
from paystream.streams.codec import (
    KafkaRecord,
    decode_record,
    encode_event,
    headers_to_dict,
    is_json_media,
    is_structured,
    valid_unicode,
)
from paystream.streams.commands import COMMAND_PREFIX, DATA_NOT_AN_OBJECT, ID_MAX_CHARS
from paystream.streams.kafka_auth import client_auth
from paystream.streams.outcomes import ANSWERS_HEADER, NOT_CE_STRING, REQUEST_HEADER
from paystream.streams.pan import contains_card_number, security_code_at

if TYPE_CHECKING:
    from paystream.agents.pipeline import Inbound

__all__ = [
    "CommandTooLarge",
    "InvalidCommand",
    "OutcomeTimeout",
    "PaystreamClient",
    "build_command",
    "check_no_card_data_in_record",
]

log = logging.getLogger(__name__)


_Waiter = tuple["asyncio.Future[CloudEvent]", str | None]  # (future, request header)


# Each random byte as a letter (byte % 26: a slight bias that leaves 121 of 122 bits).
_AS_LETTERS = bytes(ord("a") + b % 26 for b in range(256))


def new_request_header() -> str:
    """A send's request header: 26 random letters (no digit: never read as card data).
    One call for the randomness, not one a letter (26 system calls, ~35 µs a request)."""
    return secrets.token_bytes(26).translate(_AS_LETTERS).decode("ascii")


class OutcomeTimeout(TimeoutError):
    """No outcome arrived within the timeout (the worker may be down or lagging).

    ``what``: what happened without the advice the message adds (a CLI gives its own)."""

    def __init__(self, message: str, what: str | None = None) -> None:
        super().__init__(message)
        self.what = what or message


class InvalidCommand(PaystreamError, ValueError):
    """A command the worker would refuse, refused before it is sent."""


class CommandTooLarge(InvalidCommand):
    """A command larger, as it would be sent, than the workers take."""


def encoded_for_sending(
    command: CloudEvent, mode: CloudEventsMode, settings: Settings
) -> KafkaRecord:
    """The command's Kafka record; InvalidCommand for one holding card data (in its data,
    an attribute or the record's key and headers), and for a structured one larger than
    the workers take, which they dead-letter unread, so unanswered (a binary-mode one is
    answered payload_too_large from its headers): its sender would wait in vain."""
    _check_no_card_data(command)
    tenant = str(command.get_extension("tenantid"))
    # (A command built by hand, not by build_command, too: answered under another id or
    # tenant, its sender's waiter would never see the answer; review finding.)
    key = command.get_extension("idempotencykey")
    _check_ids(tenant, str(command.get_id()), None if key is None else str(key))
    data = command.get_data()
    if data is not None and not isinstance(data, dict):
        # As a worker refuses it; in binary mode "" and b"" were written as an empty
        # value, which a worker reads as no data and ran on (review h64g).
        raise InvalidCommand(DATA_NOT_AN_OBJECT)
    record = encode_event(command, tenant.encode(), mode)
    if mode is CloudEventsMode.BINARY:
        _check_binary_data(command, record)
    check_no_card_data_in_record(command, record)
    limit = settings.command_max_bytes
    if mode is CloudEventsMode.STRUCTURED and len(record.value or b"") > limit:
        raise CommandTooLarge(
            f"command {command.get_id()} is {len(record.value or b'')} bytes in structured "
            f"mode; the workers take at most {limit} (PAYSTREAM_COMMAND_MAX_BYTES)"
        )
    return record


def _check_binary_data(command: CloudEvent, record: KafkaRecord) -> None:
    """What a worker reads of a binary-mode command's data is what its datacontenttype,
    the record's content-type, says (reviews h64b, h64c)."""
    if is_structured(dict(record.headers)):
        # The structured envelope's type: a worker would read the data as the whole event
        # and dead-letter it, after its sender was told it was taken.
        raise InvalidCommand(
            "datacontenttype names a structured CloudEvent (application/cloudevents+json), "
            "not the command's data: leave it out or say application/json"
        )
    media = command.get_attributes().get("datacontenttype")
    if isinstance(command.get_data(), dict) and not is_json_media(media):
        # Written as JSON, read as text: refused "data must be a JSON object".
        raise InvalidCommand(
            f"datacontenttype {str(media)[:100]!r}: a worker would not read the data as "
            "JSON (application/json, text/json or application/<x>+json)"
        )


def _check_no_card_data(command: CloudEvent) -> None:
    """Card data is refused before it is sent: the worker refuses it too, but by then
    the record sits on the commands topic (and its replicas) for the broker's retention,
    bringing the brokers into card-data scope (review finding). Neither value is echoed."""
    data = command.get_data()
    if contains_card_number(data):
        raise InvalidCommand("the data holds a card number: card data is not accepted")
    if (key := security_code_at(data)) is not None:
        raise InvalidCommand(f"{key!r} holds a card security code: card data is not accepted")


@dataclass(frozen=True, slots=True)
class _AsConsumed:
    """What the worker's card-data scans read of a command record (its Inbound's)."""

    key: bytes | None
    value: bytes | None
    headers: Mapping[str, bytes]


def check_no_card_data_in_record(command: CloudEvent, record: KafkaRecord) -> None:
    """The worker's own scans of the whole record, as its pipeline applies them: a card
    number anywhere but the trace context (in `source`, say), after the
    quick look at the bytes that clears nearly every command; a card security code outside
    the data (an extension, a `tracestate` member: "cvc=737"). The worker refuses both
    card_data_forbidden, but only once the record sits on the broker: the client scanned
    the data alone (review finding)."""
    rec = cast("Inbound", _AsConsumed(record.key, record.value, dict(record.headers)))
    if raw_may_hold_card(rec, kept_headers(rec.headers)) and event_holds_card(rec, command):
        raise InvalidCommand("the command holds a card number: card data is not accepted")
    if (where := security_code_outside_data(rec, command)) is not None:
        raise InvalidCommand(f"{where!r} holds a card security code: card data is not accepted")


def build_command(
    command_type: str,
    tenant_id: str,
    data: Mapping[str, Any],
    *,
    command_id: str | None = None,
    idempotency_key: str | None = None,
    source: str = "/paystream/client",
    traceparent: str | None = None,
    tracestate: str | None = None,
) -> CloudEvent:
    """A command CloudEvent; ``command_type`` may omit the ``com.paystream.command.`` prefix.

    Raises :class:`InvalidCommand` (a ValueError) for an id, tenant id or idempotency key
    over 255 characters, an empty tenant id, ids that read as a card number or are not
    valid Unicode: the worker answers such a command under another id (or cannot be
    sent it), which its sender would wait for in vain. (Any other odd tenant id is
    answered as it is: `unknown_tenant`.)
    """
    command_id = command_id or str(uuid.uuid4())
    _check_ids(tenant_id, command_id, idempotency_key, command_type)
    attrs: dict[str, Any] = {
        "id": command_id,
        "type": command_type if command_type.startswith("com.") else COMMAND_PREFIX + command_type,
        "source": source,
        "specversion": "1.0",
        "time": datetime.now(UTC),
        "datacontenttype": "application/json",
        "tenantid": tenant_id,
        "partitionkey": tenant_id,
    }
    if idempotency_key:
        attrs["idempotencykey"] = idempotency_key
    if traceparent:
        attrs["traceparent"] = traceparent
        if tracestate:
            attrs["tracestate"] = tracestate
    return CloudEvent(attrs, dict(data))


# Control characters (C0, DEL, C1): no CloudEvents string may hold one.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _check_ids(
    tenant_id: str, command_id: str, idempotency_key: str | None, command_type: str = ""
) -> None:
    """Refuse now what would cost a round trip, or the sender's whole timeout: the worker
    answers a command with an over-long id, an empty tenant id or an id that reads as a
    card number under another id or tenant (a digest, "_unknown", "[card number]")."""
    if not tenant_id:
        raise InvalidCommand("tenant id is empty")
    for name, text in (
        ("tenant id", tenant_id),
        ("command id", command_id),
        ("idempotency key", idempotency_key or ""),
        ("command type", command_type),
    ):
        # The value itself is not echoed: it may be anything, a card number included.
        if len(text) > ID_MAX_CHARS:
            raise InvalidCommand(f"{name} is {len(text)} characters; at most {ID_MAX_CHARS}")
        if not valid_unicode(text):
            raise InvalidCommand(f"{name} is not valid Unicode (an undecodable byte?)")
        if _CONTROL.search(text) or NOT_CE_STRING.search(text):
            # (Answered under the id's digest, or no tenant: no CloudEvents string holds one.)
            raise InvalidCommand(f"{name} holds a control character or a noncharacter")
        if contains_card_number(text):
            raise InvalidCommand(f"{name} reads as a card number: card data is not accepted")


class PaystreamClient:
    """Producer of commands plus a reader of outcomes from the moment it started."""

    def __init__(self, settings: Settings, mode: CloudEventsMode = CloudEventsMode.BINARY) -> None:
        self.settings = settings
        self.mode = mode
        servers = bootstrap_servers(settings.require_broker())
        auth = client_auth(settings)
        self._producer = AIOKafkaProducer(
            bootstrap_servers=servers, acks="all", linger_ms=1, **auth
        )
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=servers, enable_auto_commit=False, fetch_max_wait_ms=50, **auth
        )
        # Keyed by (tenant, command id): ids are unique only within a tenant.
        # Per (tenant, command id), a future for each caller awaiting its outcome: one
        # caller giving up (cancelled, timed out) must not take the others' with it. Beside
        # each, the request header its send put on the record (None: any outcome will do).
        self._waiters: dict[tuple[str, str], list[_Waiter]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._reader_error: BaseException | None = None  # what ended the reader, if anything

    async def __aenter__(self) -> PaystreamClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        # A batch of outcomes no parser reads is passed over, not the end of the outcome
        # reader (aiokafka's error ended it, and every send after failed; review h66a).
        # This patches aiokafka's fetcher for the whole process (record_batches.install).
        record_batches.install(self.settings)
        try:
            await self._producer.start()
            await self._consumer.start()
            # The commands topic too: a mistyped one took every command to a topic no
            # worker reads (or made up, auto-created), each "lost" and retried in vain.
            for topic in (self.settings.commands_topic, self.settings.events_topic):
                if not await topic_partitions(self._consumer, topic):
                    raise ConfigurationError(
                        f"topic {topic!r} does not exist: run `paystream topics`"
                    )
            tps = await topic_partitions(self._consumer, self.settings.events_topic)
            self._consumer.assign(tps)
            await self._consumer.seek_to_end(*tps)
            for tp in tps:  # resolve positions now, so nothing sent after start() is missed
                await self._consumer.position(tp)
        except BaseException:
            # Whatever started keeps connections and background tasks: stop it (stopping
            # what never started is harmless), and report what failed the start.
            try:
                await self.stop()
            except Exception:
                log.warning("stopping a client that failed to start failed", exc_info=True)
            raise
        self._reader = asyncio.create_task(self._read())
        self._reader.add_done_callback(self._reader_done)

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            # No outcome is read from now on: what is awaited fails now, not at its
            # timeout (or never, for an `expect()` with none), saying why.
            self._fail_waiters(PaystreamError("the client stopped: no outcome is read any more"))
        try:
            await self._consumer.stop()
        except asyncio.CancelledError:
            # aiokafka's fetcher, in its retry sleep with the broker gone, lets its own
            # cancellation out of stop(): not ours, unless this task is being cancelled.
            # (Raised, it skipped the producer's stop: a queued command never flushed.)
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            log.warning("the outcome reader stopped with the broker unreachable")
        finally:
            await self._producer.stop()

    @property
    def awaited(self) -> int:
        """How many outcome futures are awaited now (several may await one command)."""
        return sum(map(len, self._waiters.values()))

    @property
    def reading(self) -> bool:
        """Is the outcome reader running (started, not stopped, not failed)?"""
        return self._reader is not None and not self._reader.done()

    def _fail_waiters(self, exc: BaseException) -> None:
        self._reader_error = exc
        for waiters in list(self._waiters.values()):
            for waiter, _ in list(waiters):
                if not waiter.done():
                    waiter.set_exception(exc)

    async def _read(self) -> None:
        async for msg in self._consumer:
            if not self._waiters:
                # Nobody awaits an outcome: none is decoded (a worker's ingress reader
                # follows every tenant's outcomes, and idles so for minutes).
                continue
            if not self._may_answer(msg.headers):
                continue  # (a binary-mode outcome for no one here: not decoded)
            try:
                event = decode_record(msg.key, msg.value, headers_to_dict(msg.headers))
                headers = dict(msg.headers or ())
                answers = headers.get(ANSWERS_HEADER)
                answered = answers.decode() if answers else None
                request = headers.get(REQUEST_HEADER)
            except Exception:  # noqa: S112 - foreign records on the topic are not ours to judge
                continue
            self._dispatch(event, answered, request.decode("ascii", "replace") if request else None)

    def _may_answer(self, raw_headers: Any) -> bool:
        """Could this record answer a waiter? Read from a binary-mode outcome's headers
        (its tenant, cause and the command it answers) before it is decoded: an ingress's
        reader follows every tenant's outcomes for the few it waits on. True when the
        headers cannot tell (structured mode, undecodable values): decoded and judged."""
        tenant = cause = answers = None
        for name, value in raw_headers or ():
            if name == "ce_tenantid":
                tenant = value
            elif name == "ce_causationid":
                cause = value
            elif name == ANSWERS_HEADER:
                answers = value
        if tenant is None or cause is None:
            return True
        try:
            held = tenant.decode()
            if (held, cause.decode()) in self._waiters:
                return True
            return answers is not None and (held, answers.decode()) in self._waiters
        except UnicodeDecodeError:
            return True

    def _reader_done(self, task: asyncio.Task[None]) -> None:
        """An outcome reader that failed sees no more outcomes: fail the waiting sends with
        its error now (and later ones at once) rather than let each run out its timeout."""
        if task.cancelled() or (exc := task.exception()) is None:
            return
        log.error("the outcome reader stopped; sends now fail with its error", exc_info=exc)
        self._fail_waiters(exc)

    def _dispatch(self, event: CloudEvent, answers: str | None, request: str | None = None) -> None:
        """Resolve the command this outcome answers: its cause, or (a retry under an
        answered idempotency key gets the first command's event) the command its record
        names. An outcome echoing a send's request header answers that send (and those
        awaiting any outcome of the command), not another send of the same id (review
        finding: the second of two sends under one id, its data different, was shown the
        first's success instead of its own idempotency_conflict)."""
        tenant = str(event.get_extension("tenantid") or "")
        for command_id in (str(event.get_extension("causationid") or ""), answers):
            if not command_id:
                continue
            key = (tenant, command_id)
            waiters = self._waiters.get(key)
            if not waiters:
                continue
            mine = [w for w in waiters if request is None or w[1] is None or w[1] == request]
            rest = [w for w in waiters if w not in mine]
            if rest:
                self._waiters[key] = rest
            else:
                del self._waiters[key]
            for waiter, _ in mine:
                if not waiter.done():
                    waiter.set_result(event)

    async def publish(self, command: CloudEvent) -> None:
        """Send a command without waiting for its outcome. (With a request header of its
        own, as a send's: its outcome then answers no other send of the same id.)"""
        await (await self._enqueue(command, new_request_header()))

    async def _enqueue(
        self, command: CloudEvent, request: str | None = None
    ) -> asyncio.Future[Any]:
        """Hand the command to the producer (waiting for metadata or buffer room); the
        future says when the broker has it. Once handed over it is sent, even if the
        caller stops waiting (the producer flushes its queue when it stops)."""
        record = encoded_for_sending(command, self.mode, self.settings)
        headers = list(record.headers)
        if request is not None:
            headers.append((REQUEST_HEADER, request.encode()))
        return await self._producer.send(
            self.settings.commands_topic, record.value, key=record.key, headers=headers
        )

    def expect(
        self, tenant_id: str, command_id: str, *, request: str | None = None
    ) -> asyncio.Future[CloudEvent]:
        """A future for the outcome of a command sent by someone else (e.g. a replay).

        Each call gets a future of its own: cancelling it (``asyncio.wait_for`` giving up)
        forgets it and touches no other caller awaiting the same command. ``request``:
        only the outcome of the record that carried that request header (or one that
        carries none) will do."""
        key = (tenant_id, command_id)
        waiter: asyncio.Future[CloudEvent] = asyncio.get_running_loop().create_future()
        if self._reader_error is not None:
            waiter.set_exception(self._reader_error)
            return waiter
        self._waiters.setdefault(key, []).append((waiter, request))
        waiter.add_done_callback(lambda done: self._forget(key, done))
        return waiter

    def _forget(self, key: tuple[str, str], waiter: asyncio.Future[CloudEvent]) -> None:
        waiters = self._waiters.get(key)
        if waiters is None:
            return  # answered: the key went with the outcome
        waiters[:] = [w for w in waiters if w[0] is not waiter]
        if not waiters:
            del self._waiters[key]

    async def send(self, command: CloudEvent, timeout: float = 30.0) -> CloudEvent:  # noqa: ASYNC109
        """Send a command and return its outcome event.

        Concurrent sends of one command (an application retrying) each get the outcome.
        """
        if self._reader is None:
            raise PaystreamError(
                "the client is not started: use `async with PaystreamClient(settings) as "
                "client:` (or await client.start())"
            )
        key = (str(command.get_extension("tenantid")), command.get_id())
        request = new_request_header()
        waiter = self.expect(*key, request=request)
        queued = False
        try:
            # One deadline for sending and answering: a stalled broker must not hold the
            # caller past it (aiokafka would wait for metadata for up to 40 s).
            async with asyncio.timeout(timeout):
                if not waiter.done():  # done already: the reader failed, no answer comes
                    delivery = await self._enqueue(command, request)
                    # Retrieved whatever happens here (a send given up or cancelled below
                    # leaves it to fail later); `await delivery` still raises its error.
                    delivery.add_done_callback(_retrieved)
                    queued = True
                    # The outcome may come before the broker's acknowledgement (a lost
                    # or late produce response): the outcome in hand is the answer.
                    await asyncio.wait({delivery, waiter}, return_when=asyncio.FIRST_COMPLETED)
                    if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                        return waiter.result()
                    try:
                        await delivery
                    except KafkaError as exc:
                        if not (exc.retriable or isinstance(exc, KafkaTimeoutError)):
                            raise  # refused (too large, not allowed): never appended
                        # A disconnect, a request timed out: the broker may have appended
                        # it all the same. Not "failed": the same id is the safe retry.
                        what = (
                            f"no outcome for command {command.get_id()}: the broker failed "
                            f"after it was handed over ({type(exc).__name__}), so it may "
                            "have been sent and run"
                        )
                        raise OutcomeTimeout(
                            f"{what}: retry with the same command id", what
                        ) from exc
                try:
                    return await waiter
                except Exception as exc:
                    if not queued or isinstance(exc, TimeoutError):
                        raise
                    # The reader failed (or the client stopped) after the command was
                    # handed over: it may run. Said as a lost outcome, naming the id the
                    # caller never chose (review finding: a script reading the raw error
                    # as "not sent" sent a second payment under a new id).
                    why = described(exc)
                    what = (
                        f"no outcome for command {command.get_id()}: it was handed over, "
                        f"then the outcome reader failed ({why}), so it may have been "
                        "sent and run"
                    )
                    raise OutcomeTimeout(f"{what}: retry with the same command id", what) from exc
        except OutcomeTimeout:
            raise  # (the broker failed after taking it: said above)
        except TimeoutError:
            said = (
                "it may still be sent and run, or have been parked after the provider "
                "failed (see `paystream dlq list`): retry with the same command id"
                if queued
                else "it was not sent (no broker to take it)"
            )
            what = f"no outcome for command {command.get_id()} within {timeout:.1f} s"
            raise OutcomeTimeout(f"{what}; {said}", what if queued else f"{what}; {said}") from None
        finally:
            waiter.cancel()  # (a no-op once answered)
            self._forget(key, waiter)  # now, not a loop turn later

    async def command(
        self, command_type: str, tenant_id: str, data: Mapping[str, Any], **kw: Any
    ) -> CloudEvent:
        """Build, send and await in one call."""
        timeout = kw.pop("timeout", 30.0)
        return await self.send(build_command(command_type, tenant_id, data, **kw), timeout)


def _retrieved(done: asyncio.Future[Any]) -> None:
    """(A delivery no one awaits any more: its failure is not "never retrieved".)"""
    if not done.cancelled():
        done.exception()


def outcome_summary(event: CloudEvent) -> dict[str, Any]:
    """The outcome as a JSON-able dict (attributes + data) for printing."""
    attrs = {k: v for k, v in event.get_attributes().items() if v is not None}
    if "time" in attrs:
        # As the event carries it (RFC 3339, "Z" for UTC), as the ingress and the
        # dashboard show it: the same outcome read two ways can be grepped and compared.
        text = attrs["time"].isoformat()
        attrs["time"] = text[:-6] + "Z" if text.endswith("+00:00") else text
    return {**attrs, "data": event.get_data()}


def dumps(event: CloudEvent) -> str:
    return json.dumps(outcome_summary(event), indent=2, sort_keys=True)

"""Outcome CloudEvents: deterministic ids and attributes so a replay is byte-identical."""

from __future__ import annotations

import functools
import hashlib
import re
import urllib.parse
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from cloudevents.core.v1.event import CloudEvent

from paystream.built import frozen_record
from paystream.settings import CloudEventsMode
from paystream.streams.codec import KafkaRecord, encode_data, encode_event, kafka_record
from paystream.streams.tracecontext import child_traceparent

__all__ = [
    "ANSWERS_HEADER",
    "OUTCOME_PREFIX",
    "REQUEST_HEADER",
    "REQUEST_PATTERN",
    "CommandRef",
    "RejectReason",
    "build_outcome",
    "command_ref",
    "encode_outcome",
    "outcome_id",
    "outcome_traceparent",
    "rejection_data",
    "time_text",
]

OUTCOME_PREFIX = "com.paystream."
# Kafka header on an outcome re-emitted for a retry under the same idempotency key with
# a new command id: that command's id (the event's causation id is the first command's).
ANSWERS_HEADER = "paystream-answers"
# Kafka header a sender may put on a command record (letters only: never card data), and
# the worker echoes on the outcome record of that very record: two senders of one command
# id (different data: one is answered idempotency_conflict) each find their own outcome.
REQUEST_HEADER = "paystream-request"
REQUEST_PATTERN = re.compile(rb"[a-z]{16,64}")
_NAMESPACE = uuid.UUID("6f1d8f0e-4b7a-5c1e-9a55-706179737472")
# What no CloudEvents String may hold (1.0.2 Type System): C0 and C1 controls, DEL,
# Unicode noncharacters (surrogates cannot reach here: decoding refuses them).
NOT_CE_STRING = re.compile(
    "[\x00-\x1f\x7f-\x9f\ufdd0-\ufdef\ufffe\uffff"
    + "".join(f"{chr(p << 16 | 0xFFFE)}{chr(p << 16 | 0xFFFF)}" for p in range(1, 17))
    + "]"
)
_NAMESPACE_BYTES = _NAMESPACE.bytes


class RejectReason(StrEnum):
    """Machine-readable reasons on `command.rejected`."""

    VALIDATION_ERROR = "validation_error"
    CARD_DATA_FORBIDDEN = "card_data_forbidden"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNKNOWN_COMMAND = "unknown_command"
    UNKNOWN_TENANT = "unknown_tenant"
    TENANT_SUSPENDED = "tenant_suspended"
    TENANT_MISMATCH = "tenant_mismatch"
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    INVALID_STATE = "invalid_state"
    UNSUPPORTED = "unsupported"
    NOT_FOUND = "not_found"
    RATE_LIMITED = "rate_limited"
    QUOTA_EXCEEDED = "quota_exceeded"
    GATEWAY_NOT_CONFIGURED = "gateway_not_configured"
    PROVIDER_REJECTED = "provider_rejected"
    INTERNAL_ERROR = "internal_error"
    PAST_RETENTION = "past_retention"
    # A payout above the tenant's available balance in its currency (Stripe's error code).
    BALANCE_INSUFFICIENT = "balance_insufficient"


@dataclass(frozen=True)
class CommandRef:
    """What an outcome needs to know about the command that caused it."""

    tenant_id: str
    command_id: str
    command_type: str  # suffix after com.paystream.command., e.g. "payment.create"
    idempotency_key: str
    time: datetime  # the command record's timestamp: stable across redeliveries
    # The command's W3C traceparent (its producer's span); its outcome carries the
    # worker's span for the command, derived from it (see outcome_traceparent).
    traceparent: str | None = None
    # (partition, offset) of the command record, when read from Kafka: tells a
    # redelivery of this record from the same command sent again.
    source: tuple[int, int] | None = None
    # Names which request the outcome ids belong to: the "partition:offset" of the record
    # that first produced the outcome (kept with it, so that every re-emission has the
    # same ids). A command id reused once its records expired is another request and
    # gets other ids; the same ids would make two events one for every consumer (the
    # ledger kept only the first payment). None: the ids of older versions.
    id_salt: str | None = None
    # True: ``traceparent`` is already the outcome's, carried as it is (a stored outcome
    # re-emitted as first emitted, by whichever version emitted it).
    traceparent_is_outcomes: bool = False
    # The command's W3C tracestate, passed on with the outcome's traceparent as it came
    # (vendors' trace state must survive each hop); None unless valid with a valid
    # traceparent (streams/tracecontext.valid_tracestate).
    tracestate: str | None = None


def command_ref(
    *,
    tenant_id: str,
    command_id: str,
    command_type: str,
    idempotency_key: str,
    time: datetime,
    traceparent: str | None,
    tracestate: str | None,
    source: tuple[int, int] | None,
    id_salt: str | None,
) -> CommandRef:
    """``CommandRef(...)`` of these fields (``traceparent_is_outcomes`` False), once per
    command (see ``frozen_record``)."""
    return frozen_record(
        CommandRef,
        {
            "tenant_id": tenant_id,
            "command_id": command_id,
            "command_type": command_type,
            "idempotency_key": idempotency_key,
            "time": time,
            "traceparent": traceparent,
            "source": source,
            "id_salt": id_salt,
            "traceparent_is_outcomes": False,
            "tracestate": tracestate,
        },
    )


def outcome_traceparent(cmd: CommandRef) -> str | None:
    """The ``traceparent`` of ``cmd``'s outcome: the context of the worker's span for the
    command, a child of the command's own (same trace; span id derived from the command
    record, so every emission of the outcome is the same, see streams/tracecontext.py).
    (A command's ``traceparent`` that is not W3C trace context was dropped on decoding;
    one stored by an older version that copied it is answered as it was.)"""
    if cmd.traceparent is None or cmd.traceparent_is_outcomes:
        return cmd.traceparent
    # Kept for the last command asked, as time_text does (it is asked up to three times
    # per traced command: its emission, its idempotency record, its outcome's header).
    # By identity: the command kept cannot be freed meanwhile, and a CommandRef is
    # frozen, so the same object always has the same answer.
    kept = _last_traceparent[0]
    if kept[0] is cmd:
        return kept[1]
    traceparent = (
        child_traceparent(cmd.tenant_id, cmd.command_id, cmd.id_salt, cmd.traceparent)
        or cmd.traceparent
    )
    _last_traceparent[0] = (cmd, traceparent)  # (one tuple, swapped whole)
    return traceparent


_last_traceparent: list[tuple[object, str | None]] = [(None, None)]


def time_text(at: datetime) -> str:
    """``at.isoformat()``, kept for the last ``at`` asked: a command's time is written
    four times per command (its outcome's header, its idempotency record, its entity's
    emission, the dashboard's summary). By identity: the datetime kept cannot be freed
    meanwhile, so no other can have its id (and a datetime never changes)."""
    kept = _last_time[0]
    if kept[0] is at:
        return kept[1]
    text = at.isoformat()
    _last_time[0] = (at, text)  # (one tuple, swapped whole)
    return text


_last_time: list[tuple[datetime | None, str]] = [(None, "")]


def outcome_id(tenant_id: str, command_id: str, outcome_type: str, salt: str | None = None) -> str:
    """Deterministic event id: the same command always yields the same outcome id.

    It is ``uuid.uuid5(_NAMESPACE, name)``, computed without building a ``UUID`` object
    (a third of the cost of an outcome's id, on every command): the SHA-1 digest's first
    32 hex digits, with the version digit set to 5 and the variant's two bits to 10.
    ``salt``: see ``CommandRef.id_salt``.
    """
    name = (
        f"{tenant_id}\x1f{command_id}\x1f{outcome_type}"
        if salt is None
        else f"{tenant_id}\x1f{command_id}\x1f{outcome_type}\x1f{salt}"
    )
    # A copy of the hash that has taken the namespace's bytes, updated with the name's:
    # the digest of their concatenation (a third cheaper than hashing the two joined).
    sha = _NAMESPACE_SHA1.copy()
    sha.update(name.encode())
    h = sha.hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


_NAMESPACE_SHA1 = hashlib.sha1(_NAMESPACE_BYTES, usedforsecurity=False)


# A hex digit with its top two bits set to 10 (RFC 4122 variant): 0-3 → 8-b, ... c-f → 8-b.
_VARIANT = {digit: "89ab"[int(digit, 16) & 0x3] for digit in "0123456789abcdef"}


def build_outcome(cmd: CommandRef, outcome_type: str, data: dict[str, Any]) -> CloudEvent:
    """An outcome event for ``cmd``; ``outcome_type`` is e.g. ``payment.succeeded``."""
    return CloudEvent(_attributes(cmd, outcome_type, data), data)


def encode_outcome(
    cmd: CommandRef, outcome_type: str, data: dict[str, Any], mode: CloudEventsMode
) -> KafkaRecord:
    """``encode_event(build_outcome(...))``, byte for byte, keyed by the tenant.

    In binary mode the headers are written straight from the attributes: building the
    SDK's event object first validates every attribute again, all of them made here from
    an already-validated command, at a tenth of a command's cost.
    """
    key = cmd.tenant_id.encode()
    if mode is not CloudEventsMode.BINARY:
        return encode_event(build_outcome(cmd, outcome_type, data), key, mode)
    headers = _binary_headers(cmd, outcome_type, data)
    return kafka_record(key, encode_data(data, "application/json"), headers)


def causation_id(command_id: str) -> str:
    """The ``causationid`` of a command's outcomes: its id, or the id's digest when the id
    holds what no CloudEvents String may (a conforming consumer cannot read such an
    event: the .NET SDK throws), as for an over-long id."""
    # (Printable ASCII holds none: the id as it is, without the pattern's slower scan.)
    if (command_id.isascii() and command_id.isprintable()) or NOT_CE_STRING.search(
        command_id
    ) is None:
        return command_id
    return "sha256:" + hashlib.sha256(command_id.encode("utf-8", "surrogatepass")).hexdigest()


def _binary_headers(
    cmd: CommandRef, outcome_type: str, data: dict[str, Any]
) -> tuple[tuple[str, bytes], ...]:
    """The binary-mode headers of ``_attributes(cmd, outcome_type, data)``, sorted:
    ``ce_<name>`` (time in RFC 3339, "Z" for UTC) and ``content-type`` for
    datacontenttype. Written in sorted order straight away (the names are fixed, each
    there once), without the attributes' dict."""
    id_b = outcome_id(cmd.tenant_id, cmd.command_id, outcome_type, cmd.id_salt).encode()
    source_b, type_b = _source_and_type(cmd.tenant_id, outcome_type)
    subject = data.get("entity_id")
    traceparent = outcome_traceparent(cmd) if cmd.traceparent else None
    # Encoded in the attributes' order, so that a value that cannot be fails as it did.
    time = time_text(cmd.time)
    time_b = (time[:-6] + "Z" if time.endswith("+00:00") else time).encode()
    tenant_b, causation_b = cmd.tenant_id.encode(), causation_id(cmd.command_id).encode()
    if not cmd.traceparent:
        # (Most commands carry no trace context: the tuple written out, in its order.)
        if subject:
            return (
                ("ce_causationid", causation_b),
                ("ce_id", id_b),
                ("ce_partitionkey", tenant_b),
                ("ce_source", source_b),
                ("ce_specversion", b"1.0"),
                ("ce_subject", str(subject).encode()),
                ("ce_tenantid", tenant_b),
                ("ce_time", time_b),
                ("ce_type", type_b),
                ("content-type", _JSON),
            )
        return (
            ("ce_causationid", causation_b),
            ("ce_id", id_b),
            ("ce_partitionkey", tenant_b),
            ("ce_source", source_b),
            ("ce_specversion", b"1.0"),
            ("ce_tenantid", tenant_b),
            ("ce_time", time_b),
            ("ce_type", type_b),
            ("content-type", _JSON),
        )
    headers = [
        ("ce_causationid", causation_b),
        ("ce_id", id_b),
        ("ce_partitionkey", tenant_b),
        ("ce_source", source_b),
        ("ce_specversion", b"1.0"),
    ]
    if subject:
        headers.append(("ce_subject", str(subject).encode()))
    headers += [("ce_tenantid", tenant_b), ("ce_time", time_b)]
    if cmd.traceparent:
        headers.append(("ce_traceparent", str(traceparent).encode()))
        if cmd.tracestate:
            headers.append(("ce_tracestate", cmd.tracestate.encode()))
    headers += [("ce_type", type_b), ("content-type", _JSON)]
    return tuple(headers)


_JSON = b"application/json"


@functools.lru_cache(maxsize=1024)  # registered tenants, each with a few outcome types
def _source_and_type(tenant_id: str, outcome_type: str) -> tuple[bytes, bytes]:
    """The ``source`` and ``type`` header values of an outcome, as _attributes has them."""
    domain = outcome_type.split(".", 1)[0]
    source = f"/paystream/tenants/{_path_segment(tenant_id)}/{domain}"
    return source.encode(), (OUTCOME_PREFIX + outcome_type).encode()


@functools.lru_cache(maxsize=1024)  # registered tenants: the same few on every outcome
def _path_segment(tenant_id: str) -> str:
    """A tenant id as one segment of ``source``, a URI reference (CloudEvents 1.0): a
    registered id is itself; one a sender made up (answered `unknown_tenant`) may hold
    spaces, newlines or quotes, percent-encoded here."""
    return urllib.parse.quote(tenant_id, safe="")


def _attributes(cmd: CommandRef, outcome_type: str, data: dict[str, Any]) -> dict[str, Any]:
    domain = outcome_type.split(".", 1)[0]
    attrs: dict[str, Any] = {
        "id": outcome_id(cmd.tenant_id, cmd.command_id, outcome_type, cmd.id_salt),
        "source": f"/paystream/tenants/{_path_segment(cmd.tenant_id)}/{domain}",
        "type": OUTCOME_PREFIX + outcome_type,
        "specversion": "1.0",
        "time": cmd.time,
        "datacontenttype": "application/json",
        "tenantid": cmd.tenant_id,
        "causationid": causation_id(cmd.command_id),
        "partitionkey": cmd.tenant_id,
    }
    subject = data.get("entity_id")
    if subject:
        attrs["subject"] = subject
    if cmd.traceparent:
        attrs["traceparent"] = outcome_traceparent(cmd)
        if cmd.tracestate:
            attrs["tracestate"] = cmd.tracestate
    return attrs


def rejection_data(
    cmd_type: str, reason: RejectReason, message: str, errors: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """`command.rejected` payload: reason for machines, message for humans."""
    data: dict[str, Any] = {"command_type": cmd_type, "reason": reason.value, "message": message}
    if errors:
        data["errors"] = errors
    return data

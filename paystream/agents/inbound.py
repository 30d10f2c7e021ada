"""A command record as the worker reads it, and what it produces for it; the checks
made of a record before it is decoded as a command (its size, time and identity)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from cloudevents.core.v1.event import CloudEvent

from paystream.agents.card_data import key_str
from paystream.built import frozen_record
from paystream.streams.codec import KafkaRecord, valid_unicode
from paystream.streams.commands import ID_MAX_CHARS

__all__ = [
    "Emit",
    "Inbound",
    "attribute_bytes",
    "bad_time",
    "command_identity",
    "emit",
    "record_size",
    "record_time",
    "time_fault",
]


@dataclass(frozen=True)
class Inbound:
    """A command record as consumed."""

    key: bytes | None
    value: bytes | None
    headers: Mapping[str, bytes]
    timestamp_ms: int
    topic: str = ""
    partition: int = -1
    offset: int = -1


@dataclass(frozen=True)
class Emit:
    """A record to produce."""

    topic: str
    record: KafkaRecord
    summary: dict[str, Any] | None = None  # for the dashboard's activity log


def emit(topic: str, record: KafkaRecord, summary: dict[str, Any] | None) -> Emit:
    """``Emit(topic, record, summary)``, once per outcome (see ``frozen_record``)."""
    return frozen_record(Emit, {"topic": topic, "record": record, "summary": summary})


_BOM_AND_BLANKS = b"\xef\xbb\xbf\xff\xfe\x00 \t\r\n"


def _bounded_int(text: str) -> int | None:
    """A JSON integer as the stdlib reads it, or None past its digit limit."""
    try:
        return int(text)
    except ValueError:
        return None


def command_identity(rec: Inbound, *, parse: bool) -> tuple[str, str, str] | None:
    """(tenant, command id, type) of a record that did not decode, when it names them
    well enough to be answered: a command whose producer waits for an outcome gets a
    rejection, not silence. From ``ce_*`` headers (any case, as Kafka header names are
    read), or a structured command's body (``parse``: not for oversized records)."""
    found: dict[str, Any] = {}
    for name, value in rec.headers.items():
        attr = name.lower().removeprefix("ce_")
        if name.lower().startswith("ce_") and attr in ("id", "tenantid", "type"):
            found[attr] = value.decode("utf-8", "replace")
    value = rec.value or b""
    # (UTF-16 and UTF-32 bodies, with or without a byte order mark, as the stdlib reads.)
    if "id" not in found and parse and value.lstrip(_BOM_AND_BLANKS)[:1] == b"{":
        try:
            body = orjson.loads(value)
        except orjson.JSONDecodeError:
            try:  # what the decoder (stdlib json) reads and orjson does not: NaN, 1e400;
                # an integer past the stdlib's 4,300 digits is no id, not a failure.
                body = json.loads(value, parse_int=_bounded_int)
            except (ValueError, RecursionError):  # (nested past the parser's depth)
                body = None
        if isinstance(body, dict):
            found = {k: body.get(k) for k in ("id", "tenantid", "type")}
    tenant, cmd_id, ce_type = found.get("tenantid"), found.get("id"), found.get("type") or ""
    if not (isinstance(tenant, str) and isinstance(cmd_id, str) and isinstance(ce_type, str)):
        return None
    # The rejection echoes them, more than once, into headers that must encode.
    sane = all(0 < len(v) <= ID_MAX_CHARS and valid_unicode(v) for v in (tenant, cmd_id))
    if not sane or not valid_unicode(ce_type) or key_str(rec.key) != tenant:
        return None
    return tenant, cmd_id, ce_type


def record_size(rec: Inbound) -> int:
    """Bytes of the record's key, value and headers."""
    return (
        len(rec.key or b"")
        + len(rec.value or b"")
        + sum(len(name) + len(value) for name, value in rec.headers.items())
    )


# The range a datetime can hold (years 1-9999), in epoch milliseconds.
_MIN_TIME_MS = int(datetime(1, 1, 1, tzinfo=UTC).timestamp() * 1000)
_MAX_TIME_MS = int(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp() * 1000)


def attribute_bytes(event: CloudEvent) -> int:
    """The size of a command's attributes as text: not its data, nor the id, tenant and
    type, whose own limit (ID_MAX_CHARS) is answered as a validation error."""
    return sum(
        len(name) + len(str(value))
        for name, value in event.get_attributes().items()
        if name not in _ANSWERED_IF_TOO_LONG
    )


_ANSWERED_IF_TOO_LONG = frozenset({"id", "tenantid", "type"})


def record_time(timestamp_ms: int) -> datetime:
    """A record's timestamp as a time. The producer sets it: one outside what a datetime
    holds (2**62) would raise for every command of the batch, on every redelivery.
    The last one is kept: the records a producer sends together share their timestamp
    (and a datetime never changes, so one can be handed out again)."""
    kept = _last_record_time[0]
    if kept[0] == timestamp_ms:
        return kept[1]
    clamped = min(max(timestamp_ms, _MIN_TIME_MS), _MAX_TIME_MS)
    at = datetime.fromtimestamp(clamped / 1000, tz=UTC)
    _last_record_time[0] = (timestamp_ms, at)  # (one tuple, swapped whole)
    return at


_last_record_time: list[tuple[int | None, datetime]] = [(None, datetime.fromtimestamp(0, UTC))]


def bad_time(at: datetime) -> str | None:
    """What is wrong with a command's time, if anything: time_fault's answer, which
    for UTC itself (as nearly always: "Z") is None (an offset of zero, whole minutes,
    and no conversion to overflow), without asking."""
    if at.tzinfo is UTC:
        return None
    return time_fault(at)


def time_fault(at: datetime) -> str | None:
    """What is wrong with a command's time, if anything (any time zone)."""
    offset = at.utcoffset()
    if offset is not None and (offset.seconds % 60 or offset.microseconds):
        # The parsers take "+05:30:15"; RFC 3339 (and the stored records) do not.
        return "the UTC offset must be whole minutes"
    if offset is None or not offset or 1 < at.year < 9999:
        return None  # only times within a day of the datetime range's ends can overflow
    try:
        at.astimezone(UTC)
    except OverflowError:
        # 0001-01-01T00:00:00+01:00 is before year 1 in UTC: the ledger could never
        # store it (its sink would retry the batch for ever).
        return "out of range in UTC"
    return None

"""CloudEvents ⇄ Kafka records, in binary (ce_* headers) and structured content modes.

Inbound commands may use either mode (detected per record); outbound outcomes use the
mode from settings. Decoding failures raise ``UndecodableRecord`` so the caller can
dead-letter the bytes instead of crashing the partition.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from dateutil.parser import isoparse

from paystream.built import frozen_record
from paystream.errors import PaystreamError
from paystream.settings import CloudEventsMode

__all__ = [
    "STRUCTURED_CONTENT_TYPE",
    "KafkaRecord",
    "UndecodableRecord",
    "ce_text",
    "decode_record",
    "encode_data",
    "encode_event",
    "headers_to_dict",
    "is_structured",
    "kafka_record",
    "valid_unicode",
]

STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"


class _OrjsonFormat(JSONFormat):
    """The SDK's JSON format with orjson for the data payload (stdlib json was ~6% of the
    worker's CPU). Same output shape: compact JSON, keys in insertion order."""

    def write_data(self, data: Any, datacontenttype: str | None) -> bytes:
        if isinstance(data, dict) and is_json_media(datacontenttype):
            try:
                # An exact-size copy (the same bytes): orjson returns its output in the
                # buffer it grew, and an outcome's bytes are kept until its batch is
                # delivered, each leaving the heap a hole no later dump fits in: about
                # two page faults per outcome (5.1 against 1.7 µs to dump and keep one,
                # measured). As ChangelogBatch.records does for table values.
                return memoryview(orjson.dumps(data)).tobytes()
            except TypeError:
                pass  # e.g. an integer beyond 64 bits: the SDK's encoder handles it
        return super().write_data(data, datacontenttype)

    def read(self, event_factory: Any, data: str | bytes) -> BaseCloudEvent:
        """The SDK's read, but an attribute given as JSON ``null`` is absent, as the JSON
        event format says (§2.2; Jackson and System.Text.Json write them): the SDK
        refused a command with ``"subject": null`` (review finding)."""
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        try:
            return self._read(event_factory, text)
        except ValueError as exc:
            if not _too_long_an_integer(exc):
                raise
        # The stdlib parser refused the whole event for one integer too long to convert:
        # read it as the too-large number it is, refused by its field's model (review
        # h67c). Only then: a scan for such runs on every event cost quadratic time.
        members = _json_loads(text)
        if isinstance(members, dict) and any(
            type(v) is float and math.isinf(v) for k, v in members.items() if k != "data"
        ):
            # (An attribute is a String, Integer or Boolean: one read as inf is none, as
            # before; an idempotencykey would have read "inf", one key for all of them.)
            raise ValueError("an attribute holds an integer too large to read")
        return self._read(event_factory, json.dumps(members))

    def _read(self, event_factory: Any, text: str) -> BaseCloudEvent:
        members: Any = None
        if "null" in text:
            members = json.loads(text)  # (the SDK's parser, as the SDK then reads it)
            if isinstance(members, dict) and None in members.values():
                members = {k: v for k, v in members.items() if v is not None}
                text = json.dumps(members)
        # A key is named as parsed, an escape spelling it too ("data\u005fbase64", review
        # h64c): either "base64" stands in the text or an escape does.
        if "base64" in text or "\\u" in text:
            if members is None:
                members = json.loads(text)
            encoded = members.get("data_base64") if isinstance(members, dict) else None
            if isinstance(encoded, str):
                # The SDK's decoder drops what is not base64: "!!" read as no data at
                # all, and a command ran on nothing (review h64b). Not base64 (RFC 4648,
                # as the event format says it is), not a CloudEvent, as "abc" is not.
                base64.b64decode(encoded, validate=True)
        return super().read(event_factory, text)

    def read_data(self, body: bytes, datacontenttype: str | None) -> Any:
        if body and is_json_media(datacontenttype):
            try:
                return orjson.loads(body)
            except orjson.JSONDecodeError:
                pass  # the SDK's rules for non-JSON bodies
            try:
                json.loads(body)
            except ValueError as exc:  # (UnicodeDecodeError is one)
                if _too_long_an_integer(exc):
                    try:
                        return _json_loads(body.decode("utf-8"))
                    except ValueError:
                        pass  # not JSON after all: the SDK's rules, as for any other
            except RecursionError:
                pass  # (nested past the stdlib's depth: the SDK's rules, as before)
        return super().read_data(body, datacontenttype)


def _too_long_an_integer(exc: ValueError) -> bool:
    """Whether the stdlib parser refused a JSON document for an integer longer than Python
    converts (4,300 digits, CVE-2020-10735): the document is JSON all the same."""
    return "integer string conversion" in str(exc)


def _json_int(digits: str) -> int | float:
    """A JSON integer; one too long for ``int`` is read as a float (inf), as orjson reads
    integers beyond 64 bits: a number, refused as an integer by any StrictInt field."""
    return int(digits) if len(digits) <= 4300 else float(digits)


def _json_loads(text: str) -> Any:
    return json.loads(text, parse_int=_json_int)


@functools.lru_cache(maxsize=64)  # a handful of content types, seen on every record
def is_json_media(datacontenttype: str | None) -> bool:
    """Whether a worker reads data of this content type as JSON (the SDK's pattern:
    ``application/json``, ``text/json``, ``application/<x>+json``, parameters after a
    ``;``, nothing around), in any case."""
    # Media types are case-insensitive (RFC 9110 8.3.1): "Application/JSON" is JSON too.
    content_type = (datacontenttype or JSONFormat.DEFAULT_CONTENT_TYPE).lower()
    return re.match(JSONFormat.JSON_CONTENT_TYPE_PATTERN, content_type) is not None


_FORMAT = _OrjsonFormat()


class UndecodableRecord(PaystreamError):
    """A Kafka record is not a CloudEvent at all; it belongs on the dead-letter topic."""


@dataclass(frozen=True)
class KafkaRecord:
    """What we put on (or read off) Kafka: key, value and headers as bytes."""

    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


def kafka_record(
    key: bytes | None, value: bytes, headers: tuple[tuple[str, bytes], ...]
) -> KafkaRecord:
    """``KafkaRecord(key, value, headers)``, once per outcome (see ``frozen_record``)."""
    return frozen_record(KafkaRecord, {"key": key, "value": value, "headers": headers})


def headers_to_dict(
    headers: Iterable[tuple[str, bytes]] | Mapping[str, bytes] | None,
) -> dict[str, bytes]:
    """Normalise aiokafka/Faust headers (list of pairs or mapping) to a dict; last wins."""
    if not headers:
        return {}
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {str(k): bytes(v) if v is not None else b"" for k, v in items}


def is_structured(headers: Mapping[str, bytes]) -> bool:
    """Whether ``decode_record`` reads a record with these headers in structured mode
    (its body is the whole event): a structured content type (any case), or no ``ce_*``
    header at all."""
    binary = False
    for name, value in headers.items():
        lowered = name.lower()
        if lowered == "content-type":
            if value.decode("latin-1").lower().startswith(STRUCTURED_CONTENT_TYPE):
                return True
        elif lowered.startswith("ce_"):
            binary = True
    return not binary


def decode_record(
    key: bytes | None, value: bytes | None, headers: Mapping[str, bytes]
) -> CloudEvent:
    """Parse a Kafka record into a CloudEvent, auto-detecting binary or structured mode."""
    if value is not None and type(headers) is dict:
        names = tuple(headers)
        plan = _PLANS.get(names)
        if plan is None:
            plan = _plan(names)
        if plan is not None:
            event = _planned(plan, key, value, headers)
            if event is not None:
                return event
    return _decode_record_full(key, value, headers)


def _decode_record_full(
    key: bytes | None, value: bytes | None, headers: Mapping[str, bytes]
) -> CloudEvent:
    """decode_record, every case: header by header."""
    if value is None:
        if is_structured(headers):
            raise UndecodableRecord("empty record value (tombstone) is not a command")
        # Binary mode: a CloudEvent with no data is a record with no value (Kafka
        # binding §3.2.2), read as the empty value is.
        value = b""
    binary = False
    time_name: str | None = None
    ctype = ""
    named: set[str] = set()
    twice: list[str] = []
    content_types: list[bytes] = []  # ce_datacontenttype's and content-type's values
    # The binary-mode attributes, as the SDK's from_binary makes them, built in this same
    # pass (see _binary_event); None once a header value is not UTF-8.
    attributes: dict[str, Any] | None = {}
    for name, raw in headers.items():
        lowered = name.lower()
        attr: str | None = None  # the attribute it holds (ce_time's is parsed apart)
        if lowered.startswith("ce_"):
            binary = True
            if lowered == "ce_time":
                time_name = name
            else:
                attr = lowered[3:]
        elif lowered == "content-type":
            ctype = raw.decode("latin-1").lower()
            attr = "datacontenttype"
        if attr is None and name != time_name:
            # Not a CloudEvents header: not read, so neither decoded (a producer's binary
            # schema id made the command undecodable as the SDK decodes every header).
            continue
        if attr is not None and attributes is not None:
            try:
                attributes[attr] = raw.decode("utf-8")
            except UnicodeDecodeError:
                attributes = None
        if lowered in ("ce_datacontenttype", "content-type"):
            content_types.append(raw)
        if lowered in named:
            twice.append(lowered)
        named.add(lowered)
    if ctype.startswith(STRUCTURED_CONTENT_TYPE):
        # The content type decides the mode (Kafka binding §3): a structured record may
        # carry ce_* headers too (§3.3.3); its body is the event.
        binary = False
    if twice and (binary or "content-type" in twice):
        # One attribute under two spellings ("ce_id", "CE_ID"): the decoder keeps
        # whichever comes last, and a park (its headers sorted) would be re-driven as
        # the other one: another command id, another charge.
        raise UndecodableRecord(f"header {twice[0]!r} given twice (names differing in case)")
    if (
        binary
        and len(content_types) > 1
        and len({is_json_media(ct.decode("utf-8", "replace")) for ct in content_types}) > 1
    ):
        # Both spell datacontenttype in binary mode, and the last one wins: a park (its
        # headers sorted) would be re-driven with the other, its data read another way
        # (JSON, then a string: refused after a charge; review finding). Spellings read
        # the same way ("application/json; charset=utf-8" beside "application/json")
        # are one content type: refused, a producer's every command was (review finding).
        raise UndecodableRecord("ce_datacontenttype and content-type disagree")
    event: BaseCloudEvent
    try:
        if binary:
            # The SDK parses `time` with dateutil, a sizeable share of decoding a command;
            # the standard library parses RFC 3339 in a fraction of that.
            time = None if time_name is None else _parse_time(headers[time_name].decode("utf-8"))
            if attributes is not None:
                event = _binary_event(attributes, key, value, time)
            else:  # a CloudEvents value that is not UTF-8: the SDK raises as it always has
                factory: Any = _Received
                if time is not None:
                    factory = functools.partial(_event_at, time)
                message = ce_kafka.KafkaMessage(
                    headers=_cloudevents_headers(headers, time_name), key=key, value=value
                )
                event = ce_kafka.from_binary(message, _FORMAT, factory)
        else:
            if ctype and not ctype.startswith(STRUCTURED_CONTENT_TYPE):
                raise UndecodableRecord(f"content-type {ctype!r} is not a structured CloudEvent")
            message = ce_kafka.KafkaMessage(
                headers=_cloudevents_headers(headers, time_name), key=key, value=value
            )
            event = ce_kafka.from_structured(message, _FORMAT, _Received)
            # JSON can spell a lone surrogate ("\ud800"): such an id or type could never
            # be written into an outcome's headers (binary-mode headers are UTF-8 bytes).
            for name, attr in event.get_attributes().items():
                if isinstance(attr, str) and not valid_unicode(attr):
                    raise UndecodableRecord(f"attribute {name!r} is not valid Unicode")
    except UndecodableRecord:
        raise
    except Exception as exc:  # the SDK raises a zoo of types for malformed input
        raise UndecodableRecord(f"{type(exc).__name__}: {exc}") from exc
    if type(event) is _Received:  # (CloudEvent's isinstance goes through typing.Protocol)
        return event
    if not isinstance(event, CloudEvent):
        raise UndecodableRecord("not a CloudEvents 1.0 event")
    return event


# What decode_record's pass over the headers makes of their names alone (a record's
# binary-mode attributes but for the values): per header, in order, the attribute it
# holds (None: not a CloudEvents header, or ce_time, parsed apart), which one is ce_time
# and which the content type. Producers send the same few name sets on every command, so each is
# worked out once (a bounded number of small sets: hostile records must not fill memory).
_Plan = tuple[tuple[str | None, ...], str | None, str | None]
_PLANS: dict[tuple[str, ...], _Plan | None] = {}
_PLANS_MAX = 1024
_PLAN_NAMES_MAX = 32
_PLAN_NAME_MAX = 64


def _plan(names: tuple[str, ...]) -> _Plan | None:
    """The plan of a binary-mode record with these header names, or None when the full
    pass decides alone: a name not a str, a CloudEvents header given twice (any case),
    or no ``ce_*`` header at all (structured mode)."""
    attrs: list[str | None] = []
    time_name = ctype_name = None
    seen: set[str] = set()
    for name in names:
        if type(name) is not str:
            return _remember_plan(names, None)
        lowered = name.lower()
        if lowered.startswith("ce_"):
            if lowered == "ce_time":
                attrs.append(None)
                time_name = name
            else:
                attrs.append(lowered[3:])
        elif lowered == "content-type":
            attrs.append("datacontenttype")
            ctype_name = name
        else:
            attrs.append(None)
            continue
        if lowered in seen:
            return _remember_plan(names, None)
        seen.add(lowered)
    if {"ce_datacontenttype", "content-type"} <= seen:
        return _remember_plan(names, None)  # (both spell it: the full pass compares them)
    if not seen - {"content-type"}:
        return _remember_plan(names, None)
    return _remember_plan(names, (tuple(attrs), time_name, ctype_name))


def _remember_plan(names: tuple[str, ...], plan: _Plan | None) -> _Plan | None:
    if len(names) <= _PLAN_NAMES_MAX and all(len(name) <= _PLAN_NAME_MAX for name in names):
        if len(_PLANS) >= _PLANS_MAX:
            # Full: start again, so that a sender's junk name sets cannot keep the
            # producers' own out for good (they are back after a command each).
            _PLANS.clear()
        _PLANS[names] = plan
    return plan


def _planned(
    plan: _Plan, key: bytes | None, value: bytes, headers: dict[str, bytes]
) -> CloudEvent | None:
    """_decode_record_full's binary-mode event, made from the plan of the headers' names:
    the same attributes in the same order (every value decoded as UTF-8, as the full
    pass does, or leaves to the SDK when one is not; ce_time's parsed apart). None for
    anything else, whatever it is (a value that is not UTF-8 or not
    bytes, a structured content type, a time or event the checks refuse): the full pass
    then decides, raising as it does (nothing here changes anything it reads)."""
    attr_names, time_name, ctype_name = plan
    attributes: dict[str, Any] = {}
    try:
        for attr, raw in zip(attr_names, headers.values(), strict=True):
            if attr is not None:
                attributes[attr] = raw.decode("utf-8")
        if ctype_name is not None and (
            headers[ctype_name].decode("latin-1").lower().startswith(STRUCTURED_CONTENT_TYPE)
        ):
            return None
        time = None if time_name is None else _parse_time(headers[time_name].decode("utf-8"))
        event = _binary_event(attributes, key, value, time)
    except Exception:
        return None
    return event if type(event) is _Received else None


def _cloudevents_headers(headers: Mapping[str, bytes], without: str | None) -> dict[str, bytes]:
    """The CloudEvents headers (``ce_*``, ``content-type``), but ``without``'s."""
    return {
        k: v
        for k, v in headers.items()
        if k != without and (k.lower().startswith("ce_") or k.lower() == "content-type")
    }


def ce_text(value: Any) -> str:
    """An attribute's value as its canonical string (CloudEvents Type System), as binary
    mode carries it: a Boolean "true"/"false", an Integer its decimal, a String itself;
    "" for none (structured mode keeps the JSON type: ``0`` was read as no value)."""
    if value is None:
        return ""
    if value is True or value is False:
        return "true" if value else "false"
    return str(value)


def valid_unicode(text: str) -> bool:
    """Is ``text`` encodable (no lone surrogates, which JSON can spell)?"""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _parse_time(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return isoparse(text)  # what the SDK accepts, fromisoformat may not


class _Received(CloudEvent):
    """A CloudEvent as it arrived. The SDK makes up what is missing: a random ``id`` (a
    command without one would run again under a new id, and key, on every redelivery)
    and ``time`` = now (its outcome would differ on every redelivery). Here a missing id
    is not a CloudEvent, and a missing time stays missing."""

    def __init__(self, attributes: dict[str, Any], data: Any = None) -> None:
        if "id" not in attributes:
            raise UndecodableRecord("missing required attribute 'id'")
        if "specversion" not in attributes:  # required; the SDK would assume 1.0
            raise UndecodableRecord("missing required attribute 'specversion'")
        if _plainly_valid(attributes):
            # Nothing for the checks below to find (nor for the SDK's validation, which
            # adds nothing either: id and specversion are given, and a missing time stays
            # missing): they are skipped, a fifth of decoding a command.
            self._attributes = attributes
            self._data = data
            return
        for name, value in attributes.items():
            # Attribute types are all scalars (spec: Type System); JSON could nest.
            if isinstance(value, dict | list):
                raise UndecodableRecord(f"attribute {name!r} is not a scalar")
        # The SDK's errors, word for word (UndecodableRecord quotes them).
        given_time = "time" in attributes
        super().__init__(attributes, data)
        if not given_time:
            del self._attributes["time"]


# The attributes the spec defines but time: strings, not empty (CloudEvent's
# _validate_required_attributes and _validate_optional_attributes; specversion is
# checked to be "1.0" apart).
_SPEC_NAMES = frozenset(
    {"id", "source", "type", "specversion", "subject", "datacontenttype", "dataschema"}
)
# An extension attribute's name (the SDK's ``^[a-z0-9]+$`` also takes one trailing
# newline: such a name goes to the SDK, which decides).
_EXTENSION_NAME = re.compile(r"[a-z0-9]+")
# Names no string-valued extension may have: "data" is reserved, and a time must be a
# datetime (never a string here: both modes parse it, but the SDK would refuse one).
_NOT_EXTENSIONS = frozenset({"data", "time"})


def _plainly_valid(attributes: dict[str, Any]) -> bool:
    """True only when neither the scalar check of ``_Received`` nor the SDK's
    ``CloudEvent._validate_attribute`` would find anything wrong with ``attributes`` (id
    and specversion present): every value a string but time; specversion "1.0"; id,
    source and type (required) and subject, datacontenttype and dataschema (if given)
    not empty; time (if given) a datetime with a time zone; every other name an
    extension name, not "data". False is no verdict: the full checks then run."""
    if attributes["specversion"] != "1.0" or "source" not in attributes:
        return False
    if "type" not in attributes:
        return False
    for name, value in attributes.items():
        if type(value) is str:
            if name in _SPEC_NAMES:
                if not value:
                    return False
            elif name not in _EXTENSION_NAMES_SEEN:
                if name in _NOT_EXTENSIONS or not _EXTENSION_NAME.fullmatch(name):
                    return False
                _see_extension_name(name)
        elif name != "time" or type(value) is not datetime or not value.tzinfo:
            return False
    return True


# Extension names found good above (the same few on every command: tenantid,
# partitionkey, idempotencykey), so not matched again; a bounded number of short ones.
_EXTENSION_NAMES_SEEN: set[str] = set()
_EXTENSION_NAMES_SEEN_MAX = 256


def _see_extension_name(name: str) -> None:
    if len(name) <= 64:
        if len(_EXTENSION_NAMES_SEEN) >= _EXTENSION_NAMES_SEEN_MAX:
            _EXTENSION_NAMES_SEEN.clear()  # (as _remember_plan does, for the same reason)
        _EXTENSION_NAMES_SEEN.add(name)


def _event_at(time: datetime, attributes: dict[str, Any], data: Any) -> CloudEvent:
    return _Received({**attributes, "time": time}, data)


def _binary_event(
    attributes: dict[str, Any], key: bytes | None, value: bytes, time: datetime | None
) -> CloudEvent:
    """``ce_kafka.from_binary(message, _FORMAT, partial(_event_at, time))`` from the
    attributes decode_record read off the headers as from_binary does (every value
    decoded as UTF-8, ``ce_*`` names lower-cased and unprefixed, ``content-type`` as
    ``datacontenttype``; ``ce_time`` parsed apart, into ``time``): the same event, the
    same attributes in the same order, without a second pass over the headers."""
    if key is not None:
        attributes["partitionkey"] = key.decode("utf-8") if isinstance(key, bytes) else key
    data = _FORMAT.read_data(value, attributes.get("datacontenttype"))
    if time is not None:
        attributes["time"] = time
    return _Received(attributes, data)


def encode_data(data: Any, datacontenttype: str | None) -> bytes:
    """An event's data as the binary-mode record value (what ``to_binary`` writes)."""
    return _FORMAT.write_data(data, datacontenttype)


def _json_default(obj: Any) -> Any:
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def encode_event(event: CloudEvent, key: bytes | None, mode: CloudEventsMode) -> KafkaRecord:
    """Serialise an outcome. Output is deterministic for a given event (byte-identical replays)."""
    if mode is CloudEventsMode.BINARY:
        msg = ce_kafka.to_binary(event, _FORMAT, key_mapper=lambda _e: key)
        headers = tuple(sorted(msg.headers.items()))
        return KafkaRecord(key=key, value=msg.value, headers=headers)
    attrs = {k: v for k, v in event.get_attributes().items() if v is not None}
    if "time" in attrs:
        attrs["time"] = attrs["time"].isoformat().replace("+00:00", "Z")
    attrs["data"] = event.get_data()
    body = json.dumps(attrs, sort_keys=True, separators=(",", ":"), default=_json_default)
    return KafkaRecord(
        key=key,
        value=body.encode(),
        headers=(("content-type", STRUCTURED_CONTENT_TYPE.encode()),),
    )

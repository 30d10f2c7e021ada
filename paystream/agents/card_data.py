"""Card data in a command record: where the card-number and security-code scans look
(the value as text and as parsed JSON, escapes resolved, UTF-16, base64 data, the key,
the headers a park or dead letter keeps), and how a rejection may name such a record.

The pipeline's gate (``CommandProcessor._security_code_answer``) decides with these;
they only read the record.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson
from cloudevents.core.v1.event import CloudEvent

from paystream.streams.codec import is_structured
from paystream.streams.commands import ID_MAX_CHARS
from paystream.streams.pan import (
    contains_card_number,
    raw_may_contain_card_number,
    redact_card_numbers,
    security_code_at,
    security_codes_at,
    security_codes_in_strings,
    security_codes_in_text,
    text_holds_security_code,
    text_security_code_key,
    with_float_digits,
)
from paystream.streams.tracecontext import parse_traceparent, tracestate_members

if TYPE_CHECKING:
    from paystream.agents.pipeline import Inbound

__all__ = [
    "UNNAMED_TENANT",
    "digest",
    "event_holds_card",
    "kept_attributes_hold_code",
    "kept_headers",
    "key_str",
    "park_value",
    "raw_holds_card",
    "raw_holds_security_code",
    "raw_may_hold_card",
    "safe_id",
    "safe_tenant",
    "safe_type",
    "security_code_outside_data",
    "trace_context_without_cards",
    "without_card_trace",
    "without_code_headers",
]

# The tenant a rejection names when the command named none it may repeat: no tenant id
# can be this (TENANT_ID_PATTERN), so no tenant's events, dashboard or metrics get it.
UNNAMED_TENANT = "_unknown"


def kept_headers(headers: Mapping[str, bytes]) -> dict[str, bytes]:
    """The headers paystream reads, checks for card numbers and keeps (retry topic, dead
    letters): the CloudEvents ones. Others (tracing ids and the like) are neither read nor
    kept: long decimal ids would pass for card numbers one time in ten."""
    if type(headers) is not dict:
        # (A multi-valued mapping may give ``[]`` other than ``items()``: read as listed.)
        return {k: v for k, v in headers.items() if _KEPT(k)}
    names = tuple(headers)
    kept = _KEPT_NAMES.get(names)
    if kept is None:
        kept = _kept_names(names)
    if kept is _ALL_KEPT:
        return dict(headers)  # (the common case: one C-level copy)
    return {k: headers[k] for k in kept}


# Header names are case-insensitive to the decoder (and the SDK): so here.
_KEPT = re.compile(r"(?i)ce_|content-type\Z").match
# Which of a record's header names are kept, by the names in order: producers send the
# same few sets on every command. (Only str names, as a dict of them holds; a bounded
# number of small sets: hostile records must not fill memory.)
_KEPT_NAMES: dict[tuple[str, ...], tuple[str, ...]] = {}
_ALL_KEPT: tuple[str, ...] = ("(every name)",)
_KEPT_SET_MAX = 32
_KEPT_NAME_MAX = 64
_KEPT_SETS = 1024


def _kept_names(names: tuple[str, ...]) -> tuple[str, ...]:
    """Which of ``names`` are kept (``_ALL_KEPT`` for all), remembered for next time."""
    kept = tuple(k for k in names if _KEPT(k))
    if len(kept) == len(names):
        kept = _ALL_KEPT
    if (
        len(names) <= _KEPT_SET_MAX
        and _STR.issuperset(map(type, names))
        and max(map(len, names), default=0) <= _KEPT_NAME_MAX
    ):
        if len(_KEPT_NAMES) >= _KEPT_SETS:
            _KEPT_NAMES.clear()
        _KEPT_NAMES[names] = kept
    return kept


_STR = frozenset({str})


def raw_may_hold_card(rec: Inbound, headers: Mapping[str, bytes]) -> bool:
    """The cheap look at the record's bytes (``headers``: its kept ones): the parsed scan
    runs only when this says so. (A NUL in the value: UTF-16 and the like, whose digits
    the quick look cannot see: look properly.)"""
    value = rec.value or b""
    if b"\x00" in value or b'"data_base64"' in value or b'"datacontentencoding"' in value:
        return True  # digits the quick look cannot see (UTF-16, base64)
    if b"\x00" in (rec.key or b""):  # a key in UTF-16 is echoed by a rejection's record
        return True
    # (A NUL in any value or name, looked for in all of them at once.)
    if b"\x00" in b"".join(headers.values()) or "\x00" in "".join(headers):
        return True
    return raw_may_contain_card_number(
        rec.key or b"", value, "\x00".join(headers).encode(), *headers.values()
    )


def _header_texts(rec: Inbound) -> list[str]:
    """The key, and the kept headers' names and values, as text."""
    headers = kept_headers(rec.headers)
    texts = [key_str(rec.key), *headers]
    texts += (v.decode("utf-8", "replace") for v in headers.values())
    return texts


def event_holds_card(rec: Inbound, event: CloudEvent) -> bool:
    """The parsed scan (data, attributes, key and every header), then the raw bytes: a
    JSON object with a key twice parses to its last value only, and the bytes, card
    number and all, are what a parked command keeps. Not the trace context (text
    attributes `traceparent` and `tracestate`): see :func:`trace_context_without_cards`."""
    raw = event.get_data()
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    attributes = event.get_attributes()
    trace = [v for k in _TRACE_CONTEXT if isinstance(v := attributes.get(k), str) and v]
    headers = _header_texts(rec)
    if trace:
        attributes = {k: v for k, v in attributes.items() if k not in _TRACE_CONTEXT}
        # Only the trace headers themselves (by name; a park cleans them), never another
        # header or the key that happens to equal them.
        kept = kept_headers(rec.headers)
        headers = [key_str(rec.key), *kept]
        headers += (v.decode("utf-8", "replace") for k, v in kept.items()
                    if k.lower() not in _TRACE_HEADERS)  # fmt: skip
        if not is_structured(rec.headers):
            trace = []  # binary mode: the value holds no trace context, only data
    return contains_card_number(raw, attributes, headers) or _value_text_holds_card(rec, trace)


# Attributes that are no part of the request, only of where it is traced: what reads as
# a card number there is dropped, not the command (trace_context_without_cards).
_TRACE_CONTEXT = ("traceparent", "tracestate")


def trace_context_without_cards(traceparent: object, tracestate: object) -> tuple[object, object]:
    """The command's ``traceparent`` and ``tracestate`` without what reads as a card number.

    Trace context is not the request, and reads as one by chance: a random trace id holds
    a Luhn-valid run of 13 to 19 digits about one time in 430, a vendor's 13-digit
    millisecond timestamp in its trace state (New Relic's) one time in ten. Refusing the
    command for it refused payments; keeping it would put what reads as a card number in
    outcomes, stored records and spans. So such a ``traceparent`` is dropped (the command
    starts a trace of its own) and such trace-state members are (the rest is passed on).
    """
    if traceparent is not None and contains_card_number(str(traceparent)):
        traceparent = None
    if tracestate is not None and contains_card_number(str(tracestate)):
        members = tracestate_members(tracestate) or ()
        kept = ",".join(f"{k}={v}" for k, v in members if not contains_card_number(k, v))
        tracestate = kept if kept and not contains_card_number(kept) else None
    return traceparent, tracestate


def without_card_trace(headers: Mapping[str, bytes], tracestate: str | None) -> dict[str, bytes]:
    """A park's headers without trace context that reads as a card number: such a
    ``ce_traceparent`` dropped, such a ``ce_tracestate`` replaced by ``tracestate`` (the
    command's, without such members) or dropped (trace_context_without_cards). Nor a
    ``ce_traceparent`` that is no trace context ("cvc=737"): decoding ignores it, so a
    re-drive without it runs the same (review finding)."""
    out = dict(headers)
    for name, value in headers.items():
        lowered = name.lower()
        text = value.decode("utf-8", "replace")
        if lowered == "ce_traceparent" and parse_traceparent(text) is None:
            del out[name]
        elif lowered in _TRACE_HEADERS and contains_card_number(text):
            if lowered == "ce_tracestate" and tracestate:
                out[name] = tracestate.encode()
            else:
                del out[name]
    return out


_TRACE_HEADERS = frozenset("ce_" + name for name in _TRACE_CONTEXT)


def park_value(rec: Inbound) -> bytes:
    """The value a park keeps: as it came, but a structured command's body without trace
    context that reads as a card number (trace_context_without_cards), written again.
    (Its data, and so its request, is the same; parks are rare, so the parse is cheap.)"""
    value = rec.value or b""
    if not value or not is_structured(rec.headers):
        return value
    if not raw_may_contain_card_number(value) and b"tracestate" not in value:
        return value
    try:
        # The decoder's parser (the SDK's stdlib json): orjson refuses NaN, Infinity and
        # 1e400, which the decoder took, and reads integers past 64 bits as floats.
        body = json.loads(value)
    except (ValueError, RecursionError):
        return value
    if not isinstance(body, dict):
        return value
    given = (body.get("traceparent"), body.get("tracestate"))
    kept = trace_context_without_cards(*given)
    # Nor a trace state naming a card security code ("cvc=737"): a command let through
    # with one goes on without it (pipeline: _process_event).
    members = tracestate_members(kept[1]) if isinstance(kept[1], str) else None
    if members and security_code_at(dict(members)) is not None:
        kept = (kept[0], None)
    if kept == given:
        return value
    for name, was, now in zip(_TRACE_CONTEXT, given, kept, strict=True):
        if now is None:
            body.pop(name, None)
        elif now != was:
            body[name] = now
    try:
        # Not escaped to ASCII: "\\u4e2d" is six bytes where "中" is three, and a body
        # that grew past the value limit was refused when it was re-driven (review).
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:  # a lone surrogate ("\\ud800" in the JSON) has no UTF-8
        return json.dumps(body, separators=(",", ":")).encode()


def _value_text_holds_card(rec: Inbound, trace: Sequence[str] = ()) -> bool:
    """The value as text, its JSON escapes resolved (escaped, "№1234567894" reads
    "\\u21161234567894": digits a card number could be made of); not the ``trace``
    context's strings (a structured command's, as JSON writes them)."""
    value = rec.value or b""
    text = value.decode("utf-8", "replace")
    for member in trace:
        # Only where the trace context itself is: the same string once more (a key
        # given twice, whose earlier value the parsed scans never saw) is scanned.
        written = orjson.dumps(member).decode()
        if text.count(written) == trace.count(member):
            text = text.replace(written, '""')
    if b"\\" in value:
        text = _unescaped(text)
    return contains_card_number(with_float_digits(text))


def raw_holds_card(rec: Inbound, *, parse: bool = True) -> bool:
    """A record that did not decode (or is not parsed): scan its bytes as text, as JSON
    where they parse, and with every JSON escape resolved and the digits of exponent
    numbers added where they do not, so nothing the command scan would catch slips.

    ``parse=False`` (an oversized record) still parses one that names ``data_base64``:
    base64 data is read by no text scan, and a record that names it but parses as
    nothing is taken to hold a card number (unsure: its bytes are not kept)."""
    texts: list[Any] = _header_texts(rec)
    value = rec.value or b""
    text = value.decode("utf-8", "replace")
    texts.append(with_float_digits(text))
    if b"\x00" in value:  # UTF-16 and the like: ASCII with a NUL beside each character
        texts.append(with_float_digits(value.replace(b"\x00", b"").decode("utf-8", "replace")))
        # ... and as UTF-16 itself, where it does not parse: what is not ASCII in it
        # (full-width digits and separators) is no character of that reading (h67f).
        texts += (with_float_digits(value.decode(e, "replace")) for e in _UTF16)
    unescaped = _unescaped(text) if b"\\" in value else None
    names_base64 = _names_base64(value, unescaped)
    parsed: Any = _parsed(value) if parse or names_base64 else None
    if parsed is not None:
        texts.append(parsed)
        decoded = _base64_data(parsed, value if names_base64 else None)
        if decoded is None:
            return True  # unsure: taken to hold a card number (its bytes are not kept)
        texts.extend(decoded)
    elif names_base64:
        return True
    if unescaped is not None and not (parse and parsed is not None):
        texts.append(with_float_digits(unescaped))
    return contains_card_number(texts)


_UTF16 = ("utf-16-le", "utf-16-be")


def _names_base64(value: bytes, unescaped: str | None) -> bool:
    """Does the record name ``data_base64`` or ``datacontentencoding`` (CloudEvents 0.3's
    base64 data) anywhere (escaped, or in UTF-16 and the like)?"""
    return any(
        name in value
        or (unescaped is not None and name.decode() in unescaped)
        or (b"\x00" in value and name in value.replace(b"\x00", b""))
        for name in (b"data_base64", b"datacontentencoding")
    )


def _parsed(value: bytes) -> Any:
    """The value as JSON: orjson, else the stdlib parser the CloudEvents SDK uses, which
    also takes NaN, Infinity, 1e400 and UTF-16 or UTF-32 bytes (a record orjson refuses
    may still decode as a command, or carry base64 data a replay would send)."""
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(value)
    except (ValueError, RecursionError):  # (UnicodeDecodeError is a ValueError)
        return None


def _base64_data(parsed: Any, value: bytes | None = None) -> list[str] | None:
    """The decoded ``data_base64`` of a structured record (as text), if it has one: what
    a replay would send, card number and all, in a form no text scan reads. Decoded as
    the CloudEvents SDK decodes it (characters outside the alphabet, line breaks
    included, are skipped), and read even where the SDK would refuse its padding.
    ``value`` (the record's bytes): every such value in it too, a key given twice
    included (a parser keeps the last), and a CloudEvents 0.3 `data` its
    `datacontentencoding` says is base64 (the SDK decodes it; review finding). None:
    unsure (nested too deep to walk)."""
    encoded = parsed.get("data_base64") if isinstance(parsed, dict) else None
    found = [encoded] if isinstance(encoded, str) else []
    if value is not None:
        every = _every_base64_value(value)
        if every is None:
            return None  # unsure (see _every_base64_value)
        found += [v for v in every if v not in found]
    return [text for item in found for text in _base64_texts(item)]


def _every_base64_value(value: bytes) -> list[str] | None:
    """Each string under ``data_base64`` anywhere in the JSON, and each string ``data``
    of an object naming base64 as its ``datacontentencoding`` (any of them: the SDK keeps
    the last; stdlib parser: a hook sees every pair, those of a key given twice too).
    None: nested too deep for it to walk (orjson parsed it): unsure."""
    found: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        base64_data = any(
            k == "datacontentencoding" and isinstance(v, str) and "base64" in v.lower()
            for k, v in items
        )
        for key, item in items:
            if isinstance(item, str) and (key == "data_base64" or (key == "data" and base64_data)):
                found.append(item)
        return dict(items)

    try:
        json.loads(value, object_pairs_hook=pairs)
    except RecursionError:
        return None
    except ValueError:  # (UnicodeDecodeError too) not JSON: nothing it names is decoded
        pass
    return found


def _base64_texts(encoded: str) -> list[str]:
    """One base64 string decoded as texts for the scans (see _base64_data)."""
    # As the SDK's decoder reads it (padding that completes no quad skipped, as all else
    # outside the alphabet).
    texts = _decoded_texts(_decoded(_NOT_BASE64.sub("", encoded)))
    # A padding that completes one ends what the SDK decodes; whatever follows it (base64
    # of its own, at any alignment) is as plain to anyone who reads the record: the runs
    # between paddings, each decoded at each of the four alignments (review finding:
    # "QQ==" + a card's base64). Runs too short to hold a card number are left out, so
    # that a string of paddings costs no more than one decode per alignment.
    runs = [run for run in _PADDING.split(_NOT_BASE64_OR_PAD.sub("", encoded)) if len(run) >= 16]
    if len(runs) > 1 or (runs and "=" in encoded.rstrip("= \t\r\n")):
        for shift in range(4):
            text = "\n".join(_decoded(run[shift:]) for run in runs)
            texts += _decoded_texts(text)
    return texts


def _decoded(chunk: str) -> str:
    """Base64 (alphabet only) decoded as text; a character more than any padding
    completes is left out."""
    if len(chunk) % 4 == 1:
        chunk = chunk[:-1]
    decoded = base64.b64decode(chunk + "=" * (-len(chunk) % 4))
    return decoded.replace(b"\x00", b"").decode("utf-8", "replace")


def _decoded_texts(text: str) -> list[str]:
    return [with_float_digits(text), with_float_digits(_unescaped(text))]


# What base64.b64decode skips unless validating (everything outside the alphabet); the
# same keeping the padding (to split the runs at); the padding.
_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/]")
_NOT_BASE64_OR_PAD = re.compile(r"[^A-Za-z0-9+/=]")
_PADDING = re.compile(r"=+")


def security_code_outside_data(rec: Inbound, event: CloudEvent) -> str | None:
    """A card security code the parsed data does not show, in what a parked command
    keeps: an attribute (an extension: a binary header, a structured top-level member),
    an earlier value of a repeated key, or JSON inside a string (escapes resolved)."""
    found = security_code_at(event.get_attributes())
    if found is not None:
        return found
    tracestate = event.get_extension("tracestate")
    if tracestate:
        # Its members are key=value pairs too, passed on with the outcome: "cvc=737".
        members = tracestate_members(tracestate)
        found = security_code_at(dict(members)) if members else None
        if found is not None:
            return f"tracestate {found}"
    value = rec.value or b""
    text = value.decode("utf-8", "replace")
    found = text_security_code_key(text)
    if found is None and b"\\" in value:
        found = text_security_code_key(_unescaped(text))
    if found is None and _key_holds_security_code(rec.key):
        found = "the record key"  # (the tenant, when no tenantid names one)
    headers = rec.headers
    if found is None and (
        b"\x00" in b"".join(headers.values()) or len(set(map(str.lower, headers))) != len(headers)
    ):
        # UTF-16, or an extension given twice in two cases (the SDK keeps the last):
        # each header on its own, as a dead letter's are read.
        found = _header_security_code(rec)
    return found or _header_text_security_code(rec)


def _header_text(value: bytes) -> str:
    """A header's value as text for the security-code scans: UTF-16 by its byte-order
    mark (Java's UTF_16 writes one), else UTF-8 without NULs (UTF-16 without a mark, a
    NUL beside each character) or its own mark."""
    if value[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return value.decode("utf-16", "replace")
    return value.replace(b"\x00", b"").decode("utf-8", "replace").removeprefix("\ufeff")


# CloudEvents attributes that make a command's request (and its identity): kept on a
# park whatever they hold (see without_code_headers).
_REQUEST_ATTRIBUTES = frozenset(
    {"specversion", "id", "source", "type", "time", "subject", "datacontenttype",
     "dataschema", "tenantid", "idempotencykey"}
)  # fmt: skip


def kept_attributes_hold_code(rec: Inbound, attributes: Mapping[str, Any], raw: Any) -> bool:
    """Does a card security code sit where a park or an answer of the command keeps it,
    beyond its parsed data (which its request hash covers): the record key, an attribute
    that makes the request, (structured mode, whose body is parked as it came) any
    attribute, a header the park keeps (one the decoder did not read: given twice, in
    structured mode, in UTF-16), or the value's text (an earlier value of a key given
    twice)?"""
    if _value_text_holds_other_codes(rec, raw):
        return True
    if any(
        _header_holds_code(name, value)
        for name, value in without_code_headers(kept_headers(rec.headers)).items()
    ):
        return True
    structured = is_structured(rec.headers)
    for name, value in attributes.items():
        if not structured and name.lower() not in _REQUEST_ATTRIBUTES:
            continue
        text = str(value)
        members = tracestate_members(text) if name == "tracestate" else None
        if (
            security_code_at({name: text})
            or _holds_security_code_text(text)
            or (members and security_code_at(dict(members)))
        ):
            return True
    return bool(rec.key) and _holds_security_code_text(key_str(rec.key))


def _value_text_holds_other_codes(rec: Inbound, raw: Any) -> bool:
    """The record value's text (escapes resolved too) holds a card security code its
    parsed data does not (an earlier value of a key given twice). One in JSON inside a
    string of the data is in the data (its request hash covers it, its park keeps it)."""
    value = rec.value or b""
    if b'"' not in value:
        return False
    text = _header_text(value)
    found = security_codes_in_text(text)
    if "\\" in text:
        found |= security_codes_in_text(_unescaped(text))
    if not found:
        return False
    found -= security_codes_at(raw)
    return bool(found and found - security_codes_in_strings(raw, unescape=_unescaped))


def _key_holds_security_code(key: bytes | None) -> bool:
    """The record key holds a card security code (as :func:`_holds_security_code_text`
    reads it). A key with neither a quote nor a backslash (a tenant id) holds no JSON
    member, nor one once escapes are resolved: no need to decode it."""
    if not key or (b'"' not in key and b"\\" not in key):
        return False
    return _holds_security_code_text(key_str(key))


def _holds_security_code_text(text: str) -> bool:
    """Does this text hold a JSON member naming a card security code (escapes resolved;
    NULs dropped: UTF-16 read as UTF-8)?"""
    if "\x00" in text and _holds_security_code_text(text.replace("\x00", "")):
        return True
    return text_security_code_key(text) is not None or (
        "\\" in text and text_security_code_key(_unescaped(text)) is not None
    )


def safe_tenant(text: str) -> str:
    """A tenant as a rejection of a command holding card data may name it (cut, then
    redacted: a cut could make a card number of a longer run of digits)."""
    if _holds_security_code_text(text):
        return UNNAMED_TENANT
    return redact_card_numbers(text[:ID_MAX_CHARS]) or UNNAMED_TENANT


def safe_id(text: str) -> str:
    """A command id as such a rejection may name it (a digest when it holds a code)."""
    return digest(text) if _holds_security_code_text(text) else redact_card_numbers(text)


def safe_type(text: str, max_chars: int = 128) -> str:
    """A command type as such a rejection may name it (cut, then redacted)."""
    if _holds_security_code_text(text):
        return "unknown"
    return redact_card_numbers(text[:max_chars])


def without_code_headers(headers: Mapping[str, bytes]) -> dict[str, bytes]:
    """The headers without any extension header holding a card security code (one naming
    one, JSON naming one in its value, a trace state member). Never an attribute that
    makes the request (id, type, tenant, key, ...): a re-drive must send the very one."""
    return {
        name: value
        for name, value in headers.items()
        if name[:3].lower() != "ce_"
        or name[3:].lower() in _REQUEST_ATTRIBUTES
        or not _header_holds_code(name, value)
    }


def _header_holds_code(name: str, value: bytes) -> bool:
    """Does this header hold a card security code: as an extension naming one, JSON
    naming one in its value, or a trace state member?"""
    text = _header_text(value)
    members = tracestate_members(text) if name.lower() == "ce_tracestate" else None
    return bool(
        security_code_at({name[3:] if name[:3].lower() == "ce_" else name: text})
        or _holds_security_code_text(text)
        or (members and security_code_at(dict(members)))
    )


def _header_text_security_code(rec: Inbound) -> str | None:
    """A card security code in JSON text inside a kept header's value (``ce_note:
    {"card_cvc":"737"}``): a binary-mode attribute's value, which a parked or dead-lettered
    command keeps as it came. (Structured mode has it in the value's text.)"""
    if b'"' not in b"".join(rec.headers.values()):
        return None  # no value with a JSON member, kept or not (nearly every command)
    for name, value in kept_headers(rec.headers).items():
        if b'"' not in value:
            continue  # no JSON member (the common case: no decoding)
        text = _header_text(value)
        found = text_security_code_key(text)
        if found is None and "\\" in text:
            found = text_security_code_key(_unescaped(text))
        if found is not None:
            return f"{name} {found}"
    return None


def _header_security_code(rec: Inbound) -> str | None:
    """A card security code in a kept header of a record that did not decode: an
    extension naming one (``ce_cardcvc: 737``), a trace state member (``cvc=737``), or JSON
    text in a value."""
    if rec.key and _holds_security_code_text(key_str(rec.key)):
        return "the record key"
    named: dict[str, str] = {}
    for name, value in kept_headers(rec.headers).items():
        text = _header_text(value)
        if name[:3].lower() == "ce_":
            named[name[3:]] = text
        if name.lower() == "ce_tracestate":
            members = tracestate_members(text)
            if members and security_code_at(dict(members)) is not None:
                return f"{name} {security_code_at(dict(members))}"
    return security_code_at(named) or _header_text_security_code(rec)


def raw_holds_security_code(rec: Inbound) -> bool:
    """A record that did not decode, holding a member that reads as a card security code
    (as JSON where it parses, as text, and with JSON escapes resolved, where not), or a
    header that holds one."""
    if _header_security_code(rec) is not None:
        return True
    value = rec.value or b""
    text = value.decode("utf-8", "replace")
    # The text too when it parses: a repeated key keeps only its last value parsed, and
    # JSON inside a string is found once its escapes are resolved.
    if text_holds_security_code(text) or text_holds_security_code(_unescaped(text)):
        return True
    if b"\x00" in value and text_holds_security_code(
        value.replace(b"\x00", b"").decode("utf-8", "replace")
    ):
        return True  # UTF-16 and the like
    if b'"data_base64"' in value or b'"datacontentencoding"' in value:
        with contextlib.suppress(orjson.JSONDecodeError):
            decoded = _base64_data(orjson.loads(value), value)
            if decoded is None or any(text_holds_security_code(t) for t in decoded):
                return True
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError:
        try:  # what the decoder (stdlib json) reads and orjson does not: NaN, 1e400
            parsed = json.loads(value)
        except ValueError:
            return False
        except RecursionError:
            # Nested past the parser's depth: the text scans above read all of it but a
            # trace state's members ("cvc=737"); unsure of those, so only without one,
            # however spelled (JSON escapes, UTF-16 or -32; review finding).
            plain = value.replace(b"\x00", b"").decode("utf-8", "replace")
            return any(
                "tracestate" in t.lower()
                for t in (text, _unescaped(text), plain, _unescaped(plain))
            )
    if isinstance(parsed, dict) and isinstance(parsed.get("tracestate"), str):
        # A structured command's trace state: its members are key=value pairs ("cvc=737").
        members = tracestate_members(parsed["tracestate"])
        if members and security_code_at(dict(members)) is not None:
            return True
    return security_code_at(parsed) is not None


def _unescaped(text: str) -> str:
    """JSON string escapes resolved in raw text (``\\/`` included: PHP writes slashes so)."""
    return _JSON_ESCAPE.sub(_unescape, text)


def _unescape(match: re.Match[str]) -> str:
    code = match.group(1)
    return chr(int(code[1:], 16)) if code[0] == "u" else _SIMPLE_ESCAPES[code]


_JSON_ESCAPE = re.compile(r'\\(u[0-9a-fA-F]{4}|["\\/bfnrt])')


_SIMPLE_ESCAPES = {
    '"': '"',
    "\\": "\\",
    "/": "/",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
}


def digest(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return f"sha256:{digest}"


def key_str(key: bytes | None) -> str:
    return key.decode("utf-8", "replace") if key else ""

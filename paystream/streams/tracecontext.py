"""W3C trace context of commands and outcomes: plain strings, no OpenTelemetry.

A command may carry a ``traceparent`` (and ``tracestate``) CloudEvents extension: its
producer's span. The worker's span for the command (paystream/tracing.py) is that span's
child, and the command's outcome carries the worker's span as its ``traceparent``, so a
consumer of the outcome continues the same trace under it.

An outcome must be byte-identical however often it is emitted (a redelivery, a retry
answered from the idempotency table), so its ``traceparent`` cannot name a span id drawn
at random when the command runs: the span id is derived from the command record
(``command_span_id``), and the worker gives its command span that very id. The same
record processed again gives the same outcome, whether tracing is on or off on the worker
that runs it.
"""

from __future__ import annotations

import hashlib
import re

__all__ = [
    "child_traceparent",
    "command_span_id",
    "parse_traceparent",
    "tracestate_members",
    "valid_tracestate",
]

# version-traceid-parentid-flags (W3C Trace Context): lowercase hex only. Version ff is
# invalid; a later version than 00 may append fields, which a 00 reader ignores.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?\Z")
# The flags a child keeps: sampled (0x01) and random trace id (0x02, trace context level 2).
_KEPT_FLAGS = 0x03


def parse_traceparent(value: str | None) -> tuple[int, int, int] | None:
    """``(trace id, parent span id, flags)`` of a valid ``traceparent``, else None."""
    if not value:
        return None
    found = _TRACEPARENT.match(value)
    if found is None:
        return None
    version, trace_id, span_id, flags, rest = found.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    trace, span = int(trace_id, 16), int(span_id, 16)
    if trace == 0 or span == 0:
        return None
    return trace, span, int(flags, 16)


def command_span_id(
    tenant_id: str, command_id: str, id_salt: str | None, traceparent: str | None
) -> int:
    """The span id of the worker's span for a command: 64 bits of a hash of what names
    the command record (tenant, command id, the record's partition:offset) and its
    producer's span, never 0 (invalid)."""
    name = f"{tenant_id}\x1f{command_id}\x1f{id_salt or ''}\x1f{traceparent or ''}"
    digest = hashlib.blake2b(name.encode(), digest_size=8, person=b"paystream-span").digest()
    return int.from_bytes(digest, "big") or 1


def child_traceparent(
    tenant_id: str, command_id: str, id_salt: str | None, traceparent: str | None
) -> str | None:
    """The ``traceparent`` of the command's span (version 00): the producer's trace,
    the derived span id, the producer's sampled and random flags. None if the command
    carried no valid ``traceparent`` (its span is then a new trace's root)."""
    parsed = parse_traceparent(traceparent)
    if parsed is None:
        return None
    trace, _, flags = parsed
    span = command_span_id(tenant_id, command_id, id_salt, traceparent)
    return f"00-{trace:032x}-{span:016x}-{flags & _KEPT_FLAGS:02x}"


# W3C tracestate: at most 32 list members of key=value (a larger or malformed one is
# neither used nor passed on).
_TRACESTATE_MEMBER = re.compile(
    r"([a-z][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})"
    r"=([\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e])\Z"
)
_TRACESTATE_MAX_MEMBERS = 32
_TRACESTATE_MAX_CHARS = 8192


def tracestate_members(value: object) -> list[tuple[str, str]] | None:
    """The ``(key, value)`` members of a valid W3C ``tracestate``, else None."""
    if not isinstance(value, str) or not value or len(value) > _TRACESTATE_MAX_CHARS:
        return None
    pairs: dict[str, str] = {}
    for member in value.split(","):
        member = member.strip(" \t")
        if not member:
            continue
        found = _TRACESTATE_MEMBER.match(member)
        if found is None or found.group(1) in pairs:
            return None
        pairs[found.group(1)] = found.group(2)
    if not pairs or len(pairs) > _TRACESTATE_MAX_MEMBERS:
        return None
    return list(pairs.items())


# W3C: propagate at least 512 characters; past that, drop members over 128 characters,
# then members from the end. (A sender's 8 KiB would ride on every outcome and record.)
_TRACESTATE_PASSED_CHARS = 512
_TRACESTATE_LONG_MEMBER = 128


def valid_tracestate(traceparent: str | None, tracestate: object) -> str | None:
    """The ``tracestate`` an outcome passes on: the command's, as it came, when it is valid
    and goes with a valid ``traceparent`` (W3C: no trace state without a parent);
    truncated as W3C says when over 512 characters (the same input, the same result)."""
    if parse_traceparent(traceparent) is None:
        return None
    members = tracestate_members(tracestate)
    if members is None:
        return None
    text = str(tracestate)
    if len(text) <= _TRACESTATE_PASSED_CHARS:
        return text
    kept = [f"{k}={v}" for k, v in members if len(k) + 1 + len(v) <= _TRACESTATE_LONG_MEMBER]
    while kept and len(",".join(kept)) > _TRACESTATE_PASSED_CHARS:
        kept.pop()
    return ",".join(kept) or None

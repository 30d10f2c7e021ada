"""card_data's shortcuts give the answers of the loops they replace: kept headers from
remembered name sets, the NUL and quote checks over all headers at once, and the record
key's security-code check without decoding a key that holds no JSON."""

from __future__ import annotations

import re
from collections.abc import Mapping

import pytest

from paystream.agents import card_data
from paystream.agents.card_data import (
    kept_headers,
    raw_may_hold_card,
    security_code_outside_data,
)
from paystream.agents.pipeline import Inbound
from paystream.client import build_command
from paystream.settings import CloudEventsMode
from paystream.streams.codec import decode_record, encode_event

_KEPT = re.compile(r"(?i)ce_|content-type\Z").match


def _kept(headers: Mapping[str, bytes]) -> dict[str, bytes]:
    """kept_headers as it was: one regex call per name."""
    return {k: v for k, v in headers.items() if _KEPT(k)}


@pytest.mark.parametrize(
    "headers",
    [
        {"ce_id": b"1", "ce_type": b"t", "content-type": b"application/json"},
        {"ce_id": b"1", "traceparent": b"00-1", "CE_Type": b"t", "x-request-id": b"42"},
        {"Content-Type": b"a", "content-type-x": b"b", "xce_id": b"c"},
        {"uber-trace-id": b"4111111111111111"},
        {},
    ],
)
def test_kept_headers_as_before(headers: dict[str, bytes]) -> None:
    for _ in range(2):  # the second time, from the remembered name set
        kept = kept_headers(headers)
        assert kept == _kept(headers)
        assert list(kept) == list(_kept(headers))  # in order
        assert kept is not headers  # a copy: callers may change it


def test_remembered_name_sets_are_bounded() -> None:
    for n in range(card_data._KEPT_SETS + 10):
        kept_headers({f"ce_x{n}": b"1"})
    assert len(card_data._KEPT_NAMES) <= card_data._KEPT_SETS
    huge = {"ce_" + "x" * 1000: b"1", "other": b"2"}
    assert kept_headers(huge) == _kept(huge)
    assert tuple(huge) not in card_data._KEPT_NAMES


def _rec(value: bytes, headers: dict[str, bytes], key: bytes | None = b"t1") -> Inbound:
    return Inbound(key=key, value=value, headers=headers, timestamp_ms=0)


def test_raw_may_hold_card_without_headers_or_with_nuls() -> None:
    value = b'{"amount":100}'
    assert raw_may_hold_card(_rec(value, {}), {}) is False
    assert raw_may_hold_card(_rec(value, {"ce_id": b"1"}), {"ce_id": b"1"}) is False
    assert raw_may_hold_card(_rec(value, {"ce_id": b"1\x002"}), {"ce_id": b"1\x002"}) is True
    assert raw_may_hold_card(_rec(value, {"ce\x00id": b"1"}), {"ce\x00id": b"1"}) is True
    card = {"ce_note": b"4111 1111 1111 1111"}
    assert raw_may_hold_card(_rec(value, card), card) is True


def _event_rec(key: bytes | None, **extra: bytes) -> tuple[Inbound, object]:
    event = build_command(
        "payment.create",
        "t1",
        {"amount": 100, "currency": "USD", "payment_method_token": "pm_card_visa"},
        command_id="c1",
    )
    record = encode_event(event, b"t1", CloudEventsMode.BINARY)
    headers = {**dict(record.headers), **extra}
    rec = Inbound(key=key, value=record.value, headers=headers, timestamp_ms=0)
    return rec, decode_record(rec.key, rec.value, rec.headers)


@pytest.mark.parametrize(
    ("key", "extra", "found"),
    [
        (b"t1", {}, None),
        (None, {}, None),
        (b'{"cvc":"737"}', {}, "the record key"),
        (b'{\\"cvc\\":\\"737\\"}', {}, "the record key"),  # read with escapes resolved
        (b"{cvc:737}", {}, None),  # neither quote nor backslash: not decoded
        (b'{"a":"{\\"cvc\\":\\"737\\"}"}', {}, "the record key"),  # JSON in a string
        (b"t1", {"ce_note": b'{"card_cvc":"737"}'}, "ce_note card_cvc"),
        (b"t1", {"x-note": b'{"card_cvc":"737"}'}, None),  # not kept, not read
        (b"t1", {"ce_note": b'{"amount":"737"}'}, None),
    ],
)
def test_security_code_outside_data(
    key: bytes | None, extra: dict[str, bytes], found: str | None
) -> None:
    rec, event = _event_rec(key, **extra)
    assert security_code_outside_data(rec, event) == found  # type: ignore[arg-type]


class _FirstValueHeaders(Mapping[str, bytes]):
    """A Kafka-style multi-valued header list: ``[]`` gives a name's first value,
    ``items()`` every pair (session 31 review)."""

    def __init__(self, pairs: list[tuple[str, bytes]]) -> None:
        self.pairs = pairs

    def __getitem__(self, name: str) -> bytes:
        return next(v for k, v in self.pairs if k == name)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return (k for k, _ in self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def items(self):  # type: ignore[no-untyped-def,override]
        return list(self.pairs)


def test_kept_headers_of_another_mapping_are_read_as_listed() -> None:
    headers = _FirstValueHeaders([("ce_note", b"x"), ("ce_note", b"4111 1111 1111 1111")])
    assert kept_headers(headers) == _kept(headers) == {"ce_note": b"4111 1111 1111 1111"}

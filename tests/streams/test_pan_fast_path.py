"""The card scans' fast paths give the very answers of the full scans they skip.

``raw_may_contain_card_number`` answers ASCII records from byte marks (``_ascii_may_contain``);
the security-code scans skip text with no 3- or 4-digit member (``_CODE_VALUE``) and dicts
whose key set names no code (``_keys_name_no_code``). Each is compared here with the full
scan, on the bench's kind of command and on what sits at the edges of each proof.
"""

from __future__ import annotations

import json
import random
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

import pytest

from paystream.streams import pan
from paystream.streams.pan import (
    raw_may_contain_card_number,
    security_code_at,
    security_codes_in_text,
    text_security_code_key,
)


def _full_scan(*parts: bytes) -> bool:
    """raw_may_contain_card_number without its fast path."""
    return pan._full_raw_scan(parts)


_VALUE = (
    b'{"payment_id":"bd8cc965-b751-4c4e-aaed-e15384814b3f","amount":3749,"currency":"USD",'
    b'"description":"order 5","metadata":{"order_id":"ord-5","channel":"web"},'
    b'"payment_method_token":"pm_card_visa"}'
)
_NAMES = b"ce_id\x00ce_source\x00ce_specversion\x00ce_tenantid\x00ce_time\x00ce_type"


def _command(
    value: bytes = _VALUE, ce_id: bytes = b"8c10ebe3-3ba2-44c1-b279-39a069f04cc4"
) -> tuple[bytes, ...]:
    return (
        b"bench-t006",
        value,
        _NAMES,
        ce_id,
        b"/paystream/bench",
        b"1.0",
        b"bench-t006",
        b"2026-12-02T07:58:59.976580Z",
        b"com.paystream.command.payment.create",
    )


def test_a_bench_command_is_answered_by_the_fast_path() -> None:
    parts = _command()
    assert pan._ascii_may_contain(b"\x00".join(parts)) is False
    assert raw_may_contain_card_number(*parts) is False


CASES: dict[str, tuple[bytes, ...]] = {
    "uuid with a long digit run": _command(ce_id=b"8c10ebe3-3ba2-44c9-9279-399069f04cc4"),
    "card in a header": _command(ce_id=b"4111111111111111"),
    "grouped card in the value": _command(_VALUE.replace(b"order 5", b"4111 1111 1111 1111")),
    "dashed card": _command(_VALUE.replace(b"order 5", b"4111-1111-1111-1111")),
    "dotted card": _command(_VALUE.replace(b"order 5", b"4111.1111.1111.1111")),
    "amex": _command(_VALUE.replace(b"order 5", b"3782 822463 10005")),
    "not luhn": _command(_VALUE.replace(b"order 5", b"4111111111111112")),
    "row of years": _command(_VALUE.replace(b"order 5", b"2023 2024 2025 2026")),
    "exponent in the value": _command(_VALUE.replace(b"3749", b"4.111111111111111e15")),
    "exponent, upper case": _command(_VALUE.replace(b"3749", b"4.111111111111111E+15")),
    "exponent not a card": _command(_VALUE.replace(b"3749", b"1e5")),
    "exponent after spaces": _command(_VALUE.replace(b":3749", b": \n\t-4.111111111111111e15")),
    "exponent in an array": _command(_VALUE.replace(b"3749", b"[1,4.111111111111111e15]")),
    "exponent as a header value": _command(ce_id=b"4.111111111111111e15"),
    "id that reads as an exponent": _command(ce_id=b"5e71b71c-7853-4bc4-9f0c-0c3a4d1b5e2a"),
    "long fraction": _command(_VALUE.replace(b"3749", b"4111111111111110.99999999")),
    "long fraction, not a card": _command(_VALUE.replace(b"3749", b"4111111111111112.5")),
    # Only the first part's start is an exponent: the scan's own search (without the NUL
    # with_float_digits puts first) finds none, so its digits are not added.
    "exponent first only": (b"4.111111111111111e15", b"{}"),
    "exponent first and later": (b"4.111111111111111e15", b'{"a":1e5}'),
    "exponent first, later what only looks like one": (b"4.111111111111111e15", b"[1ex]"),
    "control between digits": _command(_VALUE.replace(b"order 5", b"4111\x011111 1111 1111")),
    "escape": _command(_VALUE.replace(b"order 5", b"\\u0034111111111111111")),
    "non-ascii digits": _command(
        _VALUE.replace(b"order 5", "\uff14\uff11\uff11\uff11111111111111".encode())
    ),
    "not utf-8": _command(_VALUE.replace(b"order 5", b"\xff4111111111111111")),
    "card touching the end": (b"x", b"4111111111111111"),
    "card touching a NUL": (b"4111111111111111", b"x"),
    "empty": (b"",),
    "nothing": (),
}


@pytest.mark.parametrize("parts", list(CASES.values()), ids=list(CASES))
def test_the_fast_path_answers_as_the_full_scan(parts: tuple[bytes, ...]) -> None:
    assert raw_may_contain_card_number(*parts) is _full_scan(*parts)


def test_the_fast_path_answers_as_the_full_scan_on_random_records() -> None:
    """Random pieces of what each proof turns on: digits, separators, anchors, "e",
    spaces and line breaks, quotes, controls, card numbers and exponent numbers."""
    rng = random.Random(31)
    pieces = [
        "4111111111111111", "4111 1111 1111 1111", "4111-1111-1111-1111", "4111_1111_1111_1111",
        "4111.1111.1111.1111", "3782 822463 10005", "4.111111111111111e15", "1e5", "5e71",
        "4111111111111110.99999999", "-2.5E+3", "4111+1111+1111+1111", "4111%201111%201111%201111",
        "2026-12-04T15:00:00+00:00", "%20", "1111+",
    ]  # fmt: skip
    alphabet = '0123456789 \t\n\r\x0b\x0c_./-:,[\x00eEx"{}+\x01\\'

    def piece() -> str:
        r = rng.random()
        if r < 0.15:
            return rng.choice(pieces)
        if r < 0.3:
            return "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 20)))
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))

    for _ in range(5000):
        parts = [
            "".join(piece() for _ in range(rng.randint(0, 6))).encode()
            for _ in range(rng.randint(1, 4))
        ]
        assert raw_may_contain_card_number(*parts) is _full_scan(*parts), parts


def test_span_runs_are_whole_runs() -> None:
    marked = bytes([0, *[1] * 13, 0, *[1] * 12, 0, *[1] * 20])
    assert list(pan._span_runs(marked)) == [(1, 14), (28, 48)]


# Security codes.


def _members_of(text: str) -> set[tuple[str, str]]:
    """security_codes_in_text without its first look."""
    return {
        (m.group(1), m.group(2))
        for m in pan._CODE_MEMBER.finditer(pan._ascii_digits(text))
        if pan._names_security_code(m.group(1))
    }


@pytest.mark.parametrize(
    "text",
    [
        '{"cvc":"737"}',
        '{"card_cvv2" :  " 1234"}',
        '{"cvc":737}',
        '{"cvc":"\uff17\uff13\uff17"}',  # fullwidth digits, as parsed
        '{"amount":3749,"cvc":"73"}',
        '{"amount":37491}',
        '{"cvc":"73712"}',
        '{"c_v_v":\n"123"}',
        '{"securityCode":"0123","id":"x"}',
        '{"amount":100}',
        '"cvc":"737"',
        "no member",
    ],
)
def test_text_scans_answer_as_the_full_member_scan(text: str) -> None:
    assert security_codes_in_text(text) == _members_of(text)
    first = next(iter(sorted(_members_of(text))), None)
    assert (text_security_code_key(text) is None) is (first is None)


def _members(value: Any) -> str | None:
    return next((key for key, _ in pan._security_code_members(value)), None)


class _Attributes(dict[str, Any]):
    pass


@pytest.mark.parametrize(
    "value",
    [
        {"specversion": "1.0", "id": "x", "time": datetime(2026, 1, 1, tzinfo=UTC)},
        {"amount": 100, "metadata": {"order": "1", "cvc": "737"}},
        {"amount": 100, "metadata": {"order": "1", "note": "737"}},
        {"items": [{"sku": "a"}, {"card_cvv2": 1234}]},
        [{"cvc": "737"}],
        {"cvc": "12345"},
        {"cvc": True},
        {1: "737", "x": {2.0: "1234"}},
        {"x": ({"cvc": "737"},)},  # a tuple: the full walk
        {"x": _Attributes(cvc="737")},  # a dict subclass: the full walk
        {"x": OrderedDict(cvc="737")},
        {"x": b"737", "cvc": b"737"},
        "737",
        None,
    ],
)
def test_security_code_at_answers_as_the_full_walk(value: Any) -> None:
    for _ in range(2):  # the second time, from the remembered key sets
        assert security_code_at(value) == _members(value)


def test_remembered_key_sets_are_bounded() -> None:
    for n in range(pan._CACHED_SETS + 10):
        security_code_at({f"k{n}": 1})
    assert len(pan._NAMING_KEY_SETS) <= pan._CACHED_SETS
    security_code_at({"x" * 1000: 1, "cvc": 737})
    assert ("x" * 1000, "cvc") not in pan._NAMING_KEY_SETS
    assert security_code_at({"x" * 1000: 1, "cvc": 737}) == "cvc"


def test_same_keys_with_other_values_are_still_read() -> None:
    keys = {"amount": 100, "currency": "USD", "cvc": "n/a"}
    assert security_code_at(keys) is None
    assert security_code_at({**keys, "cvc": "737"}) == "cvc"
    assert security_code_at(json.loads('{"a": {"b": [{"cvc": " 737 "}]}}')) == "cvc"


def test_keys_that_are_not_text_are_left_to_the_full_walk() -> None:
    """A key whose text cannot even be made (too many digits) is read as the full walk
    reads it: only beside a value that looks like a code (session 31 review)."""
    assert security_code_at({10**5000: "x"}) is None
    assert security_code_at({1: "737", "cvc": "737"}) == "cvc"

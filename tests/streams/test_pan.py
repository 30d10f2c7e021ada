"""The card-number guard: catches how people write card numbers, never ids."""

from __future__ import annotations

import json
import signal
import uuid
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from paystream.streams import pan
from paystream.streams.pan import (
    REDACTED,
    contains_card_number,
    luhn_valid,
    raw_may_contain_card_number,
    redact_card_numbers,
    security_code_at,
    text_security_code_key,
)


def _luhn_complete(prefix: str) -> str:
    for d in "0123456789":
        if luhn_valid(prefix + d):
            return prefix + d
    raise AssertionError


@pytest.mark.parametrize(
    "text",
    [
        "4242424242424242",
        "4242 4242 4242 4242",
        "4242-4242-4242-4242",
        "3782 822463 10005",
        "pay with 4000056655665556 please",
        {"nested": ["x", "5555555555554444"]},
        4242424242424242,
        4242424242424242.0,
        "4111.1111.1111.1111",
        "4111/1111/1111/1111",
        "4111\u00a01111\u00a01111\u00a01111",
        "4111   1111   1111   1111",
        "3782.822463.10005",
        "3056 930902 5904",  # Diners International, as printed
        [[[["4242424242424242"]]]],
        # space and dash groups touching a dot or a slash
        "Card No.4111 1111 1111 1111",
        "4111 1111 1111 1111/12/27",
        "4111-1111-1111-1111/123",
        "cards/4111 1111 1111 1111",
        "the card is 4111.1111.1111.1111.",
        # letters touching the groups; other whitespace, underscores and invisible
        # characters as the separator (all once stored as plain customer data)
        "card4111 1111 1111 1111",
        "amex3782 822463 10005",
        "4111\t1111\t1111\t1111",
        "4111\u20091111\u20091111\u20091111",  # thin space
        "4111\u202f1111\u202f1111\u202f1111",  # narrow no-break space
        "4111_1111_1111_1111",
        "4111\u200b1111\u200b1111\u200b1111",  # zero-width space
        # touching an underscore; other dashes
        "card_4111-1111-1111-1111",
        "4111-1111-1111-1111_visa",
        "pan_4111.1111.1111.1111",
        "4111\u20131111\u20131111\u20131111",  # en dash
        "4111\u20111111\u20111111\u20111111",  # non-breaking hyphen
        "4111\u22121111\u22121111\u22121111",  # minus sign
        # punctuation dashes beside space and dot groups; form feeds; other digits
        "my card 4111 1111 1111 1111\u2014exp 12/27",
        "card\u20144111 1111 1111 1111",
        "4111 1111 1111 1111\u00ad",
        "4111.1111.1111.1111\u2014x",
        "4111\x0c1111\x0c1111\x0c1111",
        "\uff15" * 12 + "\uff14" * 4,  # fullwidth 5555555555554444
        "".join(chr(0x660 + int(d)) for d in "4111111111111111"),  # Arabic-Indic
        # brands outside 3-6: Mir, RuPay/UnionPay 81, Troy, UATP as 4-4-4-3
        "2200 7001 2345 6781",
        "8171 0012 3456 7893",
        "9792 0012 3456 7890",
        "1234 5678 9012 347",
        # followed by its CVC or expiry
        "4111 1111 1111 1111 123",
        "4111 1111 1111 1111 12/27",
        # spaces as form and URL encoding write them
        "4242+4242+4242+4242",
        "4242%204242%204242%204242",
        "note=card+4242+4242+4242+4242&x=1",
        "name%204242%204242%204242%204242",
        "3782+822463+10005",
    ],
)
def test_card_numbers_are_found(text: object) -> None:
    assert contains_card_number(text)


def test_a_value_nested_deeper_than_the_recursion_limit_is_scanned() -> None:
    deep: list[object] = ["4242424242424242"]
    for _ in range(5_000):
        deep = [deep, {"k": 1}]
    assert contains_card_number(deep)
    assert not contains_card_number([[[[[[["no card"]]]]]]] * 1000)


@pytest.mark.parametrize(
    "text",
    [
        "4242424242424241",
        "pm_card_visa",
        "order-2026-11-27",
        "+1 415 555 0100",
        "12345",
        "4242 4242-4242 4242",
        # UUIDs whose digits fall into 4-4-4-3 dash groups behind a hex letter
        "abcd3041-1476-4166-932e-0123456789ab",
        "ffff0033-8272-4796-9045-3abcdef01234",
        "order_4111_1111_1111_1111",  # underscore groups touching a word: an id
        "4111\n1111\n1111\n1111",  # a column of 4-digit values (years, hours)
        "2023+2024+2025+2026",  # form-encoded spaces hold to the same rules
        "4242+4242+4242+4241",
        "2026-12-04T15:00:00+00:00",
        "1234%205678",
        # rows of years: Luhn-valid, but no card starts so
        "2023 2024 2025 2026",
        "0830 1830 0830 1830",  # times (Luhn-valid: no card starts with 0)
        "1991\t1992\t1993\t1994",
        "".join(chr(0x660 + int(d)) for d in "4111111111111112"),  # Luhn-invalid
        "abcd3041\u20131476\u20134166\u2013932e",  # dash kinds stand alone too
        True,
        1999,
        "v1.4111.1111.1111.1111",
        "1.4111.1111.1111.1111.2",
        "2026/11/30",
        "192.168.100.200",
    ],
)
def test_other_things_are_not(text: object) -> None:
    assert not contains_card_number(text)


@given(st.text(alphabet="0123456789", min_size=12, max_size=18))
def test_every_luhn_valid_digit_run_of_card_length_is_caught(prefix: str) -> None:
    assert contains_card_number(f"note: {_luhn_complete(prefix)} thanks")


@given(st.uuids())
def test_uuids_never_trip_it(value: uuid.UUID) -> None:
    digits = "".join(c if c.isdigit() else str(ord(c) % 10) for c in str(value).replace("-", ""))
    all_digit_uuid = f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"
    assert not contains_card_number(str(value))
    assert not contains_card_number(all_digit_uuid)


_CARDS = ["4242424242424242", "4242 4242 4242 4242", "3782-822463-10005", "5555555555554444"]
_with_card = st.builds(
    lambda before, card, after: before + card + after, st.text(), st.sampled_from(_CARDS), st.text()
)
_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.sampled_from([4242424242424242, -5555555555554444, 4242424242424242.0])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
    | _with_card,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text() | _with_card, inner, max_size=4)
    ),
    max_leaves=12,
)


@given(_json_values)
def test_the_raw_prefilter_never_misses_what_the_parsed_scan_finds(value: Any) -> None:
    """The pipeline skips the parsed scan when the raw bytes have no candidate, so every
    JSON spelling of a value holding a card number must make the prefilter say True."""
    if not contains_card_number(value):
        return
    for raw in (
        orjson.dumps(value),
        json.dumps(value).encode(),  # ASCII-escaped: backslashes
        json.dumps(value, ensure_ascii=False, indent=1).encode(),
    ):
        assert raw_may_contain_card_number(b"tenant-1", raw, b"ce_id\x00ce_type")


@pytest.mark.parametrize(
    "parts",
    [
        (b'{"note": "\\u0034242424242424242"}',),  # an escape could spell the digits
        (b"\xff\xfe",),  # not UTF-8
        (b"{}", b"ce_4242424242424242"),  # a header name becomes an attribute name
    ],
)
def test_the_raw_prefilter_defers_when_it_cannot_tell(parts: tuple[bytes, ...]) -> None:
    assert raw_may_contain_card_number(*parts)


@pytest.mark.parametrize(
    "raw",
    [b'{"n": 4.242424242424242e15}', b'{"n": 4242424242424242E+0}', b'{"n": 42424242424242.42e2}'],
)
def test_the_raw_prefilter_sees_a_card_number_written_with_an_exponent(raw: bytes) -> None:
    """The digits of 4.242424242424242e15 are not in its text, but they are in the float
    the parsed scan sees."""
    assert contains_card_number(orjson.loads(raw))
    assert raw_may_contain_card_number(b"tenant-1", raw)


def test_the_raw_prefilter_clears_ordinary_commands() -> None:
    raw = orjson.dumps({"customer_id": "c1", "amount": {"amount": 1999, "currency": "EUR"}})
    assert not raw_may_contain_card_number(b"tenant-1", raw, b"ce_id", b"2026-11-28T00:00:00Z")


def test_the_raw_prefilter_sees_a_long_number_whose_float_rounds_to_a_card() -> None:
    raw = b'{"x": 4111111111111110.99999999}'  # parses to 4111111111111111.0
    assert contains_card_number(orjson.loads(raw))
    assert raw_may_contain_card_number(raw)


def test_the_digit_table_keeps_only_digits() -> None:
    """Hostile text with a million distinct characters must not grow it for good."""
    before = len(pan._DIGITS)
    assert not contains_card_number("".join(chr(0x4E00 + i) for i in range(5000)))
    assert len(pan._DIGITS) == before


@pytest.mark.parametrize(
    "value",
    [
        {"cvc": "123"},
        {"CVV2": 4321},
        {"card_cvc": " 737 "},
        {"Card-Security-Code": "1234"},
        {"CV2": "123"},
        {"ccv": "123"},
        {"card_cvd": "123"},
        {"csc": "1042"},
        {"cardCode": "123"},  # Authorize.Net's name for it
        {"card_code": "123"},
        {"c_v_v": "123"},  # letters apart
        {"C.V.V": "123"},
        {"CAV-2": "123"},
        {"cardCvv2": "123"},
        {"cardcvv": "123"},
        {"card_cvNumber": "123"},  # CyberSource's name for it
        {"CVNumber": "123"},
        {"cardcv2": "123"},
        {"CARDCSC": "123"},
        {"cvvCode": "123"},
        {"order": {"payment": [{"security_code": "999"}]}},
    ],
)
def test_a_security_code_is_found_by_its_key(value: object) -> None:
    assert security_code_at(value) is not None
    assert pan.text_holds_security_code(json.dumps(value)[:-1])  # cut: not JSON any more


@pytest.mark.parametrize(
    "value",
    [
        {"cvc": "12345"},  # not 3-4 digits: not a security code
        {"cvc": "abc"},
        {"cvc": True},
        {"pincode": "560001"},  # an Indian postal code
        {"incident": "123"},
        {"cid": "1042"},  # a customer, client or campaign id far more often
        {"amt_rcvd": "500"},  # "received", not "cvd"
        {"date_rcvd": "0312"},
        {"mcc_value": "5411"},  # not "ccv"
        {"svc_v2_port": "8080"},
        {"acc_value": "1234"},
        {"rcv_cnt": "120"},  # received count: "rcvcnt" holds "cvc" only across words
        {"rcv_value": "1500"},
        {"csc_id": "1042"},  # a customer service centre's
        {"cvd_amount": "250"},  # countervailing duty
        {"order_id": "123"},
        {"note": "cvc 123"},  # a value naming one: only keys give it away
        ["cvc", "123"],
    ],
)
def test_other_keys_and_values_are_not_security_codes(value: object) -> None:
    assert security_code_at(value) is None


def test_the_text_scan_of_a_dead_letter_takes_linear_time() -> None:
    """Spaces where a member's colon would be were tried every way: one record of a few
    tens of kilobytes held the worker's loop for seconds, and a megabyte for hours. (The
    alarm only turns a hang into a failure: it bounds nothing that a slow host needs.)"""

    def hung(*_: object) -> None:
        raise AssertionError("the scan did not end within a minute")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    try:
        hostile = '{"cv":' + " " * 200_000 + "x"
        assert not pan.text_holds_security_code(hostile)
        assert not pan.security_code_at({"k" * 1_000_000: "123"})  # a huge key, not cached
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert pan.text_holds_security_code('{"cvv" :  " 1234 "')


@pytest.mark.parametrize("sep", ["\u200b", "\u00ad", "\x00", "\x1f", "\u200b\u200b"])
def test_a_card_number_with_unseen_characters_between_its_digits_is_redacted(sep: str) -> None:
    """Detected with them removed, so redacted so: a rejection repeats what it redacts."""
    text = "order-" + sep.join("4242424242424242") + "-x"
    assert contains_card_number(text)
    assert redact_card_numbers(text) == f"order-{REDACTED}-x"


def test_redaction_keeps_what_is_around_several_card_numbers() -> None:
    text = "a 4242424242424242 b " + "\u200b".join("4000056655665556") + " c"
    assert redact_card_numbers(text) == f"a {REDACTED} b {REDACTED} c"


def test_a_card_number_in_utf16_inside_one_string_is_found() -> None:
    """UTF-16 read as UTF-8: a NUL beside each digit. NUL joins the strings of a scan, so
    two strings never run together into one number."""
    assert contains_card_number("4242424242424242".encode("utf-16-le").decode())
    assert not contains_card_number("42424242", "42424242")


def test_a_security_code_in_other_digits_is_found_in_text() -> None:
    assert text_security_code_key('{"card_cvc": "\uff17\uff13\uff17"}') == "card_cvc"
    assert text_security_code_key("cvc 737") is None  # no JSON member


@pytest.mark.parametrize(
    "text",
    [
        "\x00".join("4242424242424242") + "\x1f12",
        "4242424242424242\xad" + "\x7f".join("6011111111111117"),
        "order " + "4242424242424242\x1f12".encode("utf-16-le").decode(),
    ],
)
def test_what_detection_finds_redaction_leaves_none_of(text: str) -> None:
    assert contains_card_number(text)
    assert not contains_card_number(redact_card_numbers(text))


_UNSEEN_CHARS = st.sampled_from(["", "", "", "\x00", "\x1f", "\x7f", "\u200b", "\xad", " "])


@given(st.lists(_UNSEEN_CHARS, min_size=16, max_size=16), st.text(max_size=8))
def test_redacted_text_never_reads_as_a_card_number(seps: list[str], tail: str) -> None:
    text = "".join(d + s for d, s in zip("4242424242424242", seps, strict=True)) + tail
    assert not contains_card_number(redact_card_numbers(text))

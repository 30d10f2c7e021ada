"""Detect primary account numbers (card numbers) anywhere in a command, without echoing them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

__all__ = [
    "REDACTED",
    "contains_card_number",
    "luhn_valid",
    "raw_may_contain_card_number",
    "redact_card_numbers",
    "with_float_digits",
]

# What a card number is replaced with wherever text is kept despite holding one.
REDACTED = "[card number]"

# How card numbers are written: 13-19 contiguous digits, or 4-digit groups (Amex 4-6-5,
# Diners 4-6-4) joined by one consistent separator:
# * spaces on one line (a run of them, of any kind: tab, non-breaking, thin, ...) or an
#   invisible zero-width character; the groups may touch letters ("card4111 1111 …")
#   but not a digit or a dash. (Not newlines: a column of years or opening hours.)
# * a dash (of any kind: hyphen, en dash, minus, soft hyphen, ...) or an underscore,
#   standing alone: no letter, digit or dash touching (nor an underscore, when that is
#   the separator), so that ids such as UUIDs (8-4-4-4-12 hex) never look like a card
#   however their digits fall ("abcd3041-1476-4166-932e-…" would, if letters could);
# * a dot or a slash, more strictly still (no dot or slash before, none followed by a
#   digit after: versions, dates and paths).
# The first two may touch a dot or a slash ("No.4111 1111 …", "4111 1111 … 1111/12/27"
# with its expiry), and dash and dot groups an underscore ("card_4111-1111-…").
_DASHES = r"\-" + "\u00ad\u2010-\u2014\u2212\ufe63\uff0d"
_SPACE = r"([ \t\u00a0\u1680\u2000-\u200d\u202f\u205f\u2060\u3000\ufeff]+)"
_SPACE_START = rf"(?<![0-9{_DASHES}])"
_SPACE_END = rf"(?![0-9{_DASHES}])"
_DASH = rf"([{_DASHES}])"
_DASH_START = rf"(?<![0-9A-Za-z{_DASHES}])"
_DASH_END = rf"(?![0-9A-Za-z{_DASHES}])"
_UNDERSCORE = r"(_)"
_UNDERSCORE_START = r"(?<![0-9A-Za-z_])"
_UNDERSCORE_END = r"(?![0-9A-Za-z_])"
_DOT = r"([./])"
_DOT_START = rf"(?<![0-9A-Za-z./{_DASHES}])"
_DOT_END = rf"(?![0-9A-Za-z{_DASHES}]|[./]\d)"


def _grouped(sep: str, start: str, end: str, n: int) -> str:
    """4-4-4-4(-1..3) groups joined by ``sep`` (capture group ``n``), and 4-6-4/5 groups
    (capture group ``n + 1``)."""
    return (
        rf"{start}\d{{4}}{sep}\d{{4}}(?:\{n}\d{{4}}){{1,2}}(?:\{n}\d{{1,3}})?{end}"
        rf"|{start}\d{{4}}{sep}\d{{6}}\{n + 1}\d{{4,5}}{end}"
    )


_CANDIDATE = re.compile(
    r"(?<!\d)\d{13,19}(?!\d)"
    f"|{_grouped(_SPACE, _SPACE_START, _SPACE_END, 1)}"
    f"|{_grouped(_DASH, _DASH_START, _DASH_END, 3)}"
    f"|{_grouped(_UNDERSCORE, _UNDERSCORE_START, _UNDERSCORE_END, 5)}"
    f"|{_grouped(_DOT, _DOT_START, _DOT_END, 7)}"
)


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every card number satisfies."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = ord(ch) - 48
        if i % 2:
            n *= 2
            if n > 9:
                n -= 9
        total += n
    return total % 10 == 0


def _strings(value: Any) -> Iterator[str]:
    """Every string and number inside ``value`` as text, depth first.

    With a stack, not recursion: a hostile command nested a thousand levels deep must not
    raise RecursionError (that would take the worker down on every redelivery).
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, bool):
            continue
        elif isinstance(item, int):
            yield str(item)
        elif isinstance(item, float):
            yield f"{item:f}"  # 4111111111111111.0 is the number written as a float
        elif isinstance(item, dict):
            for k, v in reversed(item.items()):
                stack.append(v)
                stack.append(str(k))
        elif isinstance(item, list | tuple):
            stack.extend(reversed(item))


def contains_card_number(*values: Any) -> bool:
    """True if any string (or integer) inside ``values`` looks like a Luhn-valid card number."""
    # One regex pass over all strings joined by NUL (neither a digit, a letter nor a
    # separator, so no match can span two strings) instead of one pass per string.
    return _has_card_number("\x00".join(s for value in values for s in _strings(value)))


def raw_may_contain_card_number(*parts: bytes) -> bool:
    """A quick look at a record's raw bytes (JSON, header names and values): False means
    no card number can be in the command ``contains_card_number`` would see once parsed.

    Without escapes, every string and integer of the parsed command appears verbatim in
    its JSON text, between delimiters (quotes, commas, ...) that bound a match just as
    the NUL separators do; so a text with no candidate has none parsed. A backslash (an
    escape could spell digits) or bytes that are not UTF-8 answer True: look properly.
    """
    texts: list[str] = []
    for part in parts:
        if b"\\" in part:
            return True
        try:
            texts.append(part.decode("utf-8"))
        except UnicodeDecodeError:
            return True
    text = "\x00".join(texts)
    if _JSON_EXPONENT.search(text) is not None:  # rare: a second pass only then
        text = with_float_digits(text)
    return _has_card_number(text)


def with_float_digits(text: str) -> str:
    """``text`` plus, after NULs, the digits of each JSON number in it written with an
    exponent: 4.242424242424242e15 parses to a float whose digits are not in the text."""
    found = _JSON_EXPONENT.finditer("\x00" + text)  # a part may be a bare number
    return text + "".join(f"\x00{_float_digits(m)}" for m in found)


def _float_digits(match: re.Match[str]) -> str:
    try:
        return next(_strings(float(match.group(1))))
    except (ValueError, OverflowError):
        return ""


def _has_card_number(text: str) -> bool:
    if _SPAN.search(text) is None:  # an eighth of the cost of the full pattern
        return False
    return any(_is_card_number(match) for match in _CANDIDATE.finditer(text))


def _is_card_number(match: re.Match[str]) -> bool:
    digits = _SEPARATORS.sub("", match.group())
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def redact_card_numbers(text: str) -> str:
    """``text`` with every card number in it replaced by :data:`REDACTED`."""
    if _SPAN.search(text) is None:
        return text
    return _CANDIDATE.sub(lambda m: REDACTED if _is_card_number(m) else m.group(), text)


_SEPARATORS = re.compile(r"[^\d]")
# A JSON number token with an exponent: only after ":", "[", "," or the NUL that starts
# a part, so "2e013" inside a hex id is none. Its own pass (~5 µs a command): folded
# into the span regex it doubled that regex's time.
_JSON_EXPONENT = re.compile(r"[:\[,\x00]\s*(-?\d+(?:\.\d+)?[eE][+-]?\d+)")
# Every candidate is at least 13 digits and separators, starting and ending with a digit.
_SPAN = re.compile(
    r"\d[\d \t\u00a0\u1680\u2000-\u200d\u202f\u205f\u2060\u3000\ufeff_./" + _DASHES + r"]{11,}\d"
)

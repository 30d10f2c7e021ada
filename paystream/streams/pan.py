"""Detect primary account numbers (card numbers) anywhere in a command, without echoing them."""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

__all__ = [
    "REDACTED",
    "contains_card_number",
    "luhn_valid",
    "raw_may_contain_card_number",
    "redact_card_numbers",
    "security_code_at",
    "security_codes_at",
    "security_codes_in_strings",
    "security_codes_in_text",
    "text_holds_security_code",
    "text_security_code_key",
    "with_float_digits",
]

# What a card number is replaced with wherever text is kept despite holding one.
REDACTED = "[card number]"

# How card numbers are written: 13-19 contiguous digits, or 4-digit groups (Amex 4-6-5,
# Diners 4-6-4) joined by one consistent separator:
# * spaces on one line (a run of them, of any kind: tab, non-breaking, thin, ...) or an
#   invisible zero-width character; the groups may touch letters ("card4111 1111 …")
#   but not a digit, nor a dash that joins them to one. (Not newlines: a column of
#   years or opening hours.)
# * a dash (of any kind: hyphen, en dash, minus, soft hyphen, ...) or an underscore,
#   standing alone: no letter, digit or dash touching (nor an underscore, when that is
#   the separator), so that ids such as UUIDs (8-4-4-4-12 hex) never look like a card
#   however their digits fall ("abcd3041-1476-4166-932e-…" would, if letters could);
# * a dot or a slash, more strictly still (no dot or slash before, none followed by a
#   digit after: versions, dates and paths).
# The first two may touch a dot or a slash ("No.4111 1111 …", "4111 1111 … 1111/12/27"
# with its expiry), and space and dot groups a dash that is punctuation ("… 1111—exp").
# Grouped forms must also start as issued cards do (below). Digits are ASCII here: text
# with other decimal digits (fullwidth, Arabic-Indic, ...) is scanned with them mapped
# to ASCII, position for position.
_DASHES = r"\-" + "\u00ad\u2010-\u2015\u207b\u208b\u2212\ufe31\ufe32\ufe58\ufe63\uff0d"
_SPACES = " \t\x0b\x0c\u00a0\u1680\u2000-\u200d\u202f\u205f\u2060\u3000\ufeff"
_JOINED_BEFORE = rf"(?<![0-9])(?<![0-9][{_DASHES}])"  # no digit, nor digit and dash
_JOINED_AFTER = rf"(?![0-9]|[{_DASHES}][0-9])"
_SPACE = rf"([{_SPACES}]+)"
_DASH = rf"([{_DASHES}])"
_DASH_START = rf"(?<![0-9A-Za-z{_DASHES}])"
_DASH_END = rf"(?![0-9A-Za-z{_DASHES}])"
_UNDERSCORE = r"(_)"
_UNDERSCORE_START = r"(?<![0-9A-Za-z_])"
_UNDERSCORE_END = r"(?![0-9A-Za-z_])"
_DOT = r"([./])"
_DOT_START = rf"(?<![0-9A-Za-z./]){_JOINED_BEFORE}"
_DOT_END = rf"(?![A-Za-z]|[./][0-9]){_JOINED_AFTER}"


def _grouped(sep: str, start: str, end: str, n: int) -> str:
    """4-4-4-4(-1..3) groups joined by ``sep`` (capture group ``n``), and 4-6-4/5 groups
    (capture group ``n + 1``)."""
    return (
        rf"{start}[0-9]{{4}}{sep}[0-9]{{4}}(?:\{n}[0-9]{{4}}){{1,2}}(?:\{n}[0-9]{{1,3}})?{end}"
        rf"|{start}[0-9]{{4}}{sep}[0-9]{{6}}\{n + 1}[0-9]{{4,5}}{end}"
    )


_CANDIDATE = re.compile(
    r"(?<![0-9])[0-9]{13,19}(?![0-9])"
    f"|{_grouped(_SPACE, _JOINED_BEFORE, _JOINED_AFTER, 1)}"
    f"|{_grouped(_DASH, _DASH_START, _DASH_END, 3)}"
    f"|{_grouped(_UNDERSCORE, _UNDERSCORE_START, _UNDERSCORE_END, 5)}"
    f"|{_grouped(_DOT, _DOT_START, _DOT_END, 7)}"
)


def _a_row_of_values(groups: list[str]) -> bool:
    """Groups no card is written as: a row of years (2023 2024 2025 2026) or of times
    starting 0 (0900 1730 …). (Contiguous digits are not held to it: one long run is
    rarely anything else.)"""
    if groups[0][0] == "0":
        return True  # no card number starts with 0
    return all(len(g) == 4 and "1900" <= g <= "2099" for g in groups)


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
    return _has_card_number("\x00".join(_with_nuls_removed(values)))


def _with_nuls_removed(values: tuple[Any, ...]) -> Iterator[str]:
    """Every string of ``values``, and one holding NULs once more without them: UTF-16
    read as UTF-8 puts a NUL beside each digit ("4\x002\x00..."), and NUL is the joiner
    here, so it cannot be an invisible character of the scan."""
    for value in values:
        for s in _strings(value):
            yield s
            if "\x00" in s:
                yield s.replace("\x00", "")


def raw_may_contain_card_number(*parts: bytes) -> bool:
    """A quick look at a record's raw bytes (JSON, header names and values): False means
    no card number can be in the command ``contains_card_number`` would see once parsed.

    Without escapes, every string and integer of the parsed command appears verbatim in
    its JSON text, between delimiters (quotes, commas, ...) that bound a match just as
    the NUL separators do; so a text with no candidate has none parsed. A backslash (an
    escape could spell digits) or bytes that are not UTF-8 answer True: look properly.
    """
    joined = b"\x00".join(parts)  # as _full_raw_scan joins them
    if joined.isascii() and (quick := _ascii_may_contain(joined)) is not None:
        return quick
    return _full_raw_scan(parts)


def _full_raw_scan(parts: tuple[bytes, ...]) -> bool:
    """:func:`raw_may_contain_card_number` without its quick look at ASCII records."""
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


def _ascii_may_contain(joined: bytes) -> bool | None:
    """The answer of :func:`raw_may_contain_card_number` for ASCII ``joined``, found with
    C-level byte operations and a scan of only the few places a candidate can be; None:
    decide the usual way. (About 2 µs a command, against 20 for the whole scan.)

    Why it is the same answer: ASCII bytes decode to the same characters. With no
    backslash, no ASCII control but NUL and the spaces, and no form-encoded space after
    four digits (each makes the scan read more: escapes, the text without invisible
    characters, the text with "+" and "%20" read as spaces), ``_has_card_number`` finds a
    candidate only inside a ``_SPAN_ASCII`` match, which lies inside a run of 13 or more
    characters of its class: each such run is scanned on its own, as the whole text
    would be (the pattern has no lookaround, and bytes outside its class bound a run).
    The digits ``with_float_digits`` adds follow NULs, which no span crosses: they are
    scanned on their own, and only when ``_JSON_EXPONENT`` finds a match (without a run,
    only if ``_EXPONENT_HINT`` finds what each match holds: see there).
    """
    marked = joined.translate(_SPAN_MARKS)
    if b"\x02" in marked:
        return None
    if (b"+" in joined or b"%20" in joined) and _FORM_SPACED_BYTES.search(joined) is not None:
        return None  # a form-encoded space after four digits: the full scan reads those
    runs = list(_span_runs(marked))
    exponent = _may_hold_exponent(joined, long_digits=bool(runs))
    if not runs and not exponent:
        return False
    text = joined.decode("ascii")
    for start, end in runs:
        if any(_is_card_number(m) for m in _candidates(text, start, end)):
            return True
    if not exponent:
        return False
    # One pass for both: the matches with_float_digits reads, and whether a match lies in
    # the text itself (after the NUL it puts first), as the scan's own search asks.
    found = list(_JSON_EXPONENT.finditer("\x00" + text))
    if all(m.start() == 0 for m in found):
        return False
    return _has_card_number(_float_digits_after_nuls(found))


def _may_hold_exponent(joined: bytes, *, long_digits: bool) -> bool:
    """False if ``_JSON_EXPONENT`` finds no match in ASCII ``joined`` (without the
    controls of ``_SPAN_MARKS``), read backwards as ``_EXPONENT_MARKS`` marks it. Its
    second form holds 13 digits in a row: looked for only if ``long_digits``."""
    backwards = joined[::-1].translate(_EXPONENT_MARKS)
    if _EXPONENT_HINT.search(backwards) is not None:
        return True
    return long_digits and _LONG_FRACTION_HINT.search(backwards) is not None


def _span_runs(marked: bytes) -> Iterator[tuple[int, int]]:
    """Where ``marked`` (bytes 0 and 1 only) holds 13 or more 1s in a row: each such run
    whole (``find`` gives the first 13 of a run; the next 0 ends it)."""
    start = marked.find(_SPAN_RUN)
    while start >= 0:
        end = marked.find(b"\x00", start)
        if end < 0:
            end = len(marked)
        yield start, end
        start = marked.find(_SPAN_RUN, end)


def _byte_table(default: int, marks: dict[bytes, int]) -> bytes:
    """A bytes.translate table: each byte of a key to its value, any other to ``default``."""
    table = bytearray([default]) * 256
    for chars, mark in marks.items():
        for char in chars:
            table[char] = mark
    return bytes(table)


# _SPAN_ASCII's class -> 1; what makes the scan read more (a backslash; a control that
# _ASCII_CONTROL finds) -> 2; any other byte -> 0.
_SPAN_MARKS = _byte_table(
    0,
    {
        b"0123456789 \t\x0b\x0c_./-": 1,
        b"\\" + bytes(range(0x01, 0x09)) + bytes(range(0x0E, 0x20)) + b"\x7f": 2,
    },
)
_SPAN_RUN = b"\x01" * 13
_FORM_SPACED_BYTES = re.compile(rb"[0-9]{4}(?:\+|%20)+[0-9]")
# A _JSON_EXPONENT match is an anchor, spaces, "-", then digits (a "." and digits) and
# "e" or "E", or 13 or more digits, a "." and a digit. Read backwards, with anchors
# marked "a", what its \s matches in ASCII (without the controls _SPAN_MARKS finds) " ",
# digits "0", "e" and "E" "e", "-" and "." as they are and any other byte "x", these are
# _EXPONENT_HINT and _LONG_FRACTION_HINT. (Backwards, a search starts at a literal, "e0"
# or "0.0000000000000": a few in a command's ids, or none; anchors are dozens.)
_EXPONENT_MARKS = _byte_table(
    ord("x"),
    {
        b":[,\x00": ord("a"),
        b" \t\n\r\x0b\x0c": ord(" "),
        b"0123456789": ord("0"),
        b"eE": ord("e"),
        b"-": ord("-"),
        b".": ord("."),
    },
)
_EXPONENT_HINT = re.compile(rb"e00*(?:\.0+)?-? *a")
_LONG_FRACTION_HINT = re.compile(rb"0\.0000000000000+-? *a")


# Card security codes (CVC, CVV, CSC, ...): PCI DSS forbids keeping them after
# authorisation even encrypted, and no provider token flow needs one from us. Three or
# four digits are anything at all, so only a key that names one gives it away. A key is
# read as words (split at separators and camel case; single letters rejoined, so "c_v_v"
# and "C.V.V" are "cvv", and a lone number joins the word before: "CAV-2" is "cav2"). A
# word names a code when it is one, or begins or ends with one ("cardcvv", "cvvcode"),
# and only as the key's last word or before words that name its value ("cvv_code",
# "cv_number"): "csc_id" is a service centre's id, "cvd_amount" a customs duty.
_CODES = frozenset({"cvc", "cvv", "cvn", "cv2", "ccv", "csc", "cav2", "cvc2", "cvv2", "cvn2"})
_CODE_ALONE = frozenset({"cvd"})  # whole words only: "rcvd" is "received"
_CODE_TAIL = frozenset({"code", "value", "val", "number", "num", "no", "nr", "digits"})
_CODE_NAMES = frozenset(
    {
        "securitycode",
        "cardsecuritycode",
        "cardverificationcode",
        "cardverificationvalue",
        "cardcode",  # Authorize.Net's name for it
    }
)
_NOT_ALNUM = re.compile(r"[^0-9a-z]+")
_WORDS = re.compile(r"[A-Z]?[a-z]+[0-9]*|[A-Z]+[0-9]*(?![a-z])|[0-9]+")
# A JSON member whose value is 3-4 digits, in text that did not parse. (Possessive: a
# run of spaces must not be tried every way; one hostile dead letter took minutes.)
_CODE_MEMBER = re.compile(r'"([^"\\]{1,64}+)"\s*+:\s*+"?\s*+([0-9]{3,4})(?![0-9])')
# _CODE_MEMBER from its colon on: every match of it holds one of this, so text without
# one holds no match. A cheap first look (a literal first character, and far fewer
# colons than quotes): most commands have no 3- or 4-digit member at all.
_CODE_VALUE = re.compile(r':\s*+"?\s*+[0-9]{3,4}(?![0-9])')
# Keys longer than this are read afresh each time (the cache must not hold huge keys).
_CACHED_KEY_MAX = 64


def _key_words(key: str) -> list[str]:
    words: list[str] = []
    for word in (w.lower() for w in _WORDS.findall(key)):
        if words and ((len(word) == 1 and len(words[-1]) <= 2) or word.isdigit()):
            words[-1] += word  # c_v_v -> cvv, CAV-2 -> cav2
        else:
            words.append(word)
    return words


def _names_code(word: str) -> bool:
    return (
        word in _CODES
        or word in _CODE_ALONE
        or any(word.startswith(code) or word.endswith(code) for code in _CODES)
    )


def _key_names_security_code(key: str) -> bool:
    if _NOT_ALNUM.sub("", key.lower()) in _CODE_NAMES:
        return True
    words = _key_words(key)
    for i, word in enumerate(words):
        rest = words[i + 1 :]
        if word == "cv" and rest and rest[0] in _CODE_TAIL:  # "cvNumber" (CyberSource)
            return True
        if _names_code(word) and all(w in _CODE_TAIL for w in rest):
            return True
    return False


_cached_names_security_code = functools.lru_cache(maxsize=4096)(_key_names_security_code)


def _names_security_code(key: str) -> bool:
    if len(key) > _CACHED_KEY_MAX:
        return _key_names_security_code(key)
    return _cached_names_security_code(key)  # the same few keys on every command


def _looks_like_security_code(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return 0 <= value <= 9999
    if not isinstance(value, str):
        return False
    # (Without invisible characters: a byte-order mark before "737" hides nothing.)
    visible = _INVISIBLE.sub("", value).strip() if not value.isascii() else value.strip()
    return 3 <= len(visible) <= 4 and visible.isdecimal()


def text_holds_security_code(text: str) -> bool:
    """Raw text (a record that is not a CloudEvent) with a member that reads as a card
    security code."""
    return text_security_code_key(text) is not None


def text_security_code_key(text: str) -> str | None:
    """The key of the first member of raw JSON text that reads as a card security code."""
    if '"' not in text:
        return None  # no JSON member: nothing to read
    text = _ascii_digits(text)  # any script's digits, as parsed
    if _CODE_VALUE.search(text) is None:
        return None  # (see _CODE_VALUE)
    return next(
        (m.group(1) for m in _CODE_MEMBER.finditer(text) if _names_security_code(m.group(1))),
        None,
    )


def security_codes_in_text(text: str) -> set[tuple[str, str]]:
    """Every (key, digits) member of raw JSON text that reads as a card security code,
    a key given twice included (its parse keeps only the last)."""
    if '"' not in text:
        return set()
    text = _ascii_digits(text)
    if _CODE_VALUE.search(text) is None:
        return set()  # (see _CODE_VALUE)
    return {
        (m.group(1), m.group(2))
        for m in _CODE_MEMBER.finditer(text)
        if _names_security_code(m.group(1))
    }


def _security_code_members(value: Any) -> Iterator[tuple[str, Any]]:
    """Each (key, value) inside ``value`` (dicts and lists, at any depth) that reads as a
    card security code: 3 or 4 digits under a key naming one. (With a stack: hostile
    nesting must not raise.)"""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, inner in item.items():
                if _looks_like_security_code(inner) and _names_security_code(str(key)):
                    yield str(key), inner
                stack.append(inner)
        elif isinstance(item, list | tuple):
            stack.extend(item)


def security_codes_at(value: Any) -> set[tuple[str, str]]:
    """Every (key, digits) that ``value`` holds as a card security code, to compare with
    :func:`security_codes_in_text`."""
    return {
        (key, _ascii_digits(_INVISIBLE.sub("", str(inner)).strip()))
        for key, inner in _security_code_members(value)
    }


def security_codes_in_strings(
    value: Any, *, unescape: Callable[[str], str]
) -> set[tuple[str, str]]:
    """Every (key, digits) member of JSON text inside the strings ``value`` holds (as
    :func:`security_codes_in_text` reads it; ``unescape`` resolves JSON escapes for JSON
    inside JSON in a string): codes its parsed data holds, though not as members."""
    found: set[tuple[str, str]] = set()
    for text in _strings(value):
        if '"' in text:
            found |= security_codes_in_text(text)
            if "\\" in text:
                found |= security_codes_in_text(unescape(text))
    return found


def security_code_at(value: Any) -> str | None:
    """The key under which ``value`` holds what reads as a card security code (``cvc``,
    ``card_cvv2``, ``security_code``, ...), else None."""
    if _keys_name_no_code(value):
        return None
    return next((key for key, _ in _security_code_members(value)), None)


def _keys_name_no_code(value: Any) -> bool:
    """True if no key of the dicts in ``value`` (a dict or list of plain JSON values, at
    any depth) names a security code; False also when that is not cheaply known.

    Why that proves :func:`_security_code_members` yields nothing: it yields only a
    member whose key names a code. Each dict's keys are looked up as one tuple (the same
    few key sets on every command: attributes, a command type's data); values of the
    plain types are no containers, so only containers are walked further. Any other type
    (a subclass of dict, say) is left to the full walk.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is dict:
            if _key_set_names_code(item):
                return False
            inner: Iterable[Any] = item.values()
        elif kind is list:
            inner = item
        else:
            return False
        if not _PLAIN.issuperset(map(type, inner)):
            stack.extend(v for v in inner if type(v) not in _PLAIN)
    return True


def _key_set_names_code(item: dict[Any, Any]) -> bool:
    """Does any key of ``item`` name a security code (as ``_security_code_members`` reads
    keys)? Remembered for small sets of short str keys (only str: 1 == 1.0 == True, but
    their names differ), a bounded number of sets: hostile data must not fill memory."""
    keys = tuple(item)
    if not _STR.issuperset(map(type, keys)):
        return True  # (not a parsed command's: left to the full walk, as it reads them)
    named = _NAMING_KEY_SETS.get(keys)
    if named is None:
        named = any(_names_security_code(key) for key in keys)
        if len(keys) <= _CACHED_SET_MAX and max(map(len, keys), default=0) <= _CACHED_KEY_MAX:
            if len(_NAMING_KEY_SETS) >= _CACHED_SETS:
                _NAMING_KEY_SETS.clear()
            _NAMING_KEY_SETS[keys] = named
    return named


# Values that hold no member: JSON's scalars, and an attribute's time.
_PLAIN = frozenset({str, int, float, bool, type(None), datetime})
_STR = frozenset({str})
_NAMING_KEY_SETS: dict[tuple[Any, ...], bool] = {}
_CACHED_SET_MAX = 32
_CACHED_SETS = 1024


def with_float_digits(text: str) -> str:
    """``text`` plus, after NULs, the digits of each JSON number in it written with an
    exponent: 4.242424242424242e15 parses to a float whose digits are not in the text."""
    found = _JSON_EXPONENT.finditer("\x00" + text)  # a part may be a bare number
    return text + _float_digits_after_nuls(found)


def _float_digits_after_nuls(found: Iterable[re.Match[str]]) -> str:
    return "".join(f"\x00{_float_digits(m)}" for m in found)


def _float_digits(match: re.Match[str]) -> str:
    try:
        return next(_strings(float(match.group(1))))
    except (ValueError, OverflowError):
        return ""


def _has_card_number(text: str, seen: set[str] | None = None) -> bool:
    text = _ascii_digits(text)
    # The reads below compose (a fold, then form spaces, then invisibles; or another
    # order): a text one order already made is scanned once (hostile text had 16 scans
    # of 8 texts).
    if seen is None:
        seen = set()
    elif text in seen:
        return False  # (scanned, or being scanned, by a caller in this check)
    seen.add(text)
    if any(_is_card_number(match) for match in _candidates(text)):
        return True
    folded = _with_separator_forms_read(text)
    if folded is not None and _has_card_number(folded, seen):
        return True  # (and the reads below on this text too: the fold can block one)
    if _form_spaced(text) and _has_card_number(_FORM_SPACE.sub(" ", text), seen):
        return True
    if text.isascii() and _ASCII_CONTROL.search(text) is None:
        return False
    # Invisible characters (zero-width space, soft hyphen, direction marks, joiners,
    # variation selectors, ...) between digits: a card number to any reader, none to the
    # pattern. Scanned again without them (detection only: redaction keeps positions).
    visible = _INVISIBLE.sub("", text)
    return visible != text and _has_card_number(visible, seen)


# Form and URL encoding write a space as "+" or "%20": a card number typed with spaces
# arrives as "4242+4242+4242+4242" from a browser's form or a query string. Such text is
# scanned again with them read as spaces (detection only: redaction keeps positions, and
# what it leaves still reading as a card number is not kept at all). Only when one
# follows four digits and precedes a digit: every grouped form's separators do, so no
# other text can read as a card number once decoded.
_FORM_SPACED = re.compile(r"[0-9]{4}(?:\+|%20)+[0-9]")
_FORM_SPACE = re.compile(r"\+|%20")


def _form_spaced(text: str) -> bool:
    return ("+" in text or "%20" in text) and _FORM_SPACED.search(text) is not None


# Unicode's default-ignorable code points (rendered as nothing), the combining grapheme
# joiner, the C0 controls other than spaces and line breaks, and the C1 controls (review
# h64k: "4111\x851111..." passed): what can sit between digits unseen. (Not NUL: it
# joins the strings of a scan; see _with_nuls_removed.)
_INVISIBLE_CHARS = (
    "\x01-\x08\x0e-\x1f\x7f-\x9f"
    "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f"
    "\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8"
    "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff"
)
_INVISIBLE = re.compile(f"[{_INVISIBLE_CHARS}]")
_ASCII_CONTROL = re.compile("[\x01-\x08\x0e-\x1f\x7f]")
# What redaction, which scans one string at a time, looks through: NUL too.
_UNSEEN = re.compile(f"[\x00{_INVISIBLE_CHARS}]+")


def _candidates(text: str, start: int = 0, end: int | None = None) -> Iterator[re.Match[str]]:
    """Candidate matches, looked for only inside runs of digits and separators (a
    fraction of the full pattern's cost over the whole text: UUIDs' digit groups make
    such runs in about one command in ten); only in ``text[start:end]`` if given."""
    for run in _span(text).finditer(text, start, len(text) if end is None else end):
        # The lookarounds see up to two characters either side of a candidate (before
        # ``pos`` they see the text itself; ``endpos`` ends it).
        yield from _CANDIDATE.finditer(text, run.start(), min(len(text), run.end() + 2))


def _is_card_number(match: re.Match[str]) -> bool:
    found = match.group()
    groups = [g for g in _SEPARATORS.split(found) if g]
    if len(groups) == 1:
        return _card_digits(groups[0])
    if _a_row_of_values(groups):
        return False
    # A short last group may be what follows the card, not part of it: its CVC or its
    # expiry ("4111 1111 1111 1111 123"); the whole match is redacted either way.
    return _card_digits("".join(groups)) or (
        len(groups) > 3 and len(groups[-1]) < 4 and _card_digits("".join(groups[:-1]))
    )


def _card_digits(digits: str) -> bool:
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def redact_card_numbers(text: str) -> str:
    """``text`` with every card number in it replaced by :data:`REDACTED`, one written
    with invisible characters (or NULs) between its digits included."""
    scanned = _ascii_digits(text)  # positions are the same in ``text``
    folded = _with_separator_forms_read(scanned)  # (and in it)
    spans: list[tuple[int, int]] = []
    for each in (scanned,) if folded is None else (scanned, folded):
        spans += [m.span() for m in _candidates(each) if _is_card_number(m)]
        if _UNSEEN.search(each) is not None:
            visible, origin = _without_unseen(each)
            spans += [
                (origin[m.start()], origin[m.end() - 1] + 1)
                for m in _candidates(visible)
                if _is_card_number(m)
            ]
    redacted = text
    if spans:
        out: list[str] = []
        last = 0
        for start, end in sorted(spans):
            if end <= last:
                continue  # within one already redacted
            out += (text[last : max(start, last)], REDACTED)
            last = end
        redacted = "".join(out) + text[last:]
    # Detection reads more ways than these spans map back (a string without its NULs
    # alone, say): what still reads as a card number is not kept at all.
    if contains_card_number(redacted):
        return REDACTED
    return redacted


def _without_unseen(text: str) -> tuple[str, list[int]]:
    """``text`` without its unseen characters, and where each remaining one was in it."""
    kept: list[str] = []
    origin: list[int] = []
    last = 0
    for run in _UNSEEN.finditer(text):
        kept.append(text[last : run.start()])
        origin.extend(range(last, run.start()))
        last = run.end()
    kept.append(text[last:])
    origin.extend(range(last, len(text)))
    return "".join(kept), origin


def _ascii_digits(text: str) -> str:
    """Decimal digits of every script as ASCII ones, one character for one."""
    return text if text.isascii() else text.translate(_DIGITS)


class _DigitTable(dict[int, int]):
    """str.translate's table, filled with the digits met: Unicode has hundreds of
    decimal digits (fullwidth, Arabic-Indic, ...), and Luhn needs their values. Other
    characters are left as they are and not kept (hostile text can hold a million
    distinct ones)."""

    def __missing__(self, codepoint: int) -> int:
        value = unicodedata.decimal(chr(codepoint), None)
        if value is None:
            return codepoint
        self[codepoint] = 48 + value
        return 48 + value


# The compatibility forms of the separators read in ASCII (NFKC folds them: full-width
# full stop, solidus and low line, small full stop, one dot leader, the low lines of
# vertical and CJK forms), and the prolonged sound mark a Japanese IME types for "-"
# (review h67f). Read as those separators in a second pass, one character for one: in
# the first they stay what they are, so that one beside a card number written in ASCII
# does not now block it as its ASCII form would (a full-width full stop before
# "4111.1111…", or full-width solidi in an expiry after it).
_SEPARATOR_FORMS = {
    **dict.fromkeys(map(ord, "\uff0e\ufe52\u2024"), "."),
    0xFF0F: "/",
    **dict.fromkeys(map(ord, "\uff3f\ufe33\ufe34\ufe4d\ufe4e\ufe4f"), "_"),
}
# The prolonged sound mark is read as "-" only between digits: katakana words end in it
# ("カードナンバー"), and one right before a number would block its dash form (h67j).
_PROLONGED = "\u30fc\uff70"
_PROLONGED_BETWEEN_DIGITS = re.compile(f"(?<=[0-9])[{_PROLONGED}](?=[0-9])")
_SEPARATOR_FORM = re.compile("[" + "".join(map(chr, _SEPARATOR_FORMS)) + _PROLONGED + "]")


def _with_separator_forms_read(text: str) -> str | None:
    """``text`` with the separator forms read as ASCII, or None if it holds none."""
    if text.isascii() or _SEPARATOR_FORM.search(text) is None:
        return None
    read = _PROLONGED_BETWEEN_DIGITS.sub("-", text.translate(_SEPARATOR_FORMS))
    return None if read == text else read  # (a mark only in words: nothing to read)


_DIGITS = _DigitTable()


def _span(text: str) -> re.Pattern[str]:
    # ASCII text (nearly every command) with an ASCII class: the class with the other
    # spaces and dashes in it doubled the whole scan's cost.
    return _SPAN_ASCII if text.isascii() else _SPAN


_SEPARATORS = re.compile(r"[^0-9]")
# A JSON number token with an exponent, or a long one with a fraction (it parses to a
# float whose rounded digits are not in the text: 4111111111111110.99999999), only after
# ":", "[", "," or the NUL that starts a part, so "2e013" inside a hex id is none. Its
# own pass (~5 µs a command): folded into the span regex it doubled that regex's time.
_JSON_EXPONENT = re.compile(r"[:\[,\x00]\s*(-?\d+(?:\.\d+)?[eE][+-]?\d+|-?\d{13,}\.\d+)")
# Every candidate is at least 13 digits and separators, starting and ending with a digit.
_SPAN = re.compile(rf"[0-9][0-9{_SPACES}_./{_DASHES}]{{11,}}[0-9]")
_SPAN_ASCII = re.compile(r"[0-9][0-9 \t\x0b\x0c_./\-]{11,}[0-9]")

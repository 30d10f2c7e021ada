"""The card scan's separator forms (review h67f of 429be45): dashes NFKC folds to ones the
scan reads, the prolonged sound mark a Japanese IME types for "-", neighbours that must
not hide a card, UTF-16 dead letters, and the cost on text with no such form."""

from __future__ import annotations

import unicodedata

import pytest

from paystream.agents.card_data import raw_holds_card
from paystream.agents.inbound import Inbound
from paystream.streams import pan
from paystream.streams.pan import contains_card_number, redact_card_numbers

CARD = "4822580736052688"  # Luhn-valid, as tests/agents/test_card_fullwidth_separators.py
FW_DIGITS = str.maketrans({str(i): chr(0xFF10 + i) for i in range(10)})


def _grouped(sep: str, digits: str = CARD) -> str:
    return sep.join(digits[i : i + 4] for i in range(0, 16, 4))


# ---- 1. Separators NFKC folds to a dash the scan reads, but the scan does not ---------

NFKC_DASHES = {
    "small em dash U+FE58": "\ufe58",  # NFKC -> U+2014, read
    "superscript minus U+207B": "\u207b",  # NFKC -> U+2212, read
    "subscript minus U+208B": "\u208b",  # NFKC -> U+2212, read
    "vertical en dash U+FE32": "\ufe32",  # NFKC -> U+2013, read
    "vertical em dash U+FE31": "\ufe31",  # NFKC -> U+2014, read
}


@pytest.mark.parametrize("sep", list(NFKC_DASHES.values()), ids=list(NFKC_DASHES))
def test_separators_nfkc_folds_to_a_dash_read_as_that_dash(sep: str) -> None:
    folded = unicodedata.normalize("NFKC", sep)
    assert contains_card_number(_grouped(folded))  # (as their NFKC form is)
    assert contains_card_number(_grouped(sep))
    assert contains_card_number(_grouped(sep).translate(FW_DIGITS))


# ---- 2. What a Japanese IME types for "-" in hiragana mode: the prolonged sound mark ---


@pytest.mark.parametrize("sep", ["\u30fc", "\uff70"], ids=["U+30FC", "halfwidth U+FF70"])
def test_a_card_number_typed_with_dashes_by_a_japanese_ime_is_read(sep: str) -> None:
    # "４８２２ー５８０７ー３６０５ー２６８８": digits and "-" keys in hiragana mode.
    assert contains_card_number(_grouped(sep).translate(FW_DIGITS))


# ---- 3. The fold made full-width neighbours block forms that were caught before ------

BLOCKED_NOW = {
    # Detected at 33a3526 (the full-width character was no separator), missed now.
    "dots, full-width slash expiry": _grouped(".") + "\uff0f12\uff0f27",
    "full-width full stop before dots": "\uff0e" + _grouped("."),
    "full-width solidus before dots": "\uff0f" + _grouped("."),
    "full-width low line before underscores": "\uff3f" + _grouped("_"),
    "full-width low line after underscores": _grouped("_") + "\uff3f",
}


@pytest.mark.parametrize("text", list(BLOCKED_NOW.values()), ids=list(BLOCKED_NOW))
def test_a_full_width_neighbour_does_not_hide_a_card_caught_before(text: str) -> None:
    assert contains_card_number(text)
    assert CARD[:4] not in redact_card_numbers(text)


# ---- 4. The fold's cost: NFKC of every non-ASCII character on every scan ------------


def test_text_without_separator_forms_is_not_normalised_on_every_scan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = "お客様のご注文番号は１２３４５です。発送日は２０２４年１月１５日。" * 10
    contains_card_number(text)  # (warm)
    calls = 0
    real = unicodedata.normalize

    def counted(form: str, s: str) -> str:
        nonlocal calls
        calls += 1
        return real(form, s)

    monkeypatch.setattr(pan.unicodedata, "normalize", counted)
    contains_card_number(text)
    assert calls == 0, f"{calls} NFKC calls for {len(text)} characters scanned a second time"


# ---- 5. UTF-16 bytes that do not parse: full-width digits or separators unseen -------


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16"])
@pytest.mark.parametrize(
    "text",
    [
        "card " + _grouped("\uff0e"),  # ASCII digits, full-width full stops
        "card " + CARD.translate(FW_DIGITS),  # full-width digits
        '{"name": "' + _grouped("\uff0e").translate(FW_DIGITS) + '"',  # JSON cut short
    ],
    ids=["fw-stops", "fw-digits", "cut-json"],
)
def test_a_utf16_record_that_does_not_parse_is_scanned_as_utf16(text: str, encoding: str) -> None:
    # (As UTF-16 with ASCII dots it is caught: "4\x008\x00..." without its NULs.)
    rec = Inbound(key=b"acme", value=text.encode(encoding), headers={}, timestamp_ms=0)
    assert raw_holds_card(rec)


# ---- Guards for the proposed fix: the lists stay complete -----------------------------


def test_every_nfkc_form_of_a_read_separator_is_read() -> None:
    """Each code point NFKC folds to one separator the scan reads is read as it (the
    fix lists them: no NFKC on every character of every scan)."""
    import re

    dashes = re.compile(f"[{pan._DASHES}]")
    spaces = re.compile(f"[{pan._SPACES}]")
    missed = []
    for cp in range(0x80, 0x30000):
        ch = chr(cp)
        if 0xD800 <= cp <= 0xDFFF:
            continue
        folded = unicodedata.normalize("NFKC", ch)
        if folded == ch or len(folded) != 1:
            continue
        read = (
            (folded in "./_" and cp in getattr(pan, "_SEPARATOR_FORMS", {}))
            or (dashes.fullmatch(folded) and dashes.fullmatch(ch))
            or (spaces.fullmatch(folded) and spaces.fullmatch(ch))
            or not (folded in "./_" or dashes.fullmatch(folded) or spaces.fullmatch(folded))
        )
        if not read:
            missed.append(f"U+{cp:04X} {unicodedata.name(ch, '?')}")
    assert not missed, missed

"""The separator-form second pass (review h67f) and what a first version left unread
(review h67j): a katakana word ending in the prolonged sound mark before a number, and the
reads of form-encoded spaces and invisible characters skipped for text holding a form."""

from __future__ import annotations

import pytest

from paystream.streams.pan import REDACTED, contains_card_number, redact_card_numbers

CARD = "4822580736052688"  # Luhn-valid
FW_DIGITS = str.maketrans({str(i): chr(0xFF10 + i) for i in range(10)})


def _grouped(sep: str, digits: str = CARD) -> str:
    return sep.join(digits[i : i + 4] for i in range(0, 16, 4))


# 1. A katakana word ending in the prolonged sound mark, right before the number typed
#    with the same mark: "カードナンバー" (card number), "メンバー", "ユーザー"...
KATAKANA_BEFORE = {
    "full-width": "カードナンバー" + _grouped("\u30fc").translate(FW_DIGITS),
    "ascii digits": "カードナンバー" + _grouped("\u30fc"),
    "half-width katakana": "ｶｰﾄﾞﾅﾝﾊﾞｰ" + _grouped("\uff70"),
}


@pytest.mark.parametrize("text", list(KATAKANA_BEFORE.values()), ids=list(KATAKANA_BEFORE))
def test_a_card_number_after_a_word_ending_in_the_prolonged_sound_mark_is_read(
    text: str,
) -> None:
    assert contains_card_number(text), text
    assert REDACTED in redact_card_numbers(text)


# 2. The form-encoded and invisible-character passes run only on the folded text when it
#    holds a separator form: where the fold blocks a match (a dash before a digit, a dot
#    or slash before a digit, a dot before), a card number those passes caught on the
#    text itself is missed. The first two were detected before e2ce3dc.
SKIPPED = {
    "form-encoded, prolonged mark and expiry after": _grouped("+") + "\u30fc2027",
    "invisible mark, prolonged mark and expiry after": ("4822 5807 3605 26\u200e88\u30fc2027"),
    "invisible mark, full-width full stop before dots": "\uff0e4822.5807.3605.26\u200e88",
    "invisible mark, full-width solidus expiry after dots": (
        "4822.5807.3605.26\u200e88\uff0f12\uff0f27"
    ),
}


@pytest.mark.parametrize("text", list(SKIPPED.values()), ids=list(SKIPPED))
def test_the_second_reads_are_not_skipped_for_text_with_a_separator_form(text: str) -> None:
    assert contains_card_number(text), (text, redact_card_numbers(text))


# 3. What must stay quiet: Japanese text with the mark between numbers that are no card.
QUIET = [
    "ルーター 1234ー5678ー9012ー3456",  # not Luhn-valid
    "電話 090ー1234ー5678",
    "フリーダイヤル 0120ー123ー456",
    "2023ー2024ー2025ー2026",
]


@pytest.mark.parametrize("text", QUIET)
def test_japanese_text_with_the_mark_between_numbers_is_no_card(text: str) -> None:
    assert not contains_card_number(text)
    assert redact_card_numbers(text) == text

"""The card scan's second reads (separator forms, form-encoded spaces, invisible
characters) compose: one text with all three was scanned 16 times, 8 of them a text
scanned already (review h67m: 2.6x the time on long hostile non-ASCII text)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from paystream.streams import pan

HOSTILE = "1234+5\u200b\uff0e6\u30fc7 " * 200


def test_no_text_is_scanned_twice_in_one_check(monkeypatch: pytest.MonkeyPatch) -> None:
    scanned: Counter[str] = Counter()
    candidates = pan._candidates

    def counting(text: str, *a: Any, **k: Any) -> Any:
        scanned[text] += 1
        return candidates(text, *a, **k)

    monkeypatch.setattr(pan, "_candidates", counting)
    assert not pan.contains_card_number(HOSTILE)
    again = {len(t): n for t, n in scanned.items() if n > 1}
    assert not again, f"{sum(scanned.values())} scans of {len(scanned)} texts: {again}"

"""A card number typed in full-width form (an IME in full-width mode) with the full-width
forms of the separators the scan reads in ASCII (dot, slash, low line) used to pass the
scan, stored and echoed in outcomes (review h67d)."""

from __future__ import annotations

import json

import pytest

from paystream.streams.pan import contains_card_number
from tests.agents.harness import Harness, data, kind

pytestmark = pytest.mark.asyncio

CARD = "4822580736052688"
FW_DIGITS = str.maketrans({str(i): chr(0xFF10 + i) for i in range(10)})


def _grouped(sep: str, digits: str = CARD) -> str:
    return sep.join(digits[i : i + 4] for i in range(0, 16, 4))


FORMS = {
    "fullwidth full stop": _grouped("\uff0e").translate(FW_DIGITS),
    "fullwidth full stop, ascii digits": _grouped("\uff0e"),
    "fullwidth solidus": _grouped("\uff0f").translate(FW_DIGITS),
    "fullwidth low line": _grouped("\uff3f").translate(FW_DIGITS),
    "small full stop": _grouped("\ufe52"),
    "one dot leader": _grouped("\u2024"),
}


@pytest.mark.parametrize("text", list(FORMS.values()), ids=list(FORMS))
def test_fullwidth_separators_read_as_their_ascii_forms(text: str) -> None:
    # As "4822.5807.3605.2688", "4822/5807/…", "4822_5807_…" are.
    assert contains_card_number(
        text.translate({0xFF0E: ".", 0xFF0F: "/", 0xFF3F: "_", 0xFE52: ".", 0x2024: "."})
    )
    assert contains_card_number(text)


async def test_a_fullwidth_card_number_in_a_name_is_refused(harness: Harness) -> None:
    t = harness.add_tenant()
    text = FORMS["fullwidth full stop"]  # (full-width digits and full stops)
    out = await harness.send("customer.create", t, {"customer_id": "cus_fw", "name": text})
    stored = json.dumps(harness.tables.customers, ensure_ascii=False)
    assert kind(out) == "command.rejected" and data(out)["reason"] == "card_data_forbidden", (
        kind(out),
        text in stored,
    )

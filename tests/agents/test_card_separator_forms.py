"""The card-scan gaps of tests/streams/test_pan_separator_forms.py, through the pipeline
(review h67f)."""

from __future__ import annotations

import json

import pytest

from paystream.agents.pipeline import Inbound
from tests.agents.harness import Harness, data, kind
from tests.agents.test_pipeline import _binary

pytestmark = pytest.mark.asyncio

CARD = "4822580736052688"
FW_DIGITS = str.maketrans({str(i): chr(0xFF10 + i) for i in range(10)})
IME_TYPED = "-".join(CARD[i : i + 4] for i in range(0, 16, 4)).translate(FW_DIGITS)
IME_TYPED = IME_TYPED.replace("-", "\u30fc")  # ４８２２ー５８０７ー３６０５ー２６８８


async def test_a_card_number_typed_by_a_japanese_ime_in_a_name_is_refused(
    harness: Harness,
) -> None:
    t = harness.add_tenant()
    out = await harness.send("customer.create", t, {"customer_id": "cus_ime", "name": IME_TYPED})
    stored = json.dumps(harness.tables.customers, ensure_ascii=False)
    assert kind(out) == "command.rejected" and data(out)["reason"] == "card_data_forbidden", (
        kind(out),
        IME_TYPED in stored,
    )


async def test_a_utf16_full_width_card_number_is_not_kept_in_a_dead_letter(
    harness: Harness,
) -> None:
    """As tests/agents/test_card_data_hiding_places.py's UTF-16 dead letter, but with the
    number full-width and the JSON cut short (it does not parse)."""
    t = harness.add_tenant()
    text = '{"description": "card ' + CARD.translate(FW_DIGITS) + '"'
    value = text.encode("utf-16-le")
    rec = _binary(t.encode(), value, ce_type=b"com.paystream.command.customer.create")
    headers = {k: v for k, v in rec.headers.items() if k != "ce_specversion"}  # undecodable
    emits = await harness.raw(Inbound(rec.key, rec.value, headers, 0, "c", 0, 3))
    kept = [e.record.value for e in emits if e.topic == harness.settings.dlq_topic]
    assert kept, emits
    assert not any(CARD.translate(FW_DIGITS) in v.decode("utf-16-le", "replace") for v in kept), (
        "the dead letter keeps the card number"
    )


async def test_a_card_number_after_a_katakana_word_is_refused(harness: Harness) -> None:
    """h67j: "カードナンバー" (card number) ends in the prolonged sound mark, read as "-"
    right before the number's first group: the dash form's start refuses it."""
    t = harness.add_tenant()
    name = "カードナンバー" + IME_TYPED
    out = await harness.send("customer.create", t, {"customer_id": "cus_ime2", "name": name})
    assert kind(out) == "command.rejected" and data(out)["reason"] == "card_data_forbidden", kind(
        out
    )

"""Card numbers as form and URL encoding write their spaces, and a refused header name
quoted by the ingress (review findings)."""

from __future__ import annotations

import json

import pytest

from paystream.streams.pan import (
    REDACTED,
    contains_card_number,
    luhn_valid,
    raw_may_contain_card_number,
    redact_card_numbers,
)

GROUPS = ["4242", "4242", "4242", "4242"]


@pytest.mark.parametrize(
    "sep",
    [
        "++",  # two spaces typed (plain "  " is refused), as a form writes them
        "%20%20",
        "+%20",
        "\u200b+",  # an invisible character beside the "+" (plain: "\u200b " is refused)
        "+\u200b",
        "\u00ad+",
    ],
    ids=["plus-plus", "pct-pct", "plus-pct", "zwsp-plus", "plus-zwsp", "shy-plus"],
)
def test_form_encoded_spacing_reads_as_a_card_number(sep: str) -> None:
    plain = sep.replace("+", " ").replace("%20", " ")
    assert contains_card_number(plain.join(GROUPS))  # the same spacing, decoded: refused
    text = sep.join(GROUPS)
    assert contains_card_number(text)
    # ... and the quick look at the raw record must not clear it, whichever way written.
    for ensure_ascii in (True, False):
        raw = json.dumps({"data": {"note": text}}, ensure_ascii=ensure_ascii).encode()
        assert raw_may_contain_card_number(raw)
    assert redact_card_numbers(text) == REDACTED


def test_a_refused_header_name_is_not_cut_into_a_card_number() -> None:
    from paystream.web.ingress import _named

    run = "4242424242424242"
    extra = next(d for d in "0123456789" if not luhn_valid(run + d))
    name = "ce-" + "a" * 45 + run + extra + "x"  # 17 digits: no card number
    assert not contains_card_number(name)
    assert not contains_card_number(_named(name)), _named(name)

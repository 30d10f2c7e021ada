"""Minted ids can never look like card numbers, so commands naming them are never refused."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from paystream.ids import ID_LENGTH, derived_id, letters
from paystream.streams.pan import contains_card_number


def _old_hex_id(tenant: str, command: str) -> str:
    """How ids were derived before: 24 hex digits of the same digest."""
    return "cus_" + hashlib.sha256(f"{tenant}\x1f{command}".encode()).hexdigest()[:24]


def test_hex_ids_did_trip_the_card_scan_and_letter_ids_do_not() -> None:
    tripped = [
        (f"t{i}", f"cmd-{i}")
        for i in range(5000)
        if contains_card_number({"customer_id": _old_hex_id(f"t{i}", f"cmd-{i}")})
    ]
    assert tripped, "expected some hex ids to look like card numbers"
    for tenant, command in tripped:
        assert not contains_card_number({"customer_id": derived_id("cus", tenant, command)})


@given(st.text(max_size=20), st.text(max_size=40))
def test_derived_ids_are_stable_letters(tenant: str, command: str) -> None:
    ident = derived_id("pay", tenant, command)
    assert ident == derived_id("pay", tenant, command)
    prefix, _, body = ident.partition("_")
    assert prefix == "pay" and len(body) == ID_LENGTH and body.isalpha() and body.islower()


@given(st.binary(min_size=ID_LENGTH, max_size=64))
def test_letters_hold_no_digits(data: bytes) -> None:
    text = letters(data)
    assert len(text) == ID_LENGTH and text.isalpha() and text.islower()


def test_distinct_parts_give_distinct_ids() -> None:
    ids = {derived_id("re", "acme", f"cmd-{i}") for i in range(10_000)}
    assert len(ids) == 10_000

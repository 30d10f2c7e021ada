"""The limits' fast paths against their full forms, on varied and hostile input."""

from __future__ import annotations

import hashlib
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from paystream.tenancy import limits
from paystream.tenancy.limits import _full_tag, _held, _hold_of, _holds_of_day, _tag

_DAYS = st.sampled_from(["2026-09-20", "2026-09-21", "2026-09-22", "2026-09-19"])
_HOLD = st.tuples(
    _DAYS,
    st.sampled_from(["USD", "EUR"]),
    st.integers(0, 10**9),
    st.none() | st.sampled_from(["owner-a", "owner-b"]),
).map(list) | st.tuples(_DAYS, st.sampled_from(["USD", "EUR"]), st.integers(0, 10**9)).map(list)
_HELD = st.none() | st.dictionaries(st.sampled_from(["t1", "t2", "t3", "t4"]), _HOLD, max_size=4)


@given(st.text(max_size=80))
def test_tag_is_the_8_byte_blake2b_of_the_id(text: str) -> None:
    try:
        expected = _full_tag(text)
    except UnicodeEncodeError:
        try:
            _tag(text)
        except UnicodeEncodeError:
            return
        raise AssertionError("_tag took what the full form refuses") from None
    assert _tag(text) == expected
    assert _tag(text) == hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def test_tag_of_a_fixed_id() -> None:
    """(A literal: tags kept in the limits state must never change.)"""
    assert _tag("cmd-1") == hashlib.blake2b(b"cmd-1", digest_size=8).hexdigest()
    assert _tag("") == hashlib.blake2b(b"", digest_size=8).hexdigest()


def _full_holds_of_day(state: dict[str, Any], day: str) -> dict[str, list[Any]]:
    since = limits._day_before(day)
    return {tag: h for tag, h in (state.get("held") or {}).items() if h[0] >= since}


def _full_hold_of(state: dict[str, Any], hold_key: str, owner: str | None) -> str:
    tag = _full_tag(hold_key)
    if owner is None:
        return tag
    holds = state.get("held") or {}
    own = _full_tag(f"{hold_key}\x1f{owner}")
    if own in holds:
        return own
    held = holds.get(tag)
    if held is None or len(held) < 4 or held[3] is None or held[3] == owner:
        return tag
    return own


@given(
    held=_HELD,
    day=_DAYS,
    hold_key=st.sampled_from(["k1", "k2", "@payment:p"]),
    owner=st.none() | st.sampled_from(["owner-a", "owner-b"]),
    name_tags=st.booleans(),
)
def test_holds_against_their_full_forms(
    held: dict[str, list[Any]] | None, day: str, hold_key: str, owner: str | None, name_tags: bool
) -> None:
    if held is not None and name_tags:
        # Holds under the very tags the keys map to (so each branch is reached).
        real = [_tag("k1"), _tag("k2"), _tag(f"k1\x1f{owner}"), _tag("@payment:p")]
        held = {real[i % len(real)]: h for i, h in enumerate(held.values())}
    state: dict[str, Any] = {} if held is None else {"held": held}
    got = _holds_of_day(state, day)
    assert got == _full_holds_of_day(state, day)
    got["new"] = [day, "USD", 1, None]  # a new dict every time: callers fill it
    assert "new" not in (state.get("held") or {})
    for currency in ("USD", "EUR"):
        full = sum(
            int(h[2])
            for tag, h in _full_holds_of_day(state, day).items()
            if h[1] == currency and tag != "t1"
        )
        assert _held(state, day, currency, "t1") == full
    assert _hold_of(state, hold_key, owner) == _full_hold_of(state, hold_key, owner)
    assert _hold_of(state, hold_key, owner, _tag(hold_key)) == _full_hold_of(state, hold_key, owner)

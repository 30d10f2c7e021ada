"""The limits' fast paths against their full forms, on varied and hostile input."""

from __future__ import annotations

import copy
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


# ---- the state read once for kept_rejection and admit (``stored``) ---------------------

_T0 = 1_790_000_000_000


class _Pay:
    def __init__(self, amount: int, currency: str) -> None:
        self.amount, self.currency = amount, currency


_LIMITS = st.sampled_from(
    [
        limits.TenantLimits(),
        limits.TenantLimits(commands_per_second=1, burst=2),
        limits.TenantLimits(
            max_payment_amount={"USD": 5_000},
            daily_payment_volume={"USD": 9_000, "EUR": 4_000},
        ),
        limits.TenantLimits(commands_per_second=3, daily_payment_volume={"USD": 12_000}),
    ]
)
_STEP = st.tuples(
    st.integers(0, 5),  # offset
    st.sampled_from(["c0", "c1", "c2", "c3"]),  # command id
    st.sampled_from(["payment.create", "refund.create"]),
    st.integers(1, 8_000),
    st.sampled_from(["USD", "EUR"]),
    st.integers(0, 3_000),  # ms after T0
    st.booleans(),  # admitted before
    st.sampled_from([0, 0, 1]),  # partition
)


def _admit(gate: limits.LimitGate, tl: limits.TenantLimits, step: Any, stored: Any) -> Any:
    offset, cid, ctype, amount, currency, at, before, partition = step
    rec = limits.Record(cid, partition, offset, _T0 + at)
    return gate.admit(
        "t", tl, rec, ctype, _Pay(amount, currency),
        admitted_before=before, hold_key=f"t:{cid}", former_hold_key=f"t:payment:{cid}",
        request=f"h-{cid}", stored=stored,
    )  # fmt: skip


@given(_LIMITS, _LIMITS, st.lists(_STEP, max_size=8), _STEP)
def test_admit_on_the_state_read_before_decides_as_reading_it_itself(
    before: limits.TenantLimits, now: limits.TenantLimits, history: list[Any], step: Any
) -> None:
    """As the pipeline does: ``stored`` read, the kept rejection asked of it, then admit
    given it, against both reading the table themselves (a table whose get gives a fresh
    copy, as a RocksDB store does, and one giving the object itself)."""
    table: dict[str, Any] = {}
    gate = limits.LimitGate(table, clock_ms=lambda: _T0 + 10**9, committed=lambda p: 1)
    for past in history:
        _admit(gate, before, past, limits.UNREAD)
    offset, cid, *_rest = step
    rec = limits.Record(cid, step[-1], offset, _T0 + step[5])
    results = []
    for share in (False, True):
        for fresh_copies in (False, True):
            mine = copy.deepcopy(table)
            g = limits.LimitGate(mine, clock_ms=lambda: _T0 + 10**9, committed=lambda p: 1)
            if fresh_copies:
                g.table = _CopyingTable(mine)
            stored = g.stored("t") if share else limits.UNREAD
            kept = g.kept_rejection("t", rec, stored)
            decision = None if kept is not None else _admit(g, now, step, stored)
            results.append((kept, decision, mine))
    assert all(r == results[0] for r in results[1:])


class _CopyingTable(dict[str, Any]):
    """A table whose get gives a fresh copy each time (a store that deserialises)."""

    def __init__(self, backing: dict[str, Any]) -> None:
        super().__init__()
        self.backing = backing

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return copy.deepcopy(self.backing.get(key, default))

    def __contains__(self, key: object) -> bool:
        return key in self.backing

    def __setitem__(self, key: str, value: Any) -> None:
        self.backing[key] = value

    def __delitem__(self, key: str) -> None:
        del self.backing[key]


_RAW_STATES = [
    None,
    {},
    {"partition": 0},
    {"partition": 0, "decided": None},
    {"partition": 1, "decided": {"2": {"id": "x", "admit": False}}},
    {"partition": 0, "decided": {"2": {"id": _tag("c"), "admit": True}}},
    {"partition": 0, "decided": {"2": {"id": _tag("c"), "admit": False, "reason": "r",
                                       "message": "m", "extra": {}}}},
]  # fmt: skip


@given(st.sampled_from(_RAW_STATES))
def test_kept_rejection_on_a_state_read_before_is_the_same(raw: Any) -> None:
    table: dict[str, Any] = {} if raw is None else {"t:limits": raw}
    gate = limits.LimitGate(table)
    rec = limits.Record("c", 0, 2, _T0)
    assert gate.kept_rejection("t", rec, gate.stored("t")) == gate.kept_rejection("t", rec)


@given(st.text(max_size=20), st.integers(-1, 9), st.integers(-1, 10**12), st.integers(0, 10**13))
def test_a_record_reads_as_the_frozen_dataclass_it_was(
    cid: str, partition: int, offset: int, at_ms: int
) -> None:
    """Record as a NamedTuple: its fields as given, positionally or by name, and immutable."""
    rec = limits.Record(cid, partition, offset, at_ms)
    named = limits.Record(command_id=cid, partition=partition, offset=offset, timestamp_ms=at_ms)
    for r in (rec, named):
        assert (r.command_id, r.partition, r.offset, r.timestamp_ms) == (
            cid,
            partition,
            offset,
            at_ms,
        )
    assert rec == named and hash(rec) == hash(named)
    try:
        rec.offset = 5  # type: ignore[misc]
    except AttributeError:
        pass
    else:
        raise AssertionError("a Record must not change")


@given(
    st.text(max_size=10),
    st.integers(-1, 10**9),
    _DAYS,
    st.none() | st.sampled_from(["USD", "EUR"]),
    st.integers(0, 10**9),
    st.none() | st.text(max_size=16),
)
def test_an_admission_reads_as_the_frozen_dataclass_it_was(
    tenant: str, offset: int, day: str, currency: str | None, amount: int, hold: str | None
) -> None:
    """Admission as a NamedTuple: its fields and defaults as given, immutable, truthy."""
    full = limits.Admission(tenant, offset, day, currency, amount, hold)
    assert (full.tenant_id, full.offset, full.day, full.currency, full.amount, full.hold) == (
        tenant, offset, day, currency, amount, hold
    )  # fmt: skip
    bare = limits.Admission(tenant_id=tenant, offset=offset, day=day)
    assert (bare.currency, bare.amount, bare.hold) == (None, 0, None)
    assert full and bare  # (never falsy: the pipeline tests ``is not None``, but still)
    try:
        full.amount = 1  # type: ignore[misc]
    except AttributeError:
        pass
    else:
        raise AssertionError("an Admission must not change")

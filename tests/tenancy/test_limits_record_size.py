"""A tenant's limits state is one changelog record: its worst case (every kept decision
and hold at its cap, every value at its longest) stays under LIMITS_RECORD_MAX_BYTES, so
the broker never refuses it (a refused changelog record fails its batch on every
redelivery: the worker exits, and so does each next owner of the partition). Kept
refusals are kept in full (as the release before kept them, and can read them) up to
FULL_REFUSALS, past that as their builder's arguments; a redelivery gets the same bytes
from either."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import faust
import orjson
import pytest

from paystream.money import CURRENCY_EXPONENTS, MAX_MINOR_AMOUNT
from paystream.streams.admin import RECORD_MAX_BYTES
from paystream.streams.commands import ID_MAX_CHARS
from paystream.tables.changelog import BatchedChangelogTable, collect_changelog
from paystream.tenancy import limits as lim
from paystream.tenancy.limits import (
    FULL_REFUSALS,
    LIMITS_RECORD_MAX_BYTES,
    MAX_HOLDS,
    REPLAY_MEMORY,
    Admission,
    InvoiceCharge,
    LimitGate,
    LimitRejection,
    Record,
    TenantLimits,
)

T0 = 1_790_000_000_000
BIG = MAX_MINOR_AMOUNT * 1000  # the largest limit TenantLimits takes
CODES = sorted(CURRENCY_EXPONENTS)
# What a day's volume, or its holds, may come to (counts learnt past the cap included).
HUGE = 10**18
# The largest offset Kafka gives (an int64): the longest key of a kept decision.
TOP = 2**63 - 1
# The longest tenant id (each character four bytes of UTF-8).
TENANT = "\U0001f600" * ID_MAX_CHARS


@dataclass
class Pay:
    amount: int
    currency: str


def _gate(limits: TenantLimits) -> tuple[LimitGate, dict[str, Any]]:
    table: dict[str, Any] = {}
    return LimitGate(table, clock_ms=lambda: T0), table


# A refusal as the release before kept it (63bee5c, tenancy/limits.py: LimitGate.admit),
# its keys in this order ("spent" only when it took a rate token), and how that release
# read one back (its _replayed, verbatim): all it knows of a kept refusal.
OLD_SHAPE = ["id", "day", "admit", "reason", "message", "extra"]


def _replayed_by_the_release_before(decided: dict[str, Any]) -> LimitRejection:
    return LimitRejection(decided["reason"], decided["message"], decided["extra"], replay=True)


def _full(i: int) -> dict[str, Any]:
    """A refusal kept in full (the gate's own shape), as any kept before."""
    return {"id": f"{i:016x}", "day": "2026-09-21", "admit": False,
            "reason": "quota_exceeded", "message": "m", "extra": {}}  # fmt: skip


def _kept_entries(compact: bool = False) -> list[tuple[dict[str, Any], LimitRejection | None]]:
    """One kept decision of every kind, made by the gate at its longest, with what the
    gate answered (a rejection), each from a state that went through JSON. ``compact``:
    the state keeps FULL_REFUSALS refusals in full already, so refusals are kept as
    ``why``; else it keeps none, and they are kept in full."""
    out: list[tuple[dict[str, Any], LimitRejection | None]] = []

    def decide(limits: TenantLimits, command: str, data: Any, state: Any = None) -> None:
        gate, table = _gate(limits)
        if compact:
            state = {**(state or lim._fresh(0))}
            state["decided"] = {str(i): _full(i) for i in range(FULL_REFUSALS)}
        if state is not None:
            table[LimitGate.key("t")] = orjson.loads(orjson.dumps(state))
        got = gate.admit("t", limits, Record("c", 0, TOP, T0), command, data)
        assert got is not None
        entry = table[LimitGate.key("t")]["decided"][str(TOP)]
        out.append((entry, got if isinstance(got, LimitRejection) else None))

    rate = {"commands_per_second": 1_000_000, "burst": 10_000_000}
    all_but_last = {c: BIG for c in CODES[:-1]}
    # Currencies not allowed: every other code listed (the longest list), for each kind.
    decide(TenantLimits(only_listed_currencies=True, max_payment_amount=all_but_last, **rate),
           "payment.create", Pay(1, CODES[-1]))  # fmt: skip
    for command, field in (("transfer.create", "daily_transfer_volume"),
                           ("payout.create", "daily_payout_volume")):  # fmt: skip
        decide(TenantLimits(only_listed_currencies=True, max_payment_amount={"USD": 1},
                            **{field: all_but_last}, **rate),
               command, Pay(1, CODES[-1]))  # fmt: skip
    # Over the per-payment cap.
    decide(TenantLimits(max_payment_amount={"JPY": BIG - 1}, **rate), "payment.create",
           Pay(BIG, "JPY"))  # fmt: skip
    # Over a daily volume, with the day's volume used and holds at their largest.
    for command, field, prefix in (
        ("payment.create", "daily_payment_volume", ""),
        ("transfer.create", "daily_transfer_volume", "transfer:"),
        ("payout.create", "daily_payout_volume", "payout:"),
    ):
        for currency in ("JPY", "USD", "BHD"):  # no decimals, two, three
            state = {
                "partition": 0, "at_ms": T0, "tokens": None, "day": "2026-09-21",
                "volume": {prefix + currency: HUGE}, "decided": {},
                "held": {"h": ["2026-09-21", prefix + currency, HUGE, None]},
            }  # fmt: skip
            decide(TenantLimits(**{field: {currency: BIG}}, **rate), command,
                   Pay(MAX_MINOR_AMOUNT, currency), state)  # fmt: skip
            # Too many awaiting an answer.
            holds = {f"h{i}": ["2026-09-21", prefix + currency, 1, None] for i in range(MAX_HOLDS)}
            decide(TenantLimits(**{field: {currency: BIG}}, **rate), command,
                   Pay(1, currency), {**state, "held": holds, "volume": {}})  # fmt: skip
    # Over the rate limit (its largest numbers: a bucket emptied at the highest rate).
    decide(TenantLimits(**rate), "customer.create", None,
           {"partition": 0, "at_ms": T0, "tokens": 0, "day": "", "volume": {},
            "decided": {}, "held": {}})  # fmt: skip
    # Admissions: of a transfer (the longest bucket), of an invoice.pay (a named invoice).
    decide(TenantLimits(daily_transfer_volume={"USD": BIG}), "transfer.create",
           Pay(MAX_MINOR_AMOUNT, "USD"))  # fmt: skip
    decide(TenantLimits(daily_payment_volume={"USD": BIG}), "invoice.pay",
           InvoiceCharge(MAX_MINOR_AMOUNT, "USD", "in_" + "x" * 250))  # fmt: skip
    return out


def _holds() -> list[list[Any]]:
    """The longest hold of each kind, as the gate places them: a payment's of an invoice
    (it names the invoice and the request), a transfer's and a payout's."""
    out = []
    for command, field, data in (
        ("invoice.pay", "daily_payment_volume", InvoiceCharge(MAX_MINOR_AMOUNT, "USD", "in_1")),
        ("transfer.create", "daily_transfer_volume", Pay(MAX_MINOR_AMOUNT, "USD")),
        ("payout.create", "daily_payout_volume", Pay(MAX_MINOR_AMOUNT, "USD")),
    ):
        limits = TenantLimits(**{field: {"USD": BIG}})
        gate, table = _gate(limits)
        got = gate.admit("t", limits, Record("c", 0, 0, T0), command, data, request="r" * 300)
        assert isinstance(got, Admission)
        (hold,) = table[LimitGate.key("t")]["held"].values()
        hold[2] = BIG  # (a hold is never over its day's cap)
        out.append(hold)
    return out


def _longest(entries: list[tuple[dict[str, Any], LimitRejection | None]]) -> dict[str, Any]:
    return max((e for e, _ in entries), key=lambda e: len(orjson.dumps(e)))


def _worst_state() -> dict[str, Any]:
    """Every kept decision at its longest: FULL_REFUSALS refusals in full, the rest as
    ``why`` (or admissions, if longer), every hold and volume at its longest."""
    full, compact = _longest(_kept_entries()), _longest(_kept_entries(compact=True))
    assert "why" not in full and len(orjson.dumps(full)) > len(orjson.dumps(compact))
    decided = {
        str(TOP - i): {**(full if i < FULL_REFUSALS else compact), "id": f"{i:016x}",
                       "spent": True}
        for i in range(REPLAY_MEMORY)
    }  # fmt: skip
    held = {f"{kind}{i:015x}": hold for kind, hold in enumerate(_holds()) for i in range(MAX_HOLDS)}
    volume = {p + c: 2**63 - 1 for p in ("", "transfer:", "payout:") for c in CODES}
    return {"partition": 2**31 - 1, "at_ms": TOP, "tokens": 10_000_000 * 1000,
            "day": "2026-09-21", "volume": volume, "decided": decided, "held": held}  # fmt: skip


def _produced(state: dict[str, Any]) -> tuple[bytes, bytes]:
    """The changelog key and value the command agent produces for the tenant's state."""
    app = faust.App("limits-size-test", broker="kafka://127.0.0.1:1", store="memory://")
    table = app.tables.add(BatchedChangelogTable(app, name="limits", default=None, partitions=4))
    with collect_changelog() as batch:
        batch.add(table, 0, LimitGate.key(TENANT), state, None)
        (record,) = batch.records()
    assert record.key is not None and record.value is not None
    return record.key, record.value


def test_the_worst_limits_record_fits_its_budget_and_the_broker() -> None:
    key, value = _produced(_worst_state())
    assert len(value) <= LIMITS_RECORD_MAX_BYTES, len(value)
    # With the longest key, the record's own framing and a record batch's (under 100
    # bytes each; 1 KiB allowed), under what every topic paystream writes must take.
    assert len(key) + len(value) + 1024 <= RECORD_MAX_BYTES
    assert LIMITS_RECORD_MAX_BYTES + len(key) + 1024 <= RECORD_MAX_BYTES


def test_the_worst_case_is_the_gates_own() -> None:
    """The state above is what the gate keeps: past FULL_REFUSALS in full, refusals are
    kept as arguments, not as their (listing) messages, the longest under 200 bytes."""
    entries = _kept_entries(compact=True)
    refusals = [e for e, got in entries if got is not None]
    assert len(refusals) == len(entries) - 2 and all("why" in e for e in refusals)
    assert all("message" not in e and "extra" not in e for e in refusals)
    longest = max(refusals, key=lambda e: len(orjson.dumps(e)))
    assert len(orjson.dumps(longest)) < 200


def test_the_gate_keeps_at_most_full_refusals_in_full() -> None:
    """The first FULL_REFUSALS refusals of records not yet committed are kept in full,
    the next ones as ``why``; once the first are committed (forgotten), refusals are kept
    in full again. So no state holds more in full than the worst case above."""
    committed = [-1]
    limits = TenantLimits(max_payment_amount={"USD": 1})
    gate = LimitGate({}, clock_ms=lambda: T0, committed=lambda partition: committed[0])

    def refuse(offset: int) -> dict[str, Any]:
        got = gate.admit("t", limits, Record(f"c{offset}", 0, offset, T0), "payment.create",
                         Pay(2, "USD"))  # fmt: skip
        assert isinstance(got, LimitRejection)
        entry: dict[str, Any] = gate.table[LimitGate.key("t")]["decided"][str(offset)]
        return entry

    kept = [refuse(i) for i in range(FULL_REFUSALS + 5)]
    assert ["why" in e for e in kept] == [False] * FULL_REFUSALS + [True] * 5
    committed[0] = 3  # offsets 0-2 committed: three refusals in full fewer
    again = [refuse(FULL_REFUSALS + 5 + i) for i in range(4)]
    assert ["why" in e for e in again] == [False, False, False, True]
    decided = gate.table[LimitGate.key("t")]["decided"]
    assert sum("why" not in e for e in decided.values()) == FULL_REFUSALS


@pytest.mark.parametrize("compact", [False, True], ids=["full", "why"])
def test_kept_refusals_come_again_as_the_same_bytes(compact: bool) -> None:
    """Each kind of refusal, redelivered from a state that went through the changelog
    (JSON), is the rejection first given: the same reason, message and data, byte for
    byte, kept in full or as ``why``."""
    for entry, first in _kept_entries(compact):
        if first is None:
            continue
        assert ("why" in entry) is compact
        again = lim._replayed(orjson.loads(orjson.dumps(entry)))
        assert again.replay and (again.reason, again.message) == (first.reason, first.message)
        assert orjson.dumps(again.extra) == orjson.dumps(first.extra)


def test_few_kept_refusals_are_read_by_the_release_before() -> None:
    """A partition moved back to a worker of the release before (a rolling upgrade)
    finds a tenant's first FULL_REFUSALS refusals kept as that release kept them: the
    same keys in the same order, and its reader answers each redelivery with the very
    rejection first given (review h81rd M1: it failed with KeyError 'reason' on a
    ``why``)."""
    for entry, first in _kept_entries():
        if first is None:
            continue
        assert list(entry) in (OLD_SHAPE, [*OLD_SHAPE, "spent"]), entry
        again = _replayed_by_the_release_before(orjson.loads(orjson.dumps(entry)))
        assert (again.reason, again.message) == (first.reason, first.message)
        assert orjson.dumps(again.extra) == orjson.dumps(first.extra)


def test_a_code_with_no_place_is_kept_in_full(monkeypatch: pytest.MonkeyPatch) -> None:
    """A listed code missing from _CODE_ORDER (added to the accepted codes alone) leaves
    a currency refusal kept in full, even past FULL_REFUSALS, rather than fail the
    command (review h81rd L2); its redelivery is answered the same."""
    monkeypatch.setattr(lim, "_CODE_BIT", {c: i for c, i in lim._CODE_BIT.items() if c != "JPY"})
    limits = TenantLimits(only_listed_currencies=True, max_payment_amount={"JPY": 9, "USD": 9})
    gate, table = _gate(limits)
    state = lim._fresh(0)
    state["decided"] = {str(i): _full(i) for i in range(FULL_REFUSALS)}
    table[LimitGate.key("t")] = state
    rec = Record("c", 0, 500, T0)
    first = gate.admit("t", limits, rec, "payment.create", Pay(1, "EUR"))
    assert isinstance(first, LimitRejection) and first.extra["allowed"] == ["JPY", "USD"]
    entry = table[LimitGate.key("t")]["decided"]["500"]
    assert list(entry) == OLD_SHAPE, entry
    table[LimitGate.key("t")] = orjson.loads(orjson.dumps(table[LimitGate.key("t")]))
    again = gate.kept_rejection("t", rec)
    assert again == LimitRejection(first.reason, first.message, first.extra, replay=True)
    # With every code in place, the same refusal is kept as ``why``.
    monkeypatch.undo()
    gate.admit("t", limits, Record("c2", 0, 501, T0), "payment.create", Pay(1, "EUR"))
    assert table[LimitGate.key("t")]["decided"]["501"]["why"][0] == "currencies"


def test_a_refusal_kept_by_the_previous_release_is_answered_as_kept() -> None:
    """A worker upgraded mid-day reads kept refusals of the old shape (reason, message
    and data in full) and answers their redeliveries with them."""
    limits = TenantLimits(commands_per_second=1)
    gate, table = _gate(limits)
    old = {"id": lim._tag("c1"), "day": "2026-09-21", "admit": False,
           "reason": "quota_exceeded", "message": "as it was worded then",
           "extra": {"limit": "currencies", "currency": "EUR", "allowed": ["USD"]}}  # fmt: skip
    table[LimitGate.key("t")] = {"partition": 0, "at_ms": T0, "tokens": 0, "day": "",
                                 "volume": {}, "decided": {"5": old}, "held": {}}  # fmt: skip
    got = gate.admit("t", limits, Record("c1", 0, 5, T0), "payment.create", Pay(1, "EUR"))
    assert got == LimitRejection(
        "quota_exceeded", "as it was worded then", old["extra"], replay=True
    )
    assert gate.kept_rejection("t", Record("c1", 0, 5, T0)) == got


def test_currency_codes_keep_their_places() -> None:
    """Kept refusals name currencies by their place in _CODE_ORDER: every accepted code
    has one, and the places of the first 51 never change (append-only)."""
    order = lim._CODE_ORDER
    assert len(set(order)) == len(order) and set(CURRENCY_EXPONENTS) <= set(order)
    digest = hashlib.sha256(",".join(order[:51]).encode()).hexdigest()
    assert digest == FIRST_51, digest
    for codes in ([], ["USD"], CODES, CODES[::7]):
        assert lim._listed(lim._codes(codes)) == sorted(codes)


@pytest.mark.parametrize("name", sorted(lim._REFUSALS))
def test_every_builder_is_exercised(name: str) -> None:
    assert any(e.get("why", [None])[0] == name for e, _ in _kept_entries(compact=True))


FIRST_51 = "ca5836eb3da6bc90799b14817d68e045aae51f077c04090db70522078c37f52d"


def test_a_listed_set_is_a_new_list_each_time() -> None:
    """The codes a currency refusal lists go into its data: one rejection's list (cached
    by its mask) changed by a caller must not change the next one's."""
    codes = lim._codes(["USD", "EUR"])
    first = lim._listed(codes)
    first.append("JPY")
    assert lim._listed(codes) == ["EUR", "USD"]

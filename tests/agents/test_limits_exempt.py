"""A webhook's sealed refresh (``exempt``) spends none of the tenant's tokens, nor stops
its bucket refilling (review of 1b757b2)."""

from __future__ import annotations

import copy

from paystream.tenancy.limits import Admission, LimitGate, Record, TenantLimits

T0 = 1_700_000_000_000
LIMITS = TenantLimits(commands_per_second=1, burst=2)


def test_exempt_refreshes_do_not_stop_the_bucket_refilling() -> None:
    gate = LimitGate({}, clock_ms=lambda: 10**13)
    offsets = iter(range(10**6))

    def admit(cid: str, ms: int, exempt: bool = False) -> object:
        rec = Record(cid, 0, next(offsets), ms)
        return gate.admit("t", LIMITS, rec, "payment.refresh", None, exempt=exempt)

    for i in range(2):
        assert isinstance(admit(f"c{i}", T0), Admission)  # the bucket drained
    got = []
    for i in range(1, 101):  # webhooks at 10/s, the tenant at its own 1/s
        assert isinstance(admit(f"h{i}", T0 + i * 100 + 50, exempt=True), Admission)
        if i % 10 == 0:
            got.append(type(admit(f"t{i}", T0 + i * 100 + 60)).__name__)
    assert got == ["Admission"] * 10


def test_an_exempt_refresh_answered_from_its_record_spends_nothing() -> None:
    table: dict = {}
    gate = LimitGate(table, clock_ms=lambda: 10**13)
    gate.admit("t", LIMITS, Record("c0", 0, 0, T0), "payment.refresh", None)
    before = copy.deepcopy(table)
    rec = Record("whk", 0, 1, T0)
    gate.admit("t", LIMITS, rec, "payment.refresh", None, exempt=True)
    first = table["t:limits"]["tokens"]
    table.clear()
    table.update(before)  # a crash lost the limits write, kept the idempotency record
    gate.account_answered("t", LIMITS, rec, "payment.refresh", "payment.succeeded", {}, exempt=True)
    assert table["t:limits"]["tokens"] == first

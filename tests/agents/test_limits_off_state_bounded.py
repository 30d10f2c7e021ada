"""With every limit off, a tenant's limits state is kept while the day has holds, never
grows (no hold is added, decisions are bounded by the commit), and is dropped by the first
command two days after the last hold's day (review h67m)."""

from __future__ import annotations

from typing import Any

from paystream.tenancy.limits import LimitGate, Record, TenantLimits
from tests.tenancy.test_limits import DAY_MS, T0, Pay

ON = TenantLimits(daily_payment_volume={"USD": 1000})
OFF = TenantLimits()


def test_limits_off_state_kept_then_dropped_on_a_later_day() -> None:
    table: dict[str, Any] = {}
    committed = {0: -1}
    gate = LimitGate(table, clock_ms=lambda: T0 + 10 * DAY_MS, committed=lambda p: committed[0])
    parked = gate.admit("t1", ON, Record("a", 0, 0, T0), "payment.create", Pay(900))
    assert parked is not None  # held, never settled (parked)
    committed[0] = 1
    # limits off: the same day and the next, payments and other commands keep the state
    for i in range(1, 3000):
        cmd = "payment.create" if i % 2 else "customer.create"
        data = Pay(1) if i % 2 else None
        at = T0 + (i * DAY_MS) // 3000  # within D and D+1
        got = gate.admit("t1", OFF, Record(f"c{i}", 0, i, at), cmd, data)
        if got is not None and cmd == "payment.create":
            gate.settle(got, "payment.succeeded")  # type: ignore[arg-type]
        committed[0] = i  # committed as it goes
        state = table["t1:limits"]
        assert len(state["held"]) == 1  # no hold added while limits are off
        assert len(state["decided"]) <= 2
    # two days after the hold's day: the first command drops the state
    committed[0] = 10_000
    later = Record("z", 0, 5000, T0 + 2 * DAY_MS + 1)
    assert gate.admit("t1", OFF, later, "customer.create", None) is None
    assert "t1:limits" not in table

"""Limit rules the limits suite did not pin (mutation testing, round 3)."""

from __future__ import annotations

from paystream.tenancy.limits import Admission, LimitRejection, TenantLimits
from tests.tenancy.test_limits import T0, Gate, Pay, rejected


def test_an_older_timestamp_does_not_turn_the_tenants_clock_back() -> None:
    """Timestamps are non-decreasing per tenant: one from a producer whose clock is behind
    must not become the point the next refill is counted from (it would buy the tenant a
    full bucket: 50 s of refill for nothing)."""
    g = Gate(TenantLimits(commands_per_second=1, burst=1), now_ms=T0 + 1_000)
    assert isinstance(g.send(T0), Admission)
    assert isinstance(g.send(T0 - 50_000), LimitRejection)
    assert isinstance(g.send(T0), LimitRejection)  # no time passed since the admission
    assert g.table["t1:limits"]["at_ms"] == T0


def test_a_payment_sent_again_under_a_new_command_id_is_held_once() -> None:
    """A chosen-id payment sent again by the same request under a new command id is one
    payment: its own hold must not count against it a second time."""
    g = Gate(TenantLimits(daily_payment_volume={"USD": 1000}))
    first = g.send(T0, "payment.create", Pay(600), hold_key="@payment:p1", request="r-a")
    assert isinstance(first, Admission)
    again = g.send(
        T0, "payment.create", Pay(600), cid="another-id", hold_key="@payment:p1", request="r-a"
    )
    assert isinstance(again, Admission), again
    assert again.hold == first.hold
    # ...and it still holds its amount against others.
    over = rejected(g.pay(500, hold_key="other"), "quota_exceeded")
    assert over.extra["held"] == 600


def test_a_batchs_decisions_are_kept_until_committed() -> None:
    """A batch is up to 500 commands, redelivered whole after a crash: each keeps its
    decision. A rejected command decided afresh later (its bucket refilled) would run
    after its sender was told it was rejected."""
    g = Gate(TenantLimits(commands_per_second=1, burst=1))
    assert isinstance(g.send(T0), Admission)  # offset 0
    refused = rejected(g.send(T0), "rate_limited")  # offset 1
    for _ in range(498):
        g.send(T0)
    again = g.send(T0 + 60_000, offset=1, cid="c1")  # the crash's redelivery, a minute on
    assert isinstance(again, LimitRejection) and again.replay
    assert again.extra == refused.extra

"""Tenant limits: token bucket, payment quotas, replay decisions, validation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import ValidationError

from paystream.tenancy.limits import (
    MAX_FUTURE_SKEW_MS,
    REPLAY_MEMORY,
    Admission,
    LimitGate,
    LimitRejection,
    TenantLimits,
)
from paystream.tenancy.models import Tenant

T0 = 1_790_000_000_000  # 2026-09-21T..., a fixed record timestamp (ms)
DAY_MS = 86_400_000


@dataclass
class Pay:
    amount: int
    currency: str = "USD"


class Gate:
    """A LimitGate with a fixed clock and an offset counter, like one partition."""

    def __init__(self, limits: TenantLimits, now_ms: int = T0 + DAY_MS * 10) -> None:
        self.table: dict[str, Any] = {}
        self.gate = LimitGate(self.table, clock_ms=lambda: now_ms)
        self.limits = limits
        self.offset = 0

    def send(
        self,
        at_ms: int = T0,
        command: str = "customer.create",
        data: Any = None,
        offset: int | None = None,
    ) -> Admission | LimitRejection:
        if offset is None:
            offset, self.offset = self.offset, self.offset + 1
        return self.gate.admit(
            "t1", self.limits, offset=offset, timestamp_ms=at_ms, command_type=command, data=data
        )

    def pay(
        self, amount: int, at_ms: int = T0, outcome: str = "payment.succeeded", **kw: Any
    ) -> Any:
        got = self.send(at_ms, "payment.create", Pay(amount, **kw))
        if isinstance(got, Admission):
            self.gate.settle(got, outcome)
        return got


def rejected(got: object, reason: str) -> LimitRejection:
    assert isinstance(got, LimitRejection), got
    assert got.reason == reason
    return got


def test_bucket_allows_a_burst_then_refills_at_the_rate() -> None:
    g = Gate(TenantLimits(commands_per_second=2, burst=3))
    assert all(isinstance(g.send(T0), Admission) for _ in range(3))
    over = rejected(g.send(T0), "rate_limited")
    assert over.extra == {"limit": "commands_per_second", "retry_after_ms": 500}
    assert "2 commands/s (burst 3)" in over.message
    assert isinstance(g.send(T0 + 499), LimitRejection)  # 998 milli-tokens: not yet
    assert isinstance(g.send(T0 + 500), Admission)
    # A long pause refills to the burst, never beyond it.
    assert all(isinstance(g.send(T0 + 60_000), Admission) for _ in range(3))
    assert isinstance(g.send(T0 + 60_000), LimitRejection)


def test_burst_defaults_to_the_rate() -> None:
    g = Gate(TenantLimits(commands_per_second=5))
    assert [isinstance(g.send(T0), Admission) for _ in range(6)] == [True] * 5 + [False]


def test_older_timestamps_refill_nothing_and_future_ones_are_capped() -> None:
    now = T0 + 1_000
    g = Gate(TenantLimits(commands_per_second=1, burst=1), now_ms=now)
    assert isinstance(g.send(T0), Admission)
    # Out of order (another producer's clock): time does not run backwards.
    assert isinstance(g.send(T0 - 50_000), LimitRejection)
    # A timestamp far in the future counts as the worker's clock plus the allowed skew...
    far = now + 10 * MAX_FUTURE_SKEW_MS
    assert isinstance(g.send(far), Admission)
    # ...so it cannot buy a refill beyond that moment.
    assert isinstance(g.send(far), LimitRejection)
    assert g.table["t1:limits"]["at_ms"] == now + MAX_FUTURE_SKEW_MS


def test_per_payment_cap_is_per_currency_and_only_for_payments() -> None:
    g = Gate(TenantLimits(max_payment_amount={"usd": 1000}))
    assert isinstance(g.pay(1000), Admission)
    over = rejected(g.pay(1001), "quota_exceeded")
    assert over.extra == {"limit": "max_payment_amount", "currency": "USD", "allowed": 1000}
    assert isinstance(g.pay(50_000, currency="EUR"), Admission)
    assert isinstance(g.send(T0, "refund.create", Pay(50_000)), Admission)


def test_daily_volume_counts_money_that_moved_per_utc_day() -> None:
    g = Gate(TenantLimits(daily_payment_volume={"USD": 3000}))
    assert isinstance(g.pay(1000), Admission)
    assert isinstance(g.pay(1500, outcome="payment.authorized"), Admission)
    assert isinstance(g.pay(2000, outcome="payment.failed"), LimitRejection)  # 2500+2000
    assert isinstance(g.pay(400, outcome="payment.failed"), Admission)  # a decline: not counted
    over = rejected(g.pay(600), "quota_exceeded")
    assert over.extra["used"] == 2500 and over.extra["allowed"] == 3000
    assert over.extra["limit"] == "daily_payment_volume"
    assert isinstance(g.pay(500), Admission)  # exactly at the limit
    next_day = T0 + DAY_MS
    assert isinstance(g.pay(3000, at_ms=next_day), Admission)
    assert g.table["t1:limits"]["volume"] == {"USD": 3000}


def test_a_redelivered_command_gets_the_same_decision_and_is_not_counted_twice() -> None:
    g = Gate(TenantLimits(commands_per_second=1, burst=1, daily_payment_volume={"USD": 1500}))
    first = g.pay(1000)
    assert isinstance(first, Admission)
    over = rejected(g.send(T0), "rate_limited")
    before = dict(g.table["t1:limits"])
    # Redelivery of offsets 0 and 1 after a crash (the state was persisted).
    again = g.send(T0, "payment.create", Pay(1000), offset=0)
    assert isinstance(again, Admission) and again.replay
    g.gate.settle(again, "payment.succeeded")  # a replay settles nothing
    assert g.send(T0, offset=1) == over
    assert g.table["t1:limits"] == before
    # A later record of the same command (sent again by the client) is new traffic.
    assert isinstance(g.send(T0 + 1_000), Admission)


def test_commands_without_an_offset_are_never_taken_for_replays() -> None:
    g = Gate(TenantLimits(commands_per_second=1, burst=1))
    assert isinstance(g.send(T0, offset=-1), Admission)
    assert isinstance(g.send(T0, offset=-1), LimitRejection)
    assert g.table["t1:limits"]["through"] == -1


def test_remembered_rejections_are_bounded() -> None:
    g = Gate(TenantLimits(commands_per_second=1, burst=1))
    g.send(T0)
    for _ in range(REPLAY_MEMORY + 50):
        g.send(T0)
    rejected_offsets = [int(k) for k in g.table["t1:limits"]["rejected"]]
    assert len(rejected_offsets) == REPLAY_MEMORY
    assert rejected_offsets[-1] == g.offset - 1  # the newest are kept


def test_limits_validation() -> None:
    assert not TenantLimits().enforced
    assert TenantLimits(daily_payment_volume={"eur": 5}).daily_payment_volume == {"EUR": 5}
    with pytest.raises(ValidationError, match="burst needs commands_per_second"):
        TenantLimits(burst=5)
    with pytest.raises(ValidationError):
        TenantLimits(commands_per_second=0)
    with pytest.raises(ValidationError, match="unsupported currency"):
        TenantLimits(max_payment_amount={"XXX1": 5})
    with pytest.raises(ValidationError):
        TenantLimits(max_payment_amount={"USD": -1})
    with pytest.raises(ValidationError):
        TenantLimits(commands_per_second=1.5)  # type: ignore[arg-type]


def test_tenant_records_without_limits_still_parse() -> None:
    old = {"tenant_id": "acme", "name": "Acme", "status": "active", "gateway": "simulator"}
    assert Tenant.model_validate(old).limits == TenantLimits()
    with_limits = Tenant(tenant_id="acme", limits=TenantLimits(commands_per_second=10))
    assert Tenant.model_validate(with_limits.model_dump(mode="json")) == with_limits

"""Tenant limits: token bucket, payment quotas, replay decisions, validation."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import ValidationError

from paystream.tenancy.limits import (
    MAX_FUTURE_SKEW_MS,
    REPLAY_MEMORY,
    Admission,
    InvoiceCharge,
    LimitGate,
    LimitRejection,
    Record,
    TenantLimits,
)
from paystream.tenancy.models import Tenant
from paystream.tenancy.registry import tenant_record

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

    def record(self, at_ms: int = T0, offset: int | None = None, cid: str | None = None) -> Record:
        if offset is None:
            offset, self.offset = self.offset, self.offset + 1
        return Record(cid or f"c{offset}", 0, offset, at_ms)

    def send(
        self,
        at_ms: int = T0,
        command: str = "customer.create",
        data: Any = None,
        offset: int | None = None,
        cid: str | None = None,
        **kw: Any,
    ) -> Admission | LimitRejection | None:
        rec = self.record(at_ms, offset, cid)
        return self.gate.admit("t1", self.limits, rec, command, data, **kw)

    def pay(
        self, amount: int, at_ms: int = T0, outcome: str = "payment.succeeded", **kw: Any
    ) -> Any:
        currency = kw.pop("currency", "USD")
        got = self.send(at_ms, "payment.create", Pay(amount, currency), **kw)
        if isinstance(got, Admission):
            self.gate.settle(got, outcome)
        return got

    @property
    def state(self) -> dict[str, Any]:
        return dict(self.table["t1:limits"])


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
    # People read the message: major units (the extra keeps minor units for machines).
    assert "10.01 USD" in over.message and "limit of 10.00 USD" in over.message
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
    assert "6.00 USD" in over.message and "to 31.00 USD" in over.message
    assert "daily limit of 30.00 USD" in over.message
    assert isinstance(g.pay(500), Admission)  # exactly at the limit
    next_day = T0 + DAY_MS
    assert isinstance(g.pay(3000, at_ms=next_day), Admission)
    assert g.table["t1:limits"]["volume"] == {"USD": 3000}


def test_a_redelivered_record_gets_the_same_decision_and_is_not_counted_twice() -> None:
    g = Gate(TenantLimits(commands_per_second=1, burst=1, daily_payment_volume={"USD": 1500}))
    first = g.pay(1000)
    assert isinstance(first, Admission)
    over = rejected(g.send(T0), "rate_limited")
    assert not over.replay
    before = copy.deepcopy(g.state)
    # Offsets 0 and 1 come again after a crash (the state was persisted).
    again = g.pay(1000, offset=0, cid="c0")
    assert isinstance(again, Admission) and again.currency is None  # counted already
    again_over = rejected(g.send(T0, offset=1, cid="c1"), "rate_limited")
    assert again_over.replay and again_over.message == over.message
    assert g.state == before
    # A later record of the same command (sent again by the client) is new traffic.
    assert isinstance(g.send(T0 + 1_000, cid="c1"), Admission)


def test_a_payment_parked_then_redelivered_is_counted_when_it_succeeds() -> None:
    g = Gate(TenantLimits(daily_payment_volume={"USD": 1000}))
    parked = g.send(T0, "payment.create", Pay(900))
    assert isinstance(parked, Admission)  # the provider was down: nothing settled
    again = g.send(T0, "payment.create", Pay(900), offset=0, cid="c0")
    assert isinstance(again, Admission) and again.currency == "USD"
    g.gate.settle(again, "payment.succeeded")
    g.gate.settle(again, "payment.succeeded")  # a third delivery counts nothing more
    assert g.state["volume"] == {"USD": 900}
    assert isinstance(g.pay(200), LimitRejection)


def test_a_parked_payment_of_a_day_already_over_does_not_reset_the_next_days_volume() -> None:
    g = Gate(TenantLimits(daily_payment_volume={"USD": 1000}))
    midnight = T0 - T0 % DAY_MS + DAY_MS
    parked = g.send(midnight - 1_000, "payment.create", Pay(100))  # day D, never settled
    assert isinstance(parked, Admission)
    assert isinstance(g.pay(900, at_ms=midnight + 1_000), Admission)  # day D+1
    # Redelivered after a crash, the parked payment now succeeds: it counts for day D.
    again = g.send(midnight - 1_000, "payment.create", Pay(100), offset=0, cid="c0")
    assert isinstance(again, Admission)
    g.gate.settle(again, "payment.succeeded")
    assert g.state["volume"] == {"USD": 900}  # D+1 keeps its 900
    rejected(g.pay(200, at_ms=midnight + 2_000), "quota_exceeded")


def test_an_unanswered_payment_holds_its_amount_until_settled() -> None:
    g = Gate(TenantLimits(daily_payment_volume={"USD": 1000}))
    parked = g.send(T0, "payment.create", Pay(900), hold_key="t1:k1")
    assert isinstance(parked, Admission)  # the provider was down: parked, not settled
    over = rejected(g.pay(200, hold_key="t1:k2"), "quota_exceeded")
    assert (over.extra["used"], over.extra["held"]) == (0, 900)
    # Re-driven (a new record, admitted before): it passes and takes its hold over.
    redriven = g.send(T0, "payment.create", Pay(900), admitted_before=True, hold_key="t1:k1")
    assert isinstance(redriven, Admission)
    g.gate.settle(redriven, "payment.succeeded")
    assert g.state["volume"] == {"USD": 900} and g.state["held"] == {}
    assert isinstance(g.pay(100, hold_key="t1:k3"), Admission)
    # A payment answered without money moving releases its hold and counts nothing.
    g2 = Gate(TenantLimits(daily_payment_volume={"USD": 1000}))
    for outcome in ("payment.failed", "command.rejected"):
        assert isinstance(g2.pay(1000, outcome=outcome), Admission)
    assert g2.state["held"] == {} and g2.state["volume"] == {}


def test_a_hold_counts_until_the_end_of_the_next_day() -> None:
    """A payment parked before midnight is counted on the day it is answered: until
    then it holds against that day too. After that the provider's window is over."""
    g = Gate(TenantLimits(daily_payment_volume={"USD": 1000}))
    assert isinstance(g.send(T0, "payment.create", Pay(900)), Admission)  # parked
    over = rejected(g.pay(200, at_ms=T0 + DAY_MS), "quota_exceeded")
    assert over.extra["held"] == 900
    assert isinstance(g.pay(1000, at_ms=T0 + 2 * DAY_MS), Admission)
    assert g.state["held"] == {}  # the old hold is dropped, not just ignored


def test_a_record_admitted_before_passes_unchecked_but_spends_a_token() -> None:
    g = Gate(TenantLimits(commands_per_second=1, burst=2, max_payment_amount={"USD": 10}))
    g.send(T0)
    # A parked command re-driven (a new record, same command): over every limit, let
    # through; it spends the bucket's last token as any admission would.
    redriven = g.send(T0, "payment.create", Pay(5000), admitted_before=True)
    assert isinstance(redriven, Admission)
    assert g.state["tokens"] == 0
    assert isinstance(g.send(T0, "payment.create", Pay(5000), admitted_before=True), Admission)
    assert g.state["tokens"] == 0  # none left is none, not a debt
    assert isinstance(g.send(T0 + 1_000), Admission)


def test_a_forgotten_quota_refusal_gives_its_rate_token_back() -> None:
    """A quota refusal takes a rate token (every command the tenant sends counts toward
    its rate). Forgotten (the command turned out to have taken effect, and is admitted
    as let through; or it is parked unanswered), it gives the token back: one command
    pays one token, not two (review finding)."""
    g = Gate(TenantLimits(commands_per_second=1, burst=2, max_payment_amount={"USD": 1000}))
    rec = g.record(T0)
    rejected(g.gate.admit("t1", g.limits, rec, "payment.create", Pay(5000)), "quota_exceeded")
    assert g.state["tokens"] == 1_000
    g.gate.forget_decision("t1", rec)
    assert g.state["tokens"] == 2_000
    let_through = g.gate.admit(
        "t1", g.limits, rec, "payment.create", Pay(5000), admitted_before=True
    )
    assert isinstance(let_through, Admission)
    assert isinstance(g.send(T0 + 1), Admission)  # burst 2: this command's token is there
    rejected(g.send(T0 + 2), "rate_limited")


def test_forgetting_a_rate_limit_refusal_gives_back_nothing() -> None:
    """A command refused for the rate took no token: forgetting it leaves the bucket."""
    g = Gate(TenantLimits(commands_per_second=1, burst=1))
    g.send(T0)
    rec = g.record(T0 + 1)
    rejected(g.gate.admit("t1", g.limits, rec, "customer.create", None), "rate_limited")
    before = g.state["tokens"]
    g.gate.forget_decision("t1", rec)
    assert g.state["tokens"] == before


def test_an_answered_redelivery_is_accounted_once() -> None:
    g = Gate(TenantLimits(commands_per_second=1, burst=2, daily_payment_volume={"USD": 5000}))
    rec = g.record(T0)
    answered = {"object": {"amount": 700, "currency": "USD"}}
    for _ in range(2):
        g.gate.account_answered(
            "t1", g.limits, rec, "payment.create", "payment.succeeded", answered
        )
    assert g.state["volume"] == {"USD": 700} and g.state["tokens"] == 1000
    assert isinstance(g.send(T0), Admission)
    assert isinstance(g.send(T0), LimitRejection)


def test_removed_limits_still_answer_redeliveries_of_their_rejections() -> None:
    g = Gate(TenantLimits(commands_per_second=1, burst=1))
    g.send(T0)
    over = rejected(g.send(T0), "rate_limited")
    g.limits = TenantLimits()
    assert g.send(T0, offset=1, cid="c1") == LimitRejection(
        over.reason, over.message, over.extra, replay=True
    )
    assert g.send(T0) is None  # new records: no limits


def test_decisions_of_committed_records_are_dropped() -> None:
    committed = {0: -1}
    g = Gate(TenantLimits(commands_per_second=1, burst=1))
    g.gate = LimitGate(g.table, clock_ms=lambda: T0, committed=lambda p: committed[p])
    for _ in range(5):
        g.send(T0)
    assert list(g.state["decided"]) == ["0", "1", "2", "3", "4"]
    committed[0] = 3  # offsets 0-2 will never come again
    g.send(T0)
    assert list(g.state["decided"]) == ["3", "4", "5"]
    # Limits removed: the state goes once nothing it holds can be redelivered.
    g.limits = TenantLimits()
    committed[0] = 6
    assert g.send(T0) is None
    assert g.table == {}


def test_an_unlimited_tenant_keeps_no_state() -> None:
    g = Gate(TenantLimits())
    assert g.send(T0) is None
    assert g.table == {}


def test_a_rate_limit_set_later_starts_with_a_full_bucket() -> None:
    g = Gate(TenantLimits(commands_per_second=1, burst=1))
    g.send(T0)
    g.limits = TenantLimits(max_payment_amount={"USD": 100})
    g.send(T0 + 1)
    assert g.state["tokens"] is None
    g.limits = TenantLimits(commands_per_second=1, burst=1)
    assert isinstance(g.send(T0 + 2), Admission)


def test_records_without_an_offset_are_never_taken_for_redeliveries() -> None:
    g = Gate(TenantLimits(commands_per_second=1, burst=1))
    assert isinstance(g.send(T0, offset=-1, cid="x"), Admission)
    assert isinstance(g.send(T0, offset=-1, cid="x"), LimitRejection)
    assert g.state["decided"] == {}


def test_offsets_of_another_log_are_not_taken_for_redeliveries() -> None:
    g = Gate(TenantLimits(commands_per_second=1, burst=1))
    g.send(T0)
    g.send(T0)  # offset 1 rejected
    # The topic was recreated: offset 1 now holds another command.
    assert isinstance(g.send(T0 + 5_000, offset=1, cid="new"), Admission)
    # The tenant's commands moved to another partition: its offsets start over.
    moved = Record("c1", 3, 1, T0 + 10_000)
    assert isinstance(g.gate.admit("t1", g.limits, moved, "customer.create", None), Admission)
    assert list(g.state["decided"]) == ["1"] and g.state["partition"] == 3


def test_remembered_decisions_are_bounded_and_dropped_ones_are_decided_afresh() -> None:
    g = Gate(TenantLimits(commands_per_second=1, burst=1))
    g.send(T0)
    for _ in range(REPLAY_MEMORY + 50):
        g.send(T0)
    decided = [int(k) for k in g.state["decided"]]
    assert len(decided) <= REPLAY_MEMORY
    assert decided[-1] == g.offset - 1  # the newest are kept
    assert "0" not in g.state["decided"]
    # Offset 0 (admitted, decision dropped) comes again: decided afresh, not let through.
    assert isinstance(g.send(T0, offset=0, cid="c0"), LimitRejection)


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
    with pytest.raises(ValidationError, match="USD is given twice"):
        TenantLimits(max_payment_amount={"usd": 1, "USD": 2})
    with pytest.raises(ValidationError, match="only_listed_currencies needs"):
        TenantLimits(commands_per_second=5, only_listed_currencies=True)
    assert TenantLimits(daily_payment_volume={"EUR": 5}, only_listed_currencies=True).enforced


def test_tenant_records_without_limits_still_parse() -> None:
    old = {"tenant_id": "acme", "name": "Acme", "status": "active", "gateway": "simulator"}
    assert Tenant.model_validate(old).limits == TenantLimits()
    with_limits = Tenant(tenant_id="acme", limits=TenantLimits(commands_per_second=10))
    assert Tenant.model_validate(with_limits.model_dump(mode="json")) == with_limits


def test_registry_records_leave_out_unused_limits_for_older_workers() -> None:
    plain = tenant_record(Tenant(tenant_id="acme"))
    assert "limits" not in plain
    # What a worker from before limits existed parses (extra fields forbidden):
    assert set(plain) == {
        "tenant_id", "name", "status", "gateway", "gateway_options", "secrets",
        "connected_account",
    }  # fmt: skip
    limited = tenant_record(Tenant(tenant_id="acme", limits=TenantLimits(commands_per_second=3)))
    assert limited["limits"]["commands_per_second"] == 3  # type: ignore[index]


def test_limits_read_for_operators() -> None:
    assert TenantLimits().describe() == "none"
    only = TenantLimits(
        max_payment_amount={"USD": 500},
        daily_payment_volume={"EUR": 9},
        only_listed_currencies=True,
    )
    assert only.describe() == ("≤ 5.00 USD per payment · ≤ 0.09 EUR per day · only EUR, USD")
    both = TenantLimits(
        commands_per_second=50,
        burst=80,
        max_payment_amount={"JPY": 100_000, "USD": 250_000},
        daily_payment_volume={"KWD": 1_234_567},
    )
    assert both.describe() == (
        "50/s (burst 80) · ≤ 100000 JPY per payment · ≤ 2500.00 USD per payment"
        " · ≤ 1234.567 KWD per day"
    )
    # Above what one Money holds (a won limit of about USD 75M a day): /v1/stats, which
    # describes every tenant's limits, answered 500 for all of them.
    big = TenantLimits(daily_payment_volume={"KRW": 100_000_000_000})
    assert big.describe() == "≤ 100000000000 KRW per day"


def test_another_request_for_a_held_payment_id_holds_its_own_amount() -> None:
    """Two requests naming payment p1 (one provider key), both parked before the provider
    saw either: the second held nothing, so the day filled up behind it, and when it was
    re-driven first it charged on top of a full day."""
    g = Gate(TenantLimits(daily_payment_volume={"USD": 1000}))
    first = g.send(T0, "payment.create", Pay(50), hold_key="@payment:p1", request="r-a")
    second = g.send(T0, "payment.create", Pay(900), hold_key="@payment:p1", request="r-b")
    assert isinstance(first, Admission) and isinstance(second, Admission)
    assert first.hold != second.hold
    over = rejected(g.pay(100, hold_key="other"), "quota_exceeded")
    assert over.extra["held"] == 950
    # The provider refuses the second (one key, other parameters): it releases its own.
    g.gate.settle(second, "command.rejected")
    assert [h[2] for h in g.state["held"].values()] == [50]
    # Re-driven, each finds its own hold again.
    again = g.send(
        T0, "payment.create", Pay(50), admitted_before=True, hold_key="@payment:p1", request="r-a"
    )
    assert isinstance(again, Admission) and again.hold == first.hold


def test_a_redelivery_answered_from_its_record_releases_only_its_own_hold() -> None:
    g = Gate(TenantLimits(daily_payment_volume={"USD": 1000}))
    parked = g.send(T0, "payment.create", Pay(600), hold_key="@payment:p1", request="r-a")
    assert isinstance(parked, Admission)
    # Another request for p1, answered (refused); its redelivery after a crash lost the
    # limits write is accounted from its idempotency record.
    rec = g.record(T0)
    g.gate.account_answered(
        "t1", g.limits, rec, "payment.create", "command.rejected", {},
        hold_key="@payment:p1", request="r-b",
    )  # fmt: skip
    over = rejected(g.pay(500, hold_key="other"), "quota_exceeded")
    assert over.extra["held"] == 600


@pytest.mark.parametrize("outcome", ["payment.requires_action", "payment.processing"])
def test_a_payment_awaiting_authentication_or_processing_counts_toward_the_day(
    outcome: str,
) -> None:
    """It may still complete (the cardholder authenticates later): not counted, a tenant
    could pass its daily volume with such payments (mutation testing)."""
    g = Gate(TenantLimits(daily_payment_volume={"USD": 1000}))
    assert isinstance(g.pay(800, outcome=outcome), Admission)
    rejected(g.pay(300), "quota_exceeded")


# The daily volume counts from when its limit is set (README); a currency's payments made
# while only another currency was limited were counted, and refused its first payment once
# its own limit was set the same day (review h68g).
def test_a_currency_limit_set_mid_day_counts_from_when_it_is_set() -> None:
    g = Gate(TenantLimits(daily_payment_volume={"USD": 100_000}))
    # EUR is not limited: 9,000.00 EUR move, as the tenant is allowed to.
    assert isinstance(g.pay(900_000, currency="EUR"), Admission)
    # The operator caps EUR at 5,000.00 a day, later the same day.
    g.limits = TenantLimits(daily_payment_volume={"USD": 100_000, "EUR": 500_000})
    got = g.pay(10_000, at_ms=T0 + 60_000, currency="EUR")
    # Counted from when the limit is set: 100.00 EUR of 5,000.00 is within it.
    assert isinstance(got, Admission), got


def test_same_without_any_limit_before() -> None:
    """(For contrast: with no volume limit at all before, nothing was counted.)"""
    g = Gate(TenantLimits(max_payment_amount={"USD": 10**9}))
    assert isinstance(g.pay(900_000, currency="EUR"), Admission)
    g.limits = TenantLimits(daily_payment_volume={"EUR": 500_000})
    assert isinstance(g.pay(10_000, at_ms=T0 + 60_000, currency="EUR"), Admission)


def test_an_invoice_learnt_paid_is_counted_once_and_its_pays_hold_released() -> None:
    """An invoice.pay parked (its InvoiceCharge held, naming its invoice); an
    invoice.refresh learns the invoice paid: counted once however often that record is
    delivered, the pay's hold released (review h78o M1b)."""
    g = Gate(TenantLimits(daily_payment_volume={"EUR": 80_000}))
    pay = g.send(T0, "invoice.pay", InvoiceCharge(50_000, "EUR", "in_1"))
    assert isinstance(pay, Admission) and g.state["held"]
    rec = g.record(T0)
    for _ in range(2):  # (its record delivered again: its decision says it counted)
        refresh = g.gate.admit("t1", g.limits, rec, "invoice.refresh", None)
        assert isinstance(refresh, Admission)
        g.gate.count_learnt(refresh, g.limits, "EUR", 50_000, "in_1")
    assert g.state["volume"] == {"EUR": 50_000} and not g.state["held"]
    # (a pay of another invoice keeps its hold)
    other = g.send(T0, "invoice.pay", InvoiceCharge(20_000, "EUR", "in_2"))
    assert isinstance(other, Admission)
    again = g.send(T0, "invoice.refresh")
    assert isinstance(again, Admission)
    g.gate.count_learnt(again, g.limits, "EUR", 0, "in_1")
    assert len(g.state["held"]) == 1 and g.state["volume"] == {"EUR": 50_000}


def test_an_invoice_learnt_paid_answered_from_its_record_is_counted_once() -> None:
    """A refresh answered invoice.paid from its idempotency record, the limits' state of
    it lost: accounted as it was, its invoice counted once."""
    g = Gate(TenantLimits(daily_payment_volume={"EUR": 80_000}))
    rec = g.record(T0)
    paid = {"object": {"id": "in_1", "amount": 30_000, "currency": "EUR", "subscription_id": None}}
    for _ in range(2):
        g.gate.account_answered("t1", g.limits, rec, "invoice.refresh", "invoice.paid", paid)
    assert g.state["volume"] == {"EUR": 30_000}
    # (a subscription's invoice is its provider's renewal: not counted)
    of_sub = {"object": {**paid["object"], "id": "in_2", "subscription_id": "sub_1"}}
    g.gate.account_answered("t1", g.limits, g.record(T0), "invoice.refresh", "invoice.paid", of_sub)
    assert g.state["volume"] == {"EUR": 30_000}


@dataclass
class Subscribe:
    amount: int
    currency: str = "USD"
    trial_days: int = 0


@pytest.mark.parametrize(
    ("status", "trial_end", "counted"),
    [
        ("requires_action", "2026-10-01T00:00:00+00:00", 0),  # (Paddle: a trial's checkout)
        ("trialing", "2026-10-01T00:00:00+00:00", 0),
        ("requires_action", None, 700),  # (Paddle: a first period to pay at checkout)
        ("active", None, 700),
    ],
)
def test_a_subscription_create_answered_from_its_record_counts_no_trial(
    status: str, trial_end: str | None, counted: int
) -> None:
    """A subscription.create accounted from its idempotency record (its limits write
    lost): a free trial (trialing, or at a checkout that starts one: Paddle's
    requires_action with a trial_end) charged nothing and counts nothing."""
    g = Gate(TenantLimits(daily_payment_volume={"USD": 5000}))
    obj = {"amount": 700, "currency": "USD", "status": status, "trial_end": trial_end}
    outcome = (
        "subscription.created" if status != "requires_action" else ("subscription.requires_action")
    )
    g.gate.account_answered(
        "t1", g.limits, g.record(T0), "subscription.create", outcome, {"object": obj}
    )
    assert g.state.get("volume", {}).get("USD", 0) == counted


def test_a_trial_at_checkout_holds_and_counts_nothing() -> None:
    """Admitted: a subscription.create with trial_days charges nothing now (whatever its
    outcome: Paddle's checkout of a trial answers subscription.requires_action)."""
    g = Gate(TenantLimits(daily_payment_volume={"USD": 1000}))
    got = g.send(T0, "subscription.create", Subscribe(900, trial_days=7))
    assert isinstance(got, Admission) and got.currency is None
    g.gate.settle(got, "subscription.requires_action")
    assert isinstance(g.pay(1000), Admission)  # (the day's whole volume still free)

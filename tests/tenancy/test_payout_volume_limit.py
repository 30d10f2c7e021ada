"""``daily_payout_volume`` outside the pipeline: the registry record leaves it out while
unset (workers released before it refuse records naming it: extra="forbid"), the
`tenants add|limits` option that sets it, and the gate's own state (a payout's volume
and holds apart from the payments' and the transfers')."""

from __future__ import annotations

from typing import Any

import click
import pytest
from pydantic import BaseModel, ConfigDict, StrictInt

from paystream.cli.tenants import _limits_from, tenants_add, tenants_limits
from paystream.tenancy.limits import (
    PAYOUT_VOLUME,
    TRANSFER_VOLUME,
    Admission,
    LimitGate,
    Record,
    TenantLimits,
)
from paystream.tenancy.models import Tenant
from paystream.tenancy.registry import tenant_record


class _LimitsBefore(BaseModel):  # TenantLimits as released before daily_payout_volume
    model_config = ConfigDict(frozen=True, extra="forbid")
    commands_per_second: StrictInt | None = None
    burst: StrictInt | None = None
    max_payment_amount: dict[str, StrictInt] = {}
    daily_payment_volume: dict[str, StrictInt] = {}
    daily_transfer_volume: dict[str, StrictInt] = {}
    only_listed_currencies: bool = False


def test_the_registry_record_names_it_only_when_set() -> None:
    limits = TenantLimits(daily_payment_volume={"USD": 100}, daily_transfer_volume={"USD": 5})
    record = tenant_record(Tenant(tenant_id="acme", limits=limits))
    _LimitsBefore.model_validate(record["limits"])  # an older worker still reads it
    assert Tenant.model_validate(record).limits == limits
    capped = limits.model_copy(update={"daily_payout_volume": {"USD": 50}})
    record = tenant_record(Tenant(tenant_id="acme", limits=capped))
    assert record["limits"]["daily_payout_volume"] == {"USD": 50}
    assert Tenant.model_validate(record).limits == capped
    alone = tenant_record(Tenant(tenant_id="acme", limits=TenantLimits(
        daily_payout_volume={"EUR": 7})))  # fmt: skip
    assert alone["limits"]["daily_payout_volume"] == {"EUR": 7}  # (enforced: kept)


def test_the_cli_option_sets_it() -> None:
    given = _limits_from({"daily_payout_volume": ("usd=500000", "EUR=1")})
    assert given is not None and given.daily_payout_volume == {"USD": 500_000, "EUR": 1}
    with pytest.raises(click.BadParameter, match="CURRENCY=MINOR_UNITS"):
        _limits_from({"daily_payout_volume": ("USD",)})
    names = {p.name for p in tenants_add.params} & {p.name for p in tenants_limits.params}
    assert "daily_payout_volume" in names


def _admit(gate: LimitGate, limits: TenantLimits, kind: str, body: Any, offset: int) -> Any:
    rec = Record(f"c{offset}", 0, offset, 1_790_000_000_000)
    return gate.admit("t1", limits, rec, kind, body, hold_key=f"k{offset}")


class _Body(BaseModel):
    amount: int
    currency: str


def test_the_gate_keeps_a_payouts_volume_and_holds_apart() -> None:
    table: dict[str, Any] = {}
    gate = LimitGate(table, clock_ms=lambda: 1_790_000_000_000)
    limits = TenantLimits(
        daily_payment_volume={"USD": 900},
        daily_transfer_volume={"USD": 700},
        daily_payout_volume={"USD": 1000},
    )
    admitted = _admit(gate, limits, "payout.create", _Body(amount=800, currency="USD"), 1)
    assert isinstance(admitted, Admission) and admitted.currency == PAYOUT_VOLUME + "USD"
    (held,) = table["t1:limits"]["held"].values()
    assert held[1:3] == [PAYOUT_VOLUME + "USD", 800]
    # A payment of 900 and a transfer of 700 fit their own volumes whatever payouts hold.
    paid = _admit(gate, limits, "payment.create", _Body(amount=900, currency="USD"), 2)
    moved = _admit(gate, limits, "transfer.create", _Body(amount=700, currency="USD"), 3)
    assert isinstance(paid, Admission) and isinstance(moved, Admission)
    gate.settle(admitted, "payout.created")
    gate.settle(paid, "payment.succeeded")
    gate.settle(moved, "transfer.created")
    assert table["t1:limits"]["volume"] == {
        PAYOUT_VOLUME + "USD": 800,
        "USD": 900,
        TRANSFER_VOLUME + "USD": 700,
    }
    assert not table["t1:limits"]["held"]
    refused = _admit(gate, limits, "payout.create", _Body(amount=201, currency="USD"), 4)
    assert refused.extra["limit"] == "daily_payout_volume" and refused.extra["used"] == 800


def test_a_payout_the_create_answers_failed_counts_nothing() -> None:
    # Failed or canceled in the create's own answer: nothing left the balance (as a
    # declined payment); its hold released. (One that fails later still counts.)
    table: dict[str, Any] = {}
    gate = LimitGate(table, clock_ms=lambda: 1_790_000_000_000)
    limits = TenantLimits(daily_payout_volume={"USD": 1000})
    for offset, outcome in ((1, "payout.failed"), (2, "payout.canceled")):
        admitted = _admit(gate, limits, "payout.create", _Body(amount=600, currency="USD"), offset)
        gate.settle(admitted, outcome)
        assert not table["t1:limits"]["held"]
        assert not (table["t1:limits"].get("volume") or {}).get(PAYOUT_VOLUME + "USD")
    paid = _admit(gate, limits, "payout.create", _Body(amount=600, currency="USD"), 3)
    gate.settle(paid, "payout.paid")  # (an instant payout answered paid at once: counted)
    assert table["t1:limits"]["volume"][PAYOUT_VOLUME + "USD"] == 600

"""``daily_transfer_volume`` outside the pipeline: the registry record leaves it out
while unset (workers released before it refuse records naming it: extra="forbid"), the
`tenants add|limits` option that sets it, and the gate's own state (a transfer's volume
and holds apart from the payments')."""

from __future__ import annotations

from typing import Any

import click
import pytest
from pydantic import BaseModel, ConfigDict, StrictInt

from paystream.cli.tenants import _limits_from, tenants_add, tenants_limits
from paystream.tenancy.limits import TRANSFER_VOLUME, Admission, LimitGate, Record, TenantLimits
from paystream.tenancy.models import Tenant
from paystream.tenancy.registry import tenant_record


class _LimitsBefore(BaseModel):  # TenantLimits as released before daily_transfer_volume
    model_config = ConfigDict(frozen=True, extra="forbid")
    commands_per_second: StrictInt | None = None
    burst: StrictInt | None = None
    max_payment_amount: dict[str, StrictInt] = {}
    daily_payment_volume: dict[str, StrictInt] = {}
    only_listed_currencies: bool = False


def test_the_registry_record_names_it_only_when_set() -> None:
    limits = TenantLimits(daily_payment_volume={"USD": 100}, only_listed_currencies=True)
    record = tenant_record(Tenant(tenant_id="acme", limits=limits))
    _LimitsBefore.model_validate(record["limits"])  # an older worker still reads it
    assert Tenant.model_validate(record).limits == limits
    capped = limits.model_copy(update={"daily_transfer_volume": {"USD": 50}})
    record = tenant_record(Tenant(tenant_id="acme", limits=capped))
    assert record["limits"]["daily_transfer_volume"] == {"USD": 50}
    assert Tenant.model_validate(record).limits == capped
    alone = tenant_record(Tenant(tenant_id="acme", limits=TenantLimits(
        daily_transfer_volume={"EUR": 7})))  # fmt: skip
    assert alone["limits"]["daily_transfer_volume"] == {"EUR": 7}  # (enforced: kept)


def test_the_cli_option_sets_it() -> None:
    given = _limits_from({"daily_transfer_volume": ("usd=500000", "EUR=1")})
    assert given is not None and given.daily_transfer_volume == {"USD": 500_000, "EUR": 1}
    with pytest.raises(click.BadParameter, match="CURRENCY=MINOR_UNITS"):
        _limits_from({"daily_transfer_volume": ("USD",)})
    names = {p.name for p in tenants_add.params} & {p.name for p in tenants_limits.params}
    assert "daily_transfer_volume" in names


def _admit(gate: LimitGate, limits: TenantLimits, kind: str, body: Any, offset: int) -> Any:
    rec = Record(f"c{offset}", 0, offset, 1_790_000_000_000)
    return gate.admit("t1", limits, rec, kind, body, hold_key=f"k{offset}")


class _Body(BaseModel):
    amount: int
    currency: str


def test_the_gate_keeps_a_transfers_volume_and_holds_apart() -> None:
    table: dict[str, Any] = {}
    gate = LimitGate(table, clock_ms=lambda: 1_790_000_000_000)
    limits = TenantLimits(daily_payment_volume={"USD": 900}, daily_transfer_volume={"USD": 1000})
    admitted = _admit(gate, limits, "transfer.create", _Body(amount=800, currency="USD"), 1)
    assert isinstance(admitted, Admission) and admitted.currency == TRANSFER_VOLUME + "USD"
    (held,) = table["t1:limits"]["held"].values()
    assert held[1:3] == [TRANSFER_VOLUME + "USD", 800]
    # A payment of 900 fits its own volume whatever the transfers hold.
    paid = _admit(gate, limits, "payment.create", _Body(amount=900, currency="USD"), 2)
    assert isinstance(paid, Admission)
    gate.settle(admitted, "transfer.created")
    gate.settle(paid, "payment.succeeded")
    assert table["t1:limits"]["volume"] == {TRANSFER_VOLUME + "USD": 800, "USD": 900}
    assert not table["t1:limits"]["held"]
    refused = _admit(gate, limits, "transfer.create", _Body(amount=201, currency="USD"), 3)
    assert refused.extra["limit"] == "daily_transfer_volume" and refused.extra["used"] == 800

"""A tenant's latest registry record that this version cannot read, whose status is neither
"active" nor "suspended" (a status a newer paystream added, such as "closed", or a tool's
"SUSPENDED"), left the tenant served active from its older record (review h67u): the one
thing the mirror promises for an unreadable record is never to fail open on a suspension."""

from __future__ import annotations

import json

import pytest

from paystream.tenancy.mirror import RegistryState
from paystream.tenancy.models import Tenant, TenantStatus
from paystream.tenancy.registry import tenant_record


def _value(tenant: Tenant) -> bytes:
    return json.dumps(tenant_record(tenant)).encode()


@pytest.mark.parametrize("status", ["closed", "frozen", "SUSPENDED", "Suspended"])
def test_an_unreadable_record_with_a_status_other_than_active_does_not_leave_it_active(
    status: str,
) -> None:
    state = RegistryState()
    state.apply(b'"acme"', _value(Tenant(tenant_id="acme", name="Acme")), 1)
    newer = {**tenant_record(Tenant(tenant_id="acme")), "status": status}
    state.apply(b'"acme"', json.dumps(newer).encode(), 2)
    assert state.unreadable == {"acme"}
    # Served from its older, active record: its commands still charge.
    assert state.tenants["acme"].status is TenantStatus.SUSPENDED


@pytest.mark.parametrize("status", ["closed", "SUSPENDED"])
def test_a_foreign_key_record_with_a_status_other_than_active_suspends(status: str) -> None:
    """The same under a key paystream does not write (a tool's kill switch)."""
    state = RegistryState()
    state.apply(b'"acme"', _value(Tenant(tenant_id="acme")), 1)
    state.apply(b' "acme"', json.dumps({"tenant_id": "acme", "status": status}).encode(), 2)
    assert state.tenants["acme"].status is TenantStatus.SUSPENDED

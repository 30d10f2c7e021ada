"""The stats' tenant rows: built again only when the registry changes, and at most
TENANTS_SHOWN_MAX per answer, this worker's tenants first (views review finding: the
whole fleet's registry was rebuilt on the payments' event loop every second)."""

from __future__ import annotations

from paystream.tenancy.models import Tenant
from paystream.web.tenant_rows import TenantRows


def _tenants(n: int) -> dict[str, Tenant]:
    return {f"t{i:05d}": Tenant(tenant_id=f"t{i:05d}", name=f"T{i}") for i in range(n)}


def test_rows_are_built_once_per_registry_change() -> None:
    tenants = _tenants(3)
    rows = TenantRows()
    first, omitted = rows.shown(tenants, 1, ())
    assert omitted == 0 and set(first) == set(tenants)
    assert first["t00000"] == {"status": "active", "gateway": "simulator"}
    again, _ = rows.shown(tenants, 1, ())
    assert again is first  # not built again
    tenants["t00003"] = Tenant(tenant_id="t00003", name="T3", status="suspended")
    changed, _ = rows.shown(tenants, 2, ())
    assert changed["t00003"]["status"] == "suspended"


def test_a_large_registry_shows_this_workers_tenants_first_then_by_id() -> None:
    tenants = _tenants(50)
    shown, omitted = TenantRows(max_shown=10).shown(tenants, 1, ["t00042", "nobody", "t00042"])
    assert omitted == 40
    assert list(shown) == ["t00042", *(f"t{i:05d}" for i in range(9))]

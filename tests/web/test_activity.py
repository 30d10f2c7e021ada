"""The dashboard's activity counts stay bounded under made-up tenant ids."""

from __future__ import annotations

from paystream.tables.views import MAX_UNREGISTERED_SHOWN, ActivityLog
from paystream.tenancy.models import UNREGISTERED


def _entry(tenant: str, registered: bool) -> dict[str, object]:
    return {"tenant": tenant, "registered": registered, "outcome": "command.rejected"}


def test_unregistered_tenants_are_shown_by_name_up_to_a_bound() -> None:
    log = ActivityLog()
    for n in range(MAX_UNREGISTERED_SHOWN + 50):
        log.record(_entry(f"made-up-{n}", registered=False))
    log.record(_entry("made-up-0", registered=False))  # one already shown keeps its row
    log.record(_entry("acme", registered=True))
    assert len(log.by_tenant) == MAX_UNREGISTERED_SHOWN + 2
    assert log.by_tenant[UNREGISTERED] == 50
    assert log.by_tenant["made-up-0"] == 2
    assert log.by_tenant["acme"] == 1
    assert sum(log.by_outcome.values()) == MAX_UNREGISTERED_SHOWN + 52

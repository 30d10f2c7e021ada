"""The dashboard's activity counts stay bounded under made-up tenant ids."""

from __future__ import annotations

import re

from paystream.agents.card_data import UNNAMED_TENANT
from paystream.tables.views import (
    MAX_UNREGISTERED_SHOWN,
    RECENT_KEPT,
    TENANT_RECENT_KEPT,
    TENANTS_RECENT_MAX,
    ActivityLog,
)
from paystream.tenancy.models import TENANT_ID_PATTERN, UNREGISTERED


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


def test_each_tenant_keeps_its_latest_outcomes_apart_from_the_others() -> None:
    """A tenant's commands stay findable however busy the others are (review h77c: the
    demo's traffic pushed one sent by hand out of the last 50 within 3 s)."""
    log = ActivityLog()
    for n in range(TENANT_RECENT_KEPT + 5):
        log.record({**_entry("shop", registered=True), "n": n})
    for _ in range(RECENT_KEPT):
        log.record(_entry("acme", registered=True))
    assert all(e["tenant"] == "acme" for e in log.recent)
    shop = log.recent_of("shop")
    assert [e["n"] for e in shop] == list(range(TENANT_RECENT_KEPT + 4, 4, -1))  # newest first
    assert all(e["tenant"] == "acme" for e in log.recent_of("acme"))
    assert log.recent_of("globex") == []


def test_per_tenant_outcomes_are_kept_for_a_bounded_number_of_tenants() -> None:
    """The tenants served least recently go first; made-up ids lumped together are kept
    for nobody (none can ask for them by name)."""
    log = ActivityLog()
    log.record(_entry("first", registered=True))
    log.record(_entry("second", registered=True))
    for n in range(TENANTS_RECENT_MAX - 2):
        log.record(_entry(f"t{n}", registered=True))
    log.record(_entry("first", registered=True))  # served again: kept over "second"
    log.record(_entry("newcomer", registered=True))
    assert len(log.tenant_recent) == TENANTS_RECENT_MAX
    assert log.recent_of("second") == []
    assert len(log.recent_of("first")) == 2 and len(log.recent_of("newcomer")) == 1
    for n in range(MAX_UNREGISTERED_SHOWN + 1):
        log.record(_entry(f"made-up-{n}", registered=False))
    assert log.recent_of(UNREGISTERED) == []
    assert len(log.tenant_recent) == TENANTS_RECENT_MAX


def test_no_per_tenant_outcomes_kept_under_an_id_no_tenant_can_have() -> None:
    """GET /v1/tenants/{tenant}/outcomes answers 404 for what can be no tenant id, so the
    per-tenant outcomes kept under such a name are read by nobody: yet a control-character
    id (named "_unknown"), an upper-case one, and a made-up id cut to 64 characters each
    hold up to 20 entries and one of the TENANTS_RECENT_MAX places, pushing out a real
    tenant's (the "kept for nobody" rule the commit states for the lumped ids)."""
    log = ActivityLog()
    unaskable = [UNNAMED_TENANT, "Acme", "x" * 64]
    for tenant in unaskable:
        assert re.fullmatch(TENANT_ID_PATTERN, tenant) is None  # the view's 404
        log.record(_entry(tenant, registered=False))
    assert [t for t in unaskable if t in log.tenant_recent] == []

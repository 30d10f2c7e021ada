"""Webhook edge cases, in process (the view alone, as tests/web/test_webhook_lookups.py:
its registry, owner lookup and produce faked; review h59h)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import paystream.web.webhooks as wh
from paystream.tenancy.limits import TenantLimits
from paystream.tenancy.models import Tenant
from tests.web.test_webhook_lookups import TENANT, _post, pi_event, seen  # noqa: F401 (fixture)

_REAL_REFRESH = wh._refresh  # (the fixture fakes it)


def _event(event_id: str, status: str = "requires_payment_method") -> bytes:
    return pi_event(event_id, status)


async def test_a_signed_event_whose_id_is_a_lone_surrogate_is_answered_not_a_500(
    seen: SimpleNamespace,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(wh, "_refresh", _REAL_REFRESH)
    status, body = await _post(_event("evt_\ud800"))
    assert status in (200, 400), body


async def test_self_signed_events_bring_refreshes_no_faster_than_the_tenants_rate(
    seen: SimpleNamespace,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The tenant holds its own endpoint secret (its Stripe endpoint's): every event it
    signs, claiming news of its payment, is a sealed refresh past its rate limit (review
    h59h: 50 a second). Past the budget's burst, they come at the tenant's own rate."""
    limited = Tenant(
        tenant_id=TENANT,
        gateway="stripe",
        secrets={"webhook_secret": "x"},
        limits=TenantLimits(commands_per_second=1, burst=3),
    )
    monkeypatch.setattr(wh.registry, "tenants", {TENANT: limited})
    monkeypatch.setattr(wh, "settings", SimpleNamespace(webhook_refreshes_per_second=50))
    clock = [0.0]
    monkeypatch.setattr(wh, "_budget", wh._Budget(clock=lambda: clock[0]))
    monkeypatch.setattr(wh, "_lookups", wh._Budget(clock=lambda: clock[0]))
    for i in range(500):  # the budget's burst (ten seconds of the worker's 50/s)
        assert (await _post(_event(f"evt_b{i}", "succeeded")))[0] == 200
    burst = len(seen.sent)
    for second in range(1, 11):  # then 20 a second for ten seconds
        for i in range(20):
            clock[0] = second + i / 20
            await _post(_event(f"evt_{second}.{i}", "succeeded"))
    assert burst == 500 and len(seen.sent) - burst <= 11, len(seen.sent) - burst


def _debit(i: int) -> bytes:
    """One of the tenant's ACH debits, settled (each its own payment)."""
    return pi_event(
        f"evt_{i}",
        "succeeded",
        payment=f"pay_{i}",
        provider_id=f"pi_{i}",
        kind="payment_intent.succeeded",
    )


async def _deliver(n: int, limits: TenantLimits, monkeypatch: pytest.MonkeyPatch,
                   state: SimpleNamespace) -> int:  # fmt: skip
    tenant = Tenant(tenant_id=TENANT, gateway="stripe", secrets={"webhook_secret": "x"},
                    limits=limits)  # fmt: skip
    monkeypatch.setattr(wh.registry, "tenants", {TENANT: tenant})
    monkeypatch.setattr(wh, "settings", SimpleNamespace(webhook_refreshes_per_second=50))
    clock = [0.0]

    async def entity_row(tenant: str, notice: object) -> dict[str, str]:
        return {"provider_payment_id": notice.provider_payment_id,  # type: ignore[attr-defined]
                "status": "processing"}  # fmt: skip

    monkeypatch.setattr(wh, "_entity_row", entity_row)
    monkeypatch.setattr(wh, "_budget", wh._Budget(clock=lambda: clock[0]))
    monkeypatch.setattr(wh, "_lookups", wh._Budget(clock=lambda: clock[0]))
    pending = list(range(n))
    # Stripe (sandbox): the first delivery, then 3 retries "over a few hours"; each event's
    # retry is scheduled from its own failure, so a burst's retries come as a burst too.
    for start in (0.0, 3600.0, 3 * 3600.0, 6 * 3600.0):
        still = []
        for k, i in enumerate(pending):
            clock[0] = start + k / n  # the whole burst within a second
            _status, body = await _post(_debit(i))
            if body.get("action") != "refresh":
                still.append(i)
        pending = still
    return n - len(pending)


async def test_a_real_burst_of_a_low_limit_tenants_events_is_all_delivered(
    seen: SimpleNamespace,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A day's 100 ACH debits settle together (one burst of payment_intent.succeeded);
    the tenant's own limit is 1/s (burst 1). Answered 503, Stripe sends each again from
    its own failure, a burst again: paced at the tenant's burst, most were never read
    back (review h59i)."""
    delivered = await _deliver(100, TenantLimits(commands_per_second=1), monkeypatch, seen)
    assert delivered == 100, f"{100 - delivered} events never refreshed after Stripe's retries"


async def test_a_tenant_without_limits_takes_the_same_burst(
    seen: SimpleNamespace,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert await _deliver(100, TenantLimits(), monkeypatch, seen) == 100

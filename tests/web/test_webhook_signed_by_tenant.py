"""Webhook edge cases, in process (the view alone, as tests/web/test_webhook_lookups.py:
its registry, owner lookup and produce faked; review h59h)."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest

import paystream.web.webhooks as wh
from paystream.tenancy.limits import TenantLimits
from paystream.tenancy.models import Tenant
from tests.web.test_webhook_lookups import TENANT, _post, seen  # noqa: F401 (fixture)

_REAL_REFRESH = wh._refresh  # (the fixture fakes it)


def _event(event_id: str, status: str = "requires_payment_method") -> bytes:
    obj = {
        "id": "pi_1",
        "object": "payment_intent",
        "status": status,
        "metadata": {"paystream_payment": f"{TENANT}:pay_1"},
    }
    event = {
        "id": event_id,
        "type": "payment_intent.payment_failed",
        "created": int(time.time()),
        "data": {"object": obj},
    }
    return json.dumps(event).encode()  # (ensure_ascii: a lone surrogate as "\ud800")


async def test_a_signed_event_whose_id_is_a_lone_surrogate_is_answered_not_a_500(
    seen: SimpleNamespace,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(wh, "_refresh", _REAL_REFRESH)
    status, body = await _post(_event("evt_\ud800"))
    assert status in (200, 400), body


async def test_self_signed_events_bring_no_more_refreshes_than_the_tenants_rate_limit(
    seen: SimpleNamespace,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The tenant holds its own endpoint secret (it is its Stripe endpoint's): every event
    # it signs, claiming news of its 3-D Secure payment, is a sealed refresh, exempt from
    # its rate limit: a provider read and an outcome each.
    limited = Tenant(
        tenant_id=TENANT,
        gateway="stripe",
        secrets={"webhook_secret": "x"},
        limits=TenantLimits(commands_per_second=1, burst=3),
    )
    monkeypatch.setattr(wh.registry, "tenants", {TENANT: limited})
    monkeypatch.setattr(wh, "settings", SimpleNamespace(webhook_refreshes_per_second=50))
    answers = [(await _post(_event(f"evt_{i}", "succeeded")))[0] for i in range(100)]
    assert answers.count(200) == len(seen.sent)
    assert len(seen.sent) <= 3, f"{len(seen.sent)} exempt refreshes in a second, burst 3"

"""Stripe's payout events (payout.paid, .failed, .canceled, .updated) bring a sealed
``payout.refresh`` of the payout their metadata names, through the same bounds as a
payment's event (lookups, budget, 503 while unrecorded and recent, dropped once old);
another tenant's or account's are ignored, and so are the echoes of what paystream holds.
In process: the view alone (tests/web/test_webhook_lookups.py's fakes), and the refresh
command built for real."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from paystream.gateways.base import PAYOUT_REF_KEY
from paystream.gateways.stripe.webhooks import FOLLOWED_PAYOUT_EVENTS, payout_notice
from paystream.gateways.webhook_notices import PayoutNotice
from tests.web.test_webhook_lookups import (  # noqa: F401 (seen: a fixture)
    TENANT,
    _post,
    assert_a_sealed_refresh,
    assert_another_tenants_and_accounts_are_ignored,
    assert_it_brings_its_refresh,
    assert_the_tenants_refresh_budget_is_shared,
    assert_unrecorded_is_asked_again_while_recent_then_dropped,
    held_rows,
    seen,
    stripe_event,
)

pytestmark = pytest.mark.asyncio


def _event(
    kind: str = "payout.paid",
    *,
    event_id: str = "evt_p1",
    tenant: str = TENANT,
    payout: str = "po_a",
    provider_id: str = "po_1",
    status: str | None = None,
    created: int | None = None,
    **fields: Any,
) -> dict[str, Any]:
    obj = {
        "id": provider_id,
        "object": "payout",
        "status": status or kind.removeprefix("payout.").replace("updated", "in_transit"),
        "metadata": {PAYOUT_REF_KEY: f"{tenant}:{payout}"},
    }
    return stripe_event(kind, event_id, obj, created, **fields)


def _body(**kw: Any) -> bytes:
    return json.dumps(_event(**kw)).encode()


@pytest.fixture
def rows(seen: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:  # noqa: F811
    held = {"po_a": {"provider_payout_id": "po_1", "status": "pending"}}
    return held_rows(seen, monkeypatch, "payout_id", held)


async def test_the_followed_payout_events_name_paystreams_payout() -> None:
    assert {
        "payout.paid",
        "payout.failed",
        "payout.canceled",
        "payout.updated",
    } == FOLLOWED_PAYOUT_EVENTS
    notice = payout_notice(_event("payout.failed", account="acct_9"))
    assert notice == PayoutNotice(
        "evt_p1", "payout.failed", TENANT, "po_a", "po_1", "failed", "acct_9", notice.created
    )
    assert payout_notice(_event("payout.created")) is None  # (paystream made it: read then)
    unnamed = _event()
    unnamed["data"]["object"]["metadata"] = {}
    assert payout_notice(unnamed) is None  # (an automatic payout, or the dashboard's)
    odd = _event(status="reversed_somehow")
    assert payout_notice(odd).status is None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        ("payout.paid", "paid"),
        ("payout.failed", "failed"),
        ("payout.canceled", "canceled"),
        ("payout.updated", "in_transit"),
    ],
)
async def test_a_payout_event_brings_its_refresh(
    seen: SimpleNamespace,  # noqa: F811
    rows: dict[str, Any],
    kind: str,
    status: str,
) -> None:
    ids = {"payout_id": "po_a", "provider_payout_id": "po_1", "status": status}
    await assert_it_brings_its_refresh(seen, _body(kind=kind, status=status), PayoutNotice, ids)


async def test_another_tenants_or_accounts_payout_event_is_ignored(
    seen: SimpleNamespace,  # noqa: F811
    rows: dict[str, Any],
) -> None:
    await assert_another_tenants_and_accounts_are_ignored(seen, _body, "payout")


async def test_echoes_and_final_payouts_are_not_refreshed(
    seen: SimpleNamespace,  # noqa: F811
    rows: dict[str, Any],
) -> None:
    # The echo of paystream's own cancel: the status it holds.
    rows["po_a"]["status"] = "canceled"
    status, body = await _post(_body(kind="payout.canceled"))
    assert (status, body["action"]) == (200, "ignored") and "canceled already" in body["why"]
    rows["po_a"]["status"] = "failed"  # (final: nothing moves it on)
    status, body = await _post(_body(event_id="evt_p2", kind="payout.updated", status="paid"))
    assert body["action"] == "ignored" and "failed already" in body["why"]
    rows["po_a"]["status"] = "in_transit"  # (a payout.updated of what paystream read)
    status, body = await _post(_body(event_id="evt_p3", kind="payout.updated"))
    assert body["action"] == "ignored" and "in_transit already" in body["why"]
    rows["po_a"].update(status="pending", provider_payout_id="po_other")
    status, body = await _post(_body(event_id="evt_p4"))
    assert body["action"] == "ignored" and "another provider payout" in body["why"]
    assert seen.sent == []
    # A paid payout's bank may still return it: its failure is news.
    rows["po_a"].update(status="paid", provider_payout_id="po_1")
    status, body = await _post(_body(event_id="evt_p5", kind="payout.failed"))
    assert body["action"] == "refresh" and len(seen.sent) == 1


async def test_an_unrecorded_payout_is_asked_again_while_recent_then_dropped(
    seen: SimpleNamespace,  # noqa: F811
    rows: dict[str, Any],
) -> None:
    await assert_unrecorded_is_asked_again_while_recent_then_dropped(
        seen, _body, "payout", payout="po_parked"
    )


async def test_payout_events_share_the_tenants_refresh_budget(
    seen: SimpleNamespace,  # noqa: F811
    rows: dict[str, Any],
) -> None:
    await assert_the_tenants_refresh_budget_is_shared(seen, _body)


async def test_the_refresh_is_a_sealed_payout_refresh(monkeypatch: pytest.MonkeyPatch) -> None:
    notice = PayoutNotice("evt_9", "payout.paid", TENANT, "po_a", "po_1", "paid", None)
    assert_a_sealed_refresh(monkeypatch, notice, "payout.refresh", {"payout_id": "po_a"})

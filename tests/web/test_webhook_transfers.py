"""Stripe's transfer events (transfer.reversed, .updated) bring a sealed
``transfer.refresh`` of the transfer their metadata names, through the same bounds as a
payout's event (lookups, budget, 503 while unrecorded and recent, dropped once old);
another tenant's or account's are ignored, and so are the echoes of what paystream holds
(its own reversal's amount) and events about a transfer reversed entirely here.
In process: the view alone (tests/web/test_webhook_lookups.py's fakes), and the refresh
command built for real."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from paystream.gateways.base import TRANSFER_REF_KEY
from paystream.gateways.stripe.webhooks import (
    EVERY_FOLLOWED_EVENT,
    FOLLOWED_TRANSFER_EVENTS,
    transfer_notice,
)
from paystream.gateways.webhook_notices import TransferNotice
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
    kind: str = "transfer.reversed",
    *,
    event_id: str = "evt_t1",
    tenant: str = TENANT,
    transfer: str = "tr_a",
    provider_id: str = "tr_1",
    amount_reversed: Any = 2_000,
    created: int | None = None,
    **fields: Any,
) -> dict[str, Any]:
    obj = {
        "id": provider_id,
        "object": "transfer",
        "amount": 6_000,
        "amount_reversed": amount_reversed,
        "metadata": {TRANSFER_REF_KEY: f"{tenant}:{transfer}"},
    }
    return stripe_event(kind, event_id, obj, created, **fields)


def _body(**kw: Any) -> bytes:
    return json.dumps(_event(**kw)).encode()


@pytest.fixture
def rows(seen: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:  # noqa: F811
    held = {"tr_a": {"provider_transfer_id": "tr_1", "status": "created", "amount_reversed": 0}}
    return held_rows(seen, monkeypatch, "transfer_id", held)


async def test_the_followed_transfer_events_name_paystreams_transfer() -> None:
    assert {"transfer.reversed", "transfer.updated"} == FOLLOWED_TRANSFER_EVENTS
    assert FOLLOWED_TRANSFER_EVENTS <= EVERY_FOLLOWED_EVENT  # (the generated docs list them)
    notice = transfer_notice(_event(account="acct_9"))
    assert notice == TransferNotice(
        "evt_t1", "transfer.reversed", TENANT, "tr_a", "tr_1", 2_000, "acct_9", notice.created
    )
    assert transfer_notice(_event("transfer.created")) is None  # (paystream made it)
    unnamed = _event()
    unnamed["data"]["object"]["metadata"] = {}
    assert transfer_notice(unnamed) is None  # (made in the dashboard, or before the ref)
    assert transfer_notice(_event(amount_reversed="2000")).amount_reversed is None  # type: ignore[union-attr]
    assert transfer_notice(_event(amount_reversed=True)).amount_reversed is None  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", ["transfer.reversed", "transfer.updated"])
async def test_a_transfer_event_brings_its_refresh(
    seen: SimpleNamespace,  # noqa: F811
    rows: dict[str, Any],
    kind: str,
) -> None:
    ids = {"transfer_id": "tr_a", "provider_transfer_id": "tr_1"}
    await assert_it_brings_its_refresh(seen, _body(kind=kind), TransferNotice, ids)
    assert seen.notices[0].amount_reversed == 2_000


async def test_another_tenants_or_accounts_transfer_event_is_ignored(
    seen: SimpleNamespace,  # noqa: F811
    rows: dict[str, Any],
) -> None:
    await assert_another_tenants_and_accounts_are_ignored(seen, _body, "transfer")


async def test_echoes_and_reversed_transfers_are_not_refreshed(
    seen: SimpleNamespace,  # noqa: F811
    rows: dict[str, Any],
) -> None:
    # The echo of paystream's own transfer.reverse: the amount reversed it holds.
    rows["tr_a"].update(status="partially_reversed", amount_reversed=2_000)
    status, body = await _post(_body())
    assert (status, body["action"]) == (200, "ignored") and "as recorded" in body["why"]
    # A transfer.updated of its metadata (nothing reversed): the same.
    rows["tr_a"].update(status="created", amount_reversed=0)
    status, body = await _post(_body(event_id="evt_t2", kind="transfer.updated", amount_reversed=0))
    assert body["action"] == "ignored" and "as recorded" in body["why"], body
    rows["tr_a"].update(status="reversed", amount_reversed=6_000)  # (final)
    status, body = await _post(_body(event_id="evt_t3", amount_reversed=6_000))
    assert body["action"] == "ignored" and "reversed already" in body["why"], body
    rows["tr_a"].update(status="created", amount_reversed=0, provider_transfer_id="tr_other")
    status, body = await _post(_body(event_id="evt_t4"))
    assert body["action"] == "ignored" and "another provider transfer" in body["why"], body
    assert seen.sent == []
    # Reversed beyond what paystream holds (outside it): news; one that does not say, read.
    rows["tr_a"]["provider_transfer_id"] = "tr_1"
    status, body = await _post(_body(event_id="evt_t5"))
    assert body["action"] == "refresh" and len(seen.sent) == 1, body
    status, body = await _post(_body(event_id="evt_t6", amount_reversed=None))
    assert body["action"] == "refresh" and len(seen.sent) == 2, body


async def test_an_unrecorded_transfer_is_asked_again_while_recent_then_dropped(
    seen: SimpleNamespace,  # noqa: F811
    rows: dict[str, Any],
) -> None:
    await assert_unrecorded_is_asked_again_while_recent_then_dropped(
        seen, _body, "transfer", transfer="tr_parked"
    )


async def test_transfer_events_share_the_tenants_refresh_budget(
    seen: SimpleNamespace,  # noqa: F811
    rows: dict[str, Any],
) -> None:
    await assert_the_tenants_refresh_budget_is_shared(seen, _body)


async def test_the_refresh_is_a_sealed_transfer_refresh(monkeypatch: pytest.MonkeyPatch) -> None:
    notice = TransferNotice("evt_9", "transfer.reversed", TENANT, "tr_a", "tr_1", 2_000, None)
    assert_a_sealed_refresh(monkeypatch, notice, "transfer.refresh", {"transfer_id": "tr_a"})
